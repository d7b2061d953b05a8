"""What each strategy composition of `lifelong.llm.finetune` does: its data-level shares and its
loss-term strategies, parsed and checked before any run.

What a composition can hold:

- ``replay`` (``replay:ratio=0.1``): that share of each task's training examples is drawn from
  earlier tasks' training examples (and from ``replay=`` data, which counts as already learned);
- ``self-replay`` (``self-replay:ratio=0.1,keep=500``): for users who no longer have the old data.
  Before each task the current model answers prompts (the ``self_replay_prompts`` given, plus up to
  ``keep`` prompts per earlier task, kept when that task was read; their answers are dropped) and
  those prompt/answer pairs are replayed at that share. No earlier answer is ever stored;
- any causal-LM strategy of `ContinualTrainer` (``lwf``, ``ewc``, ...), alone or after a ``+``.
  ``lwf`` distills the model as it was before the task on the new task's examples, as published;
  when the new prompts call for other behaviour than the old ones, that keeps little of an old
  skill and holds the new one back. ``lwf:prompts=earlier`` (``ratio``, ``keep`` as for
  self-replay) distills it instead on its own answers to kept earlier prompts, that share of the
  examples: they carry no label and are learned from the teacher's whole distribution alone (soft
  targets, where self-replay learns the greedy tokens); every other example learns its labels alone,
  at plain fine-tuning's step size, and ``alpha : 1 - alpha`` weighs the two.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from lifelong.core.spec import Spec, parse_composition
from lifelong.errors import LifelongError
from lifelong.llm.answers import Prompt, generate_answers
from lifelong.llm.data import check_replay_ratio, replay_blocks_needed
from lifelong.llm.instruct import IGNORE, Example
from lifelong.llm.trainer import build_lm_strategies
from lifelong.strategies import LwF, Naive, Strategy

DEFAULT_KEEP = 500  # prompts kept per earlier task for self-replay and lwf:prompts=earlier


@dataclass
class Plan:
    """One strategy composition: its data-level replay shares and its loss-term strategies."""

    label: str
    replay_ratio: float = 0.0
    self_replay_ratio: float = 0.0
    distill_ratio: float = 0.0  # lwf:prompts=earlier: share of the teacher's answers to earlier prompts
    keep: int = DEFAULT_KEEP  # prompts kept per earlier task, for self-replay and lwf:prompts=earlier
    keep_given: bool = False
    strategies: list[Strategy] = field(default_factory=list)

    @property
    def first_task_plain(self) -> bool:
        """True when this composition trains a first task exactly as plain fine-tuning does, unless the
        run is given self-replay prompts: nothing is earlier to replay or ask, and its only loss term, if
        any, is lwf on earlier prompts, which with none distills nothing."""
        return all(
            isinstance(s, Naive) or (isinstance(s, LwF) and self.distill_ratio) for s in self.strategies
        )


# ---- compositions ---------------------------------------------------------------------------------------


def parse_plans(compositions: Sequence[str], default_ratio: float) -> list[Plan]:
    """``["naive", "replay", "self-replay:ratio=0.2", "lwf", "replay+ewc"]`` -> plans, all checked now."""
    plans = []
    for text in compositions:
        plan = Plan(label="")
        others = []
        labels = []
        for spec in parse_composition(text):
            if spec.name in ("replay", "self-replay", "self_replay"):
                allowed = {"ratio"} | ({"keep"} if spec.name != "replay" else set())
                unknown = set(spec.options) - allowed
                if unknown:
                    raise LifelongError(
                        f"{spec.name} has options {', '.join(sorted(allowed))}; got {', '.join(sorted(unknown))}"
                    )
                ratio = _ratio(spec.options.get("ratio", default_ratio), spec.name)
                if spec.name == "replay":
                    plan.replay_ratio = ratio
                    labels.append(f"replay:ratio={ratio:g}")
                else:
                    plan.self_replay_ratio = ratio
                    _set_keep(plan, spec.options.get("keep"))
                    labels.append(f"self-replay:ratio={ratio:g}")
            else:
                own, label = (
                    _distill_prompts(plan, spec, default_ratio)
                    if spec.name in ("lwf", "distill")
                    else (spec, str(spec))
                )
                others.append(own)
                labels.append(label)
        plan.strategies = build_lm_strategies(others, also=["replay", "self-replay"])
        if plan.distill_ratio and not all(0 < s.alpha < 1 for s in plan.strategies if isinstance(s, LwF)):
            raise LifelongError(
                "lwf:prompts=earlier needs alpha in (0, 1): it weighs the teacher against labels"
            )
        plan.label = "+".join(labels)
        plans.append(plan)
    found = [p.label for p in plans]
    if len(set(found)) < len(found):
        raise LifelongError(f"strategy compositions must differ, got {found}")
    return plans


def _distill_prompts(plan: Plan, spec: Spec, default_ratio: float) -> tuple[Spec, str]:
    """lwf's ``prompts``: ``new`` (LwF as published: on the new task's examples) or ``earlier`` (instead on
    the teacher's answers to earlier tasks' prompts, ``ratio`` of the examples, learned by distillation
    alone). Sets the plan's share; returns LwF's own spec and the composition's label."""
    finetune_options = {"prompts", "ratio", "keep"}
    where = str(spec.options.get("prompts", "new"))
    if where not in ("new", "earlier"):
        raise LifelongError(
            f"lwf prompts is 'new' (the new task's) or 'earlier' (earlier tasks' prompts), got '{where}'"
        )
    own = Spec(spec.name, {k: v for k, v in spec.options.items() if k not in finetune_options})
    if where == "new":
        if {"ratio", "keep"} & set(spec.options):
            raise LifelongError(
                "lwf ratio and keep go with prompts=earlier; try lwf:prompts=earlier,ratio=0.1"
            )
        return own, str(own)
    plan.distill_ratio = _ratio(spec.options.get("ratio", default_ratio), spec.name)
    _set_keep(plan, spec.options.get("keep"))
    return own, str(
        Spec(spec.name, {**own.options, "prompts": "earlier", "ratio": f"{plan.distill_ratio:g}"})
    )


