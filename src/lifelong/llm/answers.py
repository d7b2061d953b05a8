"""Answers of an instruction model: batched greedy generation, answer-token loss, answer metrics.

What `finetune` scores after every task, and how self-replay answers its prompts.
"""

from __future__ import annotations

import importlib
import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F

from lifelong.errors import LifelongError
from lifelong.llm.batches import pad_batch
from lifelong.llm.instruct import IGNORE, Example
from lifelong.models.hf import offline
from lifelong.strategies.anchors import eval_mode

Metric = Callable[[str, str], float]


@dataclass
class Prompt:
    """A prompt self-replay may answer: its tokens, the tokens that end an answer, an answer bound."""

    ids: list[int]
    stop_ids: tuple[int, ...]
    max_new_tokens: int


# ---- metrics on answers ------------------------------------------------------------------------------------


def exact_match(prediction: str, reference: str) -> float:
    return float(prediction.strip() == reference.strip())


def resolve_metric(metric: str | Metric | None) -> tuple[Metric, str]:
    """(function, name): ``None`` or ``"exact"`` for exact match, a callable, or ``"module:function"``."""
    if metric is None or metric in ("exact", "exact-match", "exact_match"):
        return exact_match, "exact match"
    if callable(metric):
        return metric, getattr(metric, "__name__", "metric")
    module_name, _, name = str(metric).partition(":")
    if not name:
        raise LifelongError(f"metric '{metric}' is not 'exact' or 'module:function' (e.g. mymetrics:f1)")
    try:
        function = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as err:
        raise LifelongError(
            f"cannot import metric '{metric}' ({err}); check the module is importable"
        ) from None
    if not callable(function):
        raise LifelongError(f"metric '{metric}' is not a function of (prediction, reference)")
    return cast(Metric, function), name


def apply_metric(metric: Metric, prediction: str, reference: str) -> float:
    """``metric``'s score as a finite number; a user's function that fails, or returns anything else,
    is named in one line (its own traceback would bury which answer, and which function)."""
    name = getattr(metric, "__name__", "metric")
    try:
        value = metric(prediction, reference)
    except Exception as err:  # the user's code: any failure of it is theirs to fix
        raise LifelongError(
            f"metric {name} failed on an answer ({type(err).__name__}: {str(err)[:200]}); fix the function"
        ) from None
    if not isinstance(value, numbers.Real) or not math.isfinite(value):  # bools and numpy floats do
        raise LifelongError(f"metric {name} returned {value!r:.80}, not a finite number; return a float")
    return float(value)


# ---- generation and evaluation -------------------------------------------------------------------------------


@torch.no_grad()
def generate_answers(
    model: Any,
    prompts: Sequence[Prompt],
    pad_id: int,
    batch_size: int = 64,
) -> list[list[int]]:
    """Greedy answers in batches (left-padded, shortest prompts together), each cut after its first stop token."""
    from transformers import GenerationConfig

    device = next(model.parameters()).device
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i].ids))
    out: list[list[int]] = [[] for _ in prompts]
    with eval_mode(model):
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            width = max(len(prompts[i].ids) for i in rows)
            ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for k, i in enumerate(rows):
                row = prompts[i].ids
                ids[k, width - len(row) :] = torch.tensor(row)
                mask[k, width - len(row) :] = 1
            stops = sorted({s for i in rows for s in prompts[i].stop_ids})
            config = GenerationConfig(
                max_new_tokens=max(prompts[i].max_new_tokens for i in rows),
                do_sample=False,
                eos_token_id=stops or None,
                pad_token_id=pad_id,
            )
            with offline():
                generated = model.generate(
                    input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=config
                )
            for k, i in enumerate(rows):
                answer = generated[k, width:].tolist()
                ends = [n for n, token in enumerate(answer) if token in prompts[i].stop_ids]
                out[i] = answer[: ends[0] + 1] if ends else answer[: prompts[i].max_new_tokens]
    return out


def answer_loss(model: Any, examples: Sequence[Example], pad_id: int, batch_size: int = 64) -> float:
    """Mean next-token loss over answer tokens (labels != -100), all examples pooled."""
    sums = answer_token_losses(model, examples, pad_id, batch_size)
    return sum(total for total, _ in sums) / max(sum(count for _, count in sums), 1)


@torch.no_grad()
def answer_token_losses(
    model: Any, examples: Sequence[Example], pad_id: int, batch_size: int = 64
) -> list[tuple[float, int]]:
    """Per example: (summed next-token loss over its answer tokens, how many there are)."""
    device = next(model.parameters()).device
    out: list[tuple[float, int]] = []
    with eval_mode(model):
        for start in range(0, len(examples), batch_size):
            chunk = examples[start : start + batch_size]
            batch = pad_batch([e.input_ids for e in chunk], [e.labels for e in chunk], pad_id)
            logits = model(
                input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)
            ).logits
            labels = batch["labels"][:, 1:].to(device)
            losses = F.cross_entropy(
                logits[:, :-1].float().transpose(1, 2), labels, ignore_index=IGNORE, reduction="none"
            )
            totals, counts = losses.sum(dim=1).tolist(), (labels != IGNORE).sum(dim=1).tolist()
            out += [(float(t), int(n)) for t, n in zip(totals, counts, strict=True)]
    return out


def answer_prompts(examples: Sequence[Example], max_new_tokens: int) -> list[Prompt]:
    """The prompts of answered examples, each bounded by its task's longest reference answer."""
    longest = max((sum(label != IGNORE for label in e.labels) for e in examples), default=0)
    bound = max(1, min(max_new_tokens, longest + 8))
    return [Prompt(e.prompt_ids, e.stop_ids, bound) for e in examples if e.answer is not None]
