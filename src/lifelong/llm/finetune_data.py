"""A `lifelong finetune` run's tasks: its settings, the instruction tasks read once and tokenized, and
how every task's held-out part is scored after each task."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lifelong.core.metrics import bootstrap_se, mean_and_se
from lifelong.core.settings import check_least
from lifelong.errors import LifelongError
from lifelong.llm.answers import (
    Metric,
    Prompt,
    answer_prompts,
    answer_token_losses,
    apply_metric,
    generate_answers,
)
from lifelong.llm.batches import pad_id_of
from lifelong.llm.choices import ACC_NORM, ChoiceItem, encode_choices, score_choices
from lifelong.llm.instruct import Example, InstructionTask, Record, encode, encode_prompt, load_task
from lifelong.llm.skills import is_skills, parse_skills
from lifelong.llm.training import TrainSettings
from lifelong.report.text import safe_text

TaskSource = str | Path | InstructionTask


@dataclass
class FinetuneSettings(TrainSettings):
    """`TrainSettings` plus what instruction data needs; ``block_size`` is the packing length and
    ``first_epochs`` the passes over the first task when a from-scratch model trains it once for all."""

    max_length: int = 256  # tokens per example; longer ones lose the start of their prompt
    packing: bool = False
    max_new_tokens: int = 64  # bound on generated answer tokens (also cut to the longest reference + 8)
    eval_examples: int | None = None  # cap on held-out examples per task (None: all)
    eval_batch_size: int = 64

    def validate(self) -> None:
        super().validate()
        check_least(vars(self), max_length=2, max_new_tokens=1, eval_examples=1)
        # Pretraining's perplexity settings would be silently ignored here: refuse them instead.
        for name, instead in (
            ("eval_blocks", "eval_examples"),
            ("eval_every", "the scores after every task"),
            ("stop_ratio", "the scores after every task"),
        ):
            if getattr(self, name) is not None:
                raise LifelongError(f"{name} is a pretrain setting that finetune does not use; see {instead}")


def tiny_skills_settings(**overrides: Any) -> FinetuneSettings:
    """What the from-scratch ``tiny-llama`` needs to learn each skill in about a minute of CPU."""
    values: dict[str, Any] = {
        "batch_size": 32,
        "epochs": 8.0,  # 125 steps an epoch on the 4000 training examples of a skill
        "learning_rate": 3e-3,
        "max_length": 64,
        "max_new_tokens": 16,
        "block_size": 64,
    }
    return FinetuneSettings(**{**values, **overrides})


@dataclass
class Prepared:
    """A task in tokens. ``known`` tasks (``replay=`` data) were learned before the run and only replayed."""

    name: str
    train: list[Example]
    heldout: list[Example]
    prompts: list[Prompt]
    answered: bool
    known: bool = False
    choices: list[ChoiceItem] | None = None  # a multiple-choice task: scored by the choices' likelihood


# ---- reading the stream ---------------------------------------------------------------------------------------


def load_tasks(sources: TaskSource | Sequence[TaskSource] | None) -> list[InstructionTask]:
    """JSONL paths, ``skills`` (three tasks) or `InstructionTask` objects -> tasks, each file read once."""
    if sources is None:
        return []
    items = [sources] if isinstance(sources, str | Path | InstructionTask) else list(sources)
    tasks: list[InstructionTask] = []
    for item in items:
        if isinstance(item, InstructionTask):
            tasks.append(item)
        elif is_skills(str(item)) and not Path(str(item)).exists():
            tasks += parse_skills(str(item))
        else:
            tasks.append(load_task(item))
    return tasks


def unique_names(tasks: Sequence[InstructionTask]) -> list[InstructionTask]:
    out: list[InstructionTask] = []
    seen: set[str] = set()
    for task in tasks:
        name, k = task.name, 2
        while name in seen:
            name, k = f"{task.name}-{k}", k + 1
        seen.add(name)
        out.append(task if name == task.name else dataclasses.replace(task, name=name))
    return out


def prepare(
    task: InstructionTask, tokenizer: Any, settings: FinetuneSettings, keep: int, known: bool = False
) -> Prepared:
    """Tokenize a task. Only up to ``keep`` training prompts (no answers) outlive it, for self-replay."""
    train = [encode(r, tokenizer, settings.max_length) for r in task.train]
    heldout_records = task.heldout[: settings.eval_examples] if settings.eval_examples else task.heldout
    heldout = [encode(r, tokenizer, settings.max_length) for r in heldout_records]
    choices = None
    if heldout_records and all(r.choices is not None for r in heldout_records):
        choices = [encode_choices(r, tokenizer, settings.max_length) for r in heldout_records]
    rng = random.Random(f"{settings.seed}-{task.name}")
    answered = [e for e in train if e.answer is not None]
    kept = rng.sample(answered, min(keep, len(answered)))
    return Prepared(
        task.name,
        train,
        heldout,
        answer_prompts(kept, settings.max_new_tokens),
        answered=task.answered,
        known=known,
        choices=choices,
    )


def given_prompts(records: Sequence[Record], tokenizer: Any, settings: FinetuneSettings) -> list[Prompt]:
    return [
        Prompt(ids, stops, settings.max_new_tokens)
        for ids, stops in (encode_prompt(r, tokenizer, settings.max_length) for r in records)
    ]


# ---- scoring ------------------------------------------------------------------------------------------------------


@dataclass
class Measure:
    """A set's score after one task, with its standard error and item count.

    ``score``: the metric (exact match by default) on generated answers, acc_norm for multiple choice,
    None for plain text; ``loss``: the mean answer-token loss; ``acc``: multiple choice's unnormalised
    accuracy. Accuracies' errors are binomial, the others' bootstrapped over items (fixed seed)."""

    score: float | None
    score_se: float | None
    loss: float
    loss_se: float
    items: int
    acc: float | None = None
    tokens: int = 0  # answer tokens the loss is averaged over


def score_name_of(task: Prepared, metric_name: str) -> str:
    return ACC_NORM if task.choices is not None else metric_name if task.answered else "answer loss"


def measure_task(
    model: Any, task: Prepared, tokenizer: Any, metric: Metric, settings: FinetuneSettings
) -> Measure:
    """``task``'s held-out part scored: its answer loss, and its metric or multiple-choice accuracy.
    For multiple choice the loss is the right choice's, from the same pass that scores the choices."""
    pad = pad_id_of(tokenizer)
    items = len(task.heldout)
    if task.choices is not None:
        chosen = score_choices(model, task.choices, pad, settings.eval_batch_size)
        right = [
            (-lls[q.correct], len(q.choices[q.correct]))
            for q, lls in zip(task.choices, chosen.loglikelihoods, strict=True)
        ]
        loss, loss_se, tokens = _mean_loss(right)
        score, score_se = mean_and_se(chosen.acc_norm)
        return Measure(score, score_se, loss, loss_se, items, acc=sum(chosen.acc) / items, tokens=tokens)
    loss, loss_se, tokens = _mean_loss(
        answer_token_losses(model, task.heldout, pad, settings.eval_batch_size)
    )
    if not task.answered:
        return Measure(None, None, loss, loss_se, items, tokens=tokens)
    answers = generate_answers(
        model, answer_prompts(task.heldout, settings.max_new_tokens), pad, settings.eval_batch_size
    )
    scores = []
    for example, answer in zip(task.heldout, answers, strict=True):
        if answer and answer[-1] in example.stop_ids:
            answer = answer[:-1]  # an end-of-turn mark may be plain text, which decoding would keep
        text = tokenizer.decode(answer, skip_special_tokens=True)
        scores.append(apply_metric(metric, text.strip(), example.answer or ""))
    score, score_se = mean_and_se(scores)
    return Measure(score, score_se, loss, loss_se, items, tokens=tokens)