def _set_keep(plan: Plan, value: Any) -> None:
    if value is None:
        return
    keep = _positive_int(value, "keep (prompts kept per earlier task)")
    if plan.keep_given and keep != plan.keep:
        raise LifelongError(
            f"one composition keeps one number of prompts per task; got keep={plan.keep} and {keep}"
        )
    plan.keep, plan.keep_given = keep, True


def _ratio(value: Any, name: str) -> float:
    try:
        ratio = check_replay_ratio(float(value))
    except (TypeError, ValueError):
        raise LifelongError(
            f"{name} ratio must be a number in (0, 1), got '{value}'; try {name}:ratio=0.1"
        ) from None
    if ratio == 0:
        raise LifelongError(f"'{name}' with ratio 0 replays nothing; give a ratio in (0, 1) or leave it out")
    return ratio


def _positive_int(value: Any, what: str) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if number < 1:
        raise LifelongError(f"{what} must be a whole number >= 1, got '{value}'")
    return number


# ---- replay -------------------------------------------------------------------------------------------------


def replayed_examples(pool: Sequence[Example], new: int, ratio: float, seed: int) -> list[Example]:
    """Old examples making up ``ratio`` of the training examples: a random subset, or whole shuffled passes."""
    need = replay_blocks_needed(new, ratio)
    if need == 0 or not pool:
        return []
    rng = random.Random(seed)
    chosen: list[Example] = []
    while len(chosen) < need:
        order = list(pool)
        rng.shuffle(order)
        chosen += order[: need - len(chosen)]
    return chosen


def self_replay_examples(
    model: Any, prompts: Sequence[Prompt], new: int, ratio: float, pad_id: int, seed: int, batch_size: int
) -> list[Example]:
    """The model's own greedy answers to sampled prompts, as examples with loss on the answers only."""
    need = replay_blocks_needed(new, ratio)
    if need == 0 or not prompts:
        return []
    rng = random.Random(seed)
    chosen = (
        [prompts[rng.randrange(len(prompts))] for _ in range(need)]
        if need > len(prompts)
        else rng.sample(list(prompts), need)
    )
    answers = generate_answers(model, chosen, pad_id, batch_size)
    return [Example(p.ids + a, [IGNORE] * len(p.ids) + a) for p, a in zip(chosen, answers, strict=True) if a]
