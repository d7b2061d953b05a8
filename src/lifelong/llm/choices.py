"""Multiple-choice questions scored by likelihood, as lm-evaluation-harness scores them.

Each choice is a continuation of the question's prompt (the prompt as `encode_prompt` renders it, so
through the chat template where the tokenizer has one, as `finetune` asks it); its score is the sum of
the log-probabilities of its tokens given the prompt. ``acc`` counts the questions whose right choice
has the highest sum; ``acc_norm`` divides each sum by the choice's length in characters first, as the
harness does (``lls / completion_len`` with ``completion_len = len(choice)``, which it calls byte-length
normalisation: the two agree on ASCII text), so long choices are not punished for their length.

All (prompt, choice) pairs of a set are scored in batches: one forward pass for a batch's prompts, one
for all their choices, which share the prompts' key-value cache.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from lifelong.llm.instruct import Record, encode_prompt
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
    """Sum of log-probabilities of each choice's tokens after its prompt, per item and choice.

    A batch of prompts runs once (left-padded, shortest with shortest); its key-value cache is then
    shared by every choice of each prompt, which runs in one more forward pass: a choice costs its own
    few tokens, not its prompt's again."""
    out: list[list[float]] = [[] for _ in items]
    order = sorted(range(len(items)), key=lambda i: len(items[i].context))
    with eval_mode(model):
        start = 0
        while start < len(order):
            rows, stop = 0, start
            while stop < len(order) and (
                stop == start or rows + len(items[order[stop]].choices) <= batch_size
            ):
                rows += len(items[order[stop]].choices)
                stop += 1
            chunk = order[start:stop]
            for i, values in zip(
                chunk, _batch_loglikelihoods(model, [items[i] for i in chunk], pad_id), strict=True
            ):
                out[i] = values
            start = stop
    return out


def _batch_loglikelihoods(model: Any, items: Sequence[ChoiceItem], pad_id: int) -> list[list[float]]:
    device = next(model.parameters()).device
    width = max(len(item.context) for item in items)
    ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for k, item in enumerate(items):
        ids[k, width - len(item.context) :] = torch.tensor(item.context)
        mask[k, width - len(item.context) :] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    prompt = model(
        input_ids=ids.to(device),
        attention_mask=mask.to(device),
        position_ids=positions.to(device),
        use_cache=True,
        logits_to_keep=1,
    )
    # One row per (prompt, choice): the prompt's cache, then the choice's tokens, right-padded.
    owner = [k for k, item in enumerate(items) for _ in item.choices]
    choices = [c for item in items for c in item.choices]
    length = max(len(c) for c in choices)
    tokens = torch.full((len(choices), length), pad_id, dtype=torch.long)
    valid = torch.zeros_like(tokens)
    for r, choice in enumerate(choices):
        tokens[r, : len(choice)] = torch.tensor(choice)
        valid[r, : len(choice)] = 1
    index = torch.tensor(owner)
    # transformers 5 names the key-value cache `cache`; earlier versions `past_key_values`.
    name = "cache" if getattr(prompt, "cache", None) is not None else "past_key_values"
    cache = getattr(prompt, name)
    cache.batch_select_indices(index.to(device))
    after = model(
        input_ids=tokens.to(device),
        attention_mask=torch.cat([mask[index], valid], dim=1).to(device),
        position_ids=(mask.sum(dim=1)[index, None] + torch.arange(length)).to(device),
        use_cache=True,
        **{name: cache},
    ).logits
    # The first token of a choice is predicted at the prompt's end, each next one by the choice itself.
    logits = torch.cat([prompt.logits[index, -1:].to(after.dtype), after[:, :-1]], dim=1).float()
    picked = torch.log_softmax(logits, dim=-1).gather(-1, tokens.to(device)[..., None])[..., 0]
    totals = (picked * valid.to(device)).sum(dim=1).tolist()
    out: list[list[float]] = [[] for _ in items]
    for k, total in zip(owner, totals, strict=True):
        out[k].append(total)
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