def _mean_loss(sums: Sequence[tuple[float, int]]) -> tuple[float, float, int]:
    """(mean token loss, its standard error over items, tokens) from each item's (summed loss, tokens)."""
    counts = [n for _, n in sums]
    loss = sum(total for total, _ in sums) / max(sum(counts), 1)
    loss_se = bootstrap_se([total / max(n, 1) for total, n in sums], counts) if sum(counts) else 0.0
    return loss, loss_se, sum(counts)


def subset(task: Prepared, rows: Sequence[int]) -> Prepared:
    """``task`` with only the held-out items ``rows``."""
    choices = None if task.choices is None else [task.choices[i] for i in rows]
    return dataclasses.replace(task, heldout=[task.heldout[i] for i in rows], choices=choices)


def pooled(parts: Sequence[Measure]) -> dict[str, Any]:
    """Measures of disjoint parts of one set as the set's: the score's mean weighted by items and the
    loss's by answer tokens, as `measure_task` weighs them, each with the standard error of that
    weighted mean (the parts are independent)."""
    score, score_se = _weighted([(m.score, m.score_se, m.items) for m in parts])
    loss, loss_se = _weighted([(m.loss, m.loss_se, m.tokens) for m in parts])
    items = sum(m.items for m in parts)
    return {"score": score, "score_se": score_se, "loss": loss, "loss_se": loss_se, "items": items}


def _weighted(parts: list[tuple[float | None, float | None, int]]) -> tuple[float | None, float | None]:
    known = [(v, e, w) for v, e, w in parts if v is not None and e is not None]
    if len(known) < len(parts):
        return None, None
    total = max(sum(w for _, _, w in known), 1)
    mean = sum(w * v for v, _, w in known) / total
    return mean, sum((w / total * e) ** 2 for _, e, w in known) ** 0.5


def evaluate_task(
    model: Any, task: Prepared, tokenizer: Any, metric: Metric, settings: FinetuneSettings
) -> tuple[float | None, float]:
    """(score, or None for plain text; mean answer-token loss) on the held-out part: see `measure_task`."""
    measured = measure_task(model, task, tokenizer, metric, settings)
    return measured.score, measured.loss


def evaluate_all(
    model: Any, tasks: Sequence[Prepared], tokenizer: Any, metric: Metric, settings: FinetuneSettings
) -> list[Measure]:
    return [measure_task(model, task, tokenizer, metric, settings) for task in tasks]


def row_text(tasks: Sequence[Prepared], measured: Sequence[Measure]) -> str:
    """One row of scores (± standard error) and losses, as console markup (task names escaped)."""
    parts = []
    for task, m in zip(tasks, measured, strict=True):
        score = "" if m.score is None else f"{m.score:.2f} ±{m.score_se or 0:.2f} / "
        parts.append(f"{safe_text(task.name)} {score}loss {m.loss:.3f}")
    return ", ".join(parts)
