"""Instruction examples as the Trainer takes them: a dataset of rows, packed blocks, padded batches."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from lifelong.llm.instruct import DISTILL_MASK, IGNORE, Example

if TYPE_CHECKING:
    from datasets import Dataset
    from transformers import PreTrainedTokenizerBase


def _columns(examples: Sequence[Example]) -> dict[str, list[list[int]]]:
    """``input_ids`` and ``labels`` rows; with soft or undistilled examples also ``DISTILL_MASK`` (1 on
    the answer positions of soft and distilled examples)."""
    columns = {"input_ids": [e.input_ids for e in examples], "labels": [e.labels for e in examples]}
    if any(e.soft or not e.distilled for e in examples):
        columns[DISTILL_MASK] = [
            [int(label != IGNORE and (e.soft or e.distilled)) for label in e.labels] for e in examples
        ]
        columns["labels"] = [[IGNORE] * len(e.labels) if e.soft else e.labels for e in examples]
    return columns


def examples_dataset(examples: Sequence[Example]) -> Dataset:
    """A ``datasets.Dataset`` of ``input_ids`` and ``labels`` rows (of any lengths) for the Trainer."""
    from datasets import Dataset

    return Dataset.from_dict(_columns(examples))


def pack_examples(examples: Sequence[Example], block_size: int) -> Dataset:
    """Examples joined end to end and cut into ``block_size`` blocks; labels keep their -100s.

    Fewer pad tokens and equal-length batches; an example may then attend to the one before it,
    as packed pre-training text does. The last partial block is padded with -100 labels.
    """
    from datasets import Dataset

    columns = {
        key: np.concatenate([np.asarray(row, dtype=np.int64) for row in rows])
        for key, rows in _columns(examples).items()
    }
    length = len(columns["input_ids"])
    blocks = -(-length // block_size)
    fill = {"input_ids": columns["input_ids"][-1], "labels": IGNORE, DISTILL_MASK: 0}
    padded = {
        key: np.concatenate([values, np.full(blocks * block_size - length, fill[key], dtype=np.int64)])
        for key, values in columns.items()
    }
    return Dataset.from_dict({key: values.reshape(blocks, block_size) for key, values in padded.items()})


class PaddingCollator:
    """Right-pads rows of different lengths: pad tokens get attention 0 and label -100."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        distill = [list(r[DISTILL_MASK]) for r in rows] if DISTILL_MASK in rows[0] else None
        return pad_batch(
            [list(r["input_ids"]) for r in rows], [list(r["labels"]) for r in rows], self.pad_id, distill
        )


def pad_batch(
    ids: Sequence[list[int]],
    labels: Sequence[list[int]],
    pad_id: int,
    distill: Sequence[list[int]] | None = None,
) -> dict[str, torch.Tensor]:
    width = max(len(row) for row in ids)
    batch = torch.full((len(ids), width), pad_id, dtype=torch.long)
    target = torch.full((len(ids), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for i, (row, label) in enumerate(zip(ids, labels, strict=True)):
        batch[i, : len(row)] = torch.tensor(row)
        target[i, : len(row)] = torch.tensor(label)
        mask[i, : len(row)] = 1
    padded = {"input_ids": batch, "labels": target, "attention_mask": mask}
    if distill is not None:
        positions = torch.zeros((len(ids), width), dtype=torch.bool)
        for i, row in enumerate(distill):
            positions[i, : len(row)] = torch.tensor(row, dtype=torch.bool)
        padded[DISTILL_MASK] = positions
    return padded


def pad_id_of(tokenizer: PreTrainedTokenizerBase) -> int:
    for value in (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.bos_token_id):
        if isinstance(value, int):
            return value
    return 0
