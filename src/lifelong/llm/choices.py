"""Multiple-choice questions scored by likelihood, as lm-evaluation-harness scores them.

Each choice is a continuation of the question's prompt (the prompt as `encode_prompt` renders it, so
through the chat template where the tokenizer has one, as `finetune` asks it); its score is the sum of
the log-probabilities of its tokens given the prompt. ``acc`` counts the questions whose right choice
has the highest sum; ``acc_norm`` divides each sum by the choice's length in characters first, as the
harness does (``lls / completion_len`` with ``completion_len = len(choice)``, which it calls byte-length
normalisation: the two agree on ASCII text), so long choices are not punished for their length.

All (prompt, choice) pairs of a set are scored in batches, one forward pass per batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from lifelong.llm.instruct import IGNORE, Record, encode_prompt, pad_batch
from lifelong.strategies.anchors import eval_mode

ACC_NORM = "acc_norm"


@dataclass
class ChoiceItem:
    """A multiple-choice question in tokens: the prompt, each choice's tokens and length, the right one."""

    context: list[int]
    choices: list[list[int]]
    lengths: list[int]  # characters of each choice's text: acc_norm's divisor
    correct: int


@dataclass
class ChoiceScores:
    """Per question: whether the most likely choice is right (acc), and by length-normalised likelihood."""

    acc: list[float]
    acc_norm: list[float]
    loglikelihoods: list[list[float]]


def encode_choices(record: Record, tokenizer: Any, max_length: int) -> ChoiceItem:
    """``record``'s prompt and choices in tokens; a prompt too long loses its start, as in training."""
    assert record.choices is not None and record.correct is not None
    choices = [list(tokenizer(c, add_special_tokens=False)["input_ids"]) for c in record.choices]
    longest = max(len(c) for c in choices)
    context, _ = encode_prompt(record, tokenizer, max(max_length - longest, 1))
    return ChoiceItem(context, choices, [len(c) for c in record.choices], record.correct)


@torch.no_grad()
def choice_loglikelihoods(
    model: Any, items: Sequence[ChoiceItem], pad_id: int, batch_size: int = 64
) -> list[list[float]]:
    """Sum of log-probabilities of each choice's tokens after its prompt, per item and choice."""

    pairs = [(i, k) for i, item in enumerate(items) for k in range(len(item.choices))]
    # Longest first, so a batch's rows are of similar length and little is padded.
    pairs.sort(key=lambda p: -(len(items[p[0]].context) + len(items[p[0]].choices[p[1]])))
    out = [[0.0] * len(item.choices) for item in items]
    device = next(model.parameters()).device
    with eval_mode(model):
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start : start + batch_size]
            ids = [items[i].context + items[i].choices[k] for i, k in chunk]
            labels = [[IGNORE] * len(items[i].context) + items[i].choices[k] for i, k in chunk]
            batch = pad_batch(ids, labels, pad_id)
            logits = model(
                input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)
            ).logits
            targets = batch["labels"][:, 1:].to(device)
            nll = F.cross_entropy(
                logits[:, :-1].float().transpose(1, 2), targets, ignore_index=IGNORE, reduction="none"
            )
            for (i, k), total in zip(chunk, (-nll.sum(dim=1)).tolist(), strict=True):
                out[i][k] = total
    return out


def score_choices(model: Any, items: Sequence[ChoiceItem], pad_id: int, batch_size: int = 64) -> ChoiceScores:
    """acc and acc_norm of every question (1.0 right, 0.0 wrong), and the log-likelihoods they come from."""
    lls = choice_loglikelihoods(model, items, pad_id, batch_size)
    acc, acc_norm = [], []
    for item, row in zip(items, lls, strict=True):
        normed = [ll / length for ll, length in zip(row, item.lengths, strict=True)]
        acc.append(float(_argmax(row) == item.correct))
        acc_norm.append(float(_argmax(normed) == item.correct))
    return ChoiceScores(acc, acc_norm, lls)


def _argmax(values: Sequence[float]) -> int:
    """The first index of the largest value (numpy's argmax rule, which the harness uses)."""
    return max(range(len(values)), key=lambda i: (values[i], -i))
