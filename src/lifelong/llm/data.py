"""Text for causal-LM continual learning: packing corpora (`lifelong.llm.corpora`) into blocks, mixing.

Packing tokenizes every document, joins them with the end-of-text token and cuts the stream into
equal blocks of ``block_size`` tokens (the remainder shorter than one block is dropped), so every
training example has the same number of tokens and a share of blocks *is* a share of tokens.
Each corpus is split deterministically into train and held-out parts: every tenth document when
there are enough documents, else every tenth block.

`mix_by_token_share` builds a continual pre-training set: all new blocks, plus exactly as many old
blocks as the replay ratio asks for, interleaved with ``datasets.interleave_datasets``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from lifelong.errors import LifelongError
from lifelong.llm.corpora import HELDOUT_EVERY, Corpus, split_documents

if TYPE_CHECKING:
    from datasets import Dataset
    from transformers import PreTrainedTokenizerBase

SOURCE_COLUMN = "source"  # which corpus a block came from, in a mixed set (0 = new, 1 = replay)


@dataclass
class PackedCorpus:
    """A corpus tokenized into equal blocks: ``train`` and ``heldout`` are ``[n, block_size]`` int64."""

    name: str
    train: torch.Tensor
    heldout: torch.Tensor

    @property
    def block_size(self) -> int:
        return int(self.train.shape[1])

    def train_dataset(self) -> Dataset:
        return blocks_dataset(self.train)

    def heldout_dataset(self) -> Dataset:
        return blocks_dataset(self.heldout)


# ---- tokenizing and packing -------------------------------------------------------------------------


def tokenize(documents: Sequence[str], tokenizer: PreTrainedTokenizerBase) -> np.ndarray:
    """Every document's token ids, each followed by the end-of-text token, as one int64 stream."""
    separator = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.bos_token_id
    pieces: list[np.ndarray] = []
    for start in range(0, len(documents), 1000):
        batch = list(documents[start : start + 1000])
        # verbose=False: documents longer than the model's context are expected; packing cuts them.
        ids = tokenizer(batch, add_special_tokens=False, verbose=False)["input_ids"]
        for row in ids:
            pieces.append(np.asarray(row, dtype=np.int64))
            if separator is not None:
                pieces.append(np.asarray([separator], dtype=np.int64))
    return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int64)


def _blocks(ids: np.ndarray, block_size: int) -> torch.Tensor:
    count = len(ids) // block_size
    return torch.from_numpy(ids[: count * block_size].reshape(count, block_size).copy())


def pack(
    corpus: Corpus, tokenizer: PreTrainedTokenizerBase, block_size: int, vocab_size: int | None = None
) -> PackedCorpus:
    """Tokenize ``corpus`` and cut it into train and held-out blocks of ``block_size`` tokens.

    With at least `HELDOUT_EVERY` documents (and enough text on both sides for a block each) the
    split is by document, so held-out text was never trained on; otherwise by block.
    """
    if block_size < 2:
        raise LifelongError(f"block size must be at least 2 tokens, got {block_size}; try 128")
    train: torch.Tensor | None = None
    held: torch.Tensor | None = None
    if len(corpus.documents) >= HELDOUT_EVERY:
        train_docs, held_docs = split_documents(corpus.documents)
        train = _blocks(tokenize(train_docs, tokenizer), block_size)
        held = _blocks(tokenize(held_docs, tokenizer), block_size)
    if train is None or held is None or len(train) == 0 or len(held) == 0:
        blocks = _blocks(tokenize(corpus.documents, tokenizer), block_size)
        if len(blocks) < 2:
            raise LifelongError(
                f"corpus '{corpus.name}' ({corpus.origin}) makes {len(blocks)} block(s) of {block_size} tokens; "
                "it needs at least 2 (one to train, one to evaluate): give more text or a smaller block size"
            )
        held_rows = torch.arange(len(blocks)) % HELDOUT_EVERY == HELDOUT_EVERY // 2
        if not bool(held_rows.any()):
            held_rows[-1] = True
        train, held = blocks[~held_rows], blocks[held_rows]
    if vocab_size is not None:
        top = int(max(train.max(), held.max()))
        if top >= vocab_size:
            raise LifelongError(
                f"the tokenizer makes token id {top} but the model has only {vocab_size} embeddings; "
                "use the tokenizer saved with the model"
            )
    return PackedCorpus(corpus.name, train, held)


def blocks_dataset(blocks: torch.Tensor, source: int | None = None) -> Dataset:
    """A ``datasets.Dataset`` with one ``input_ids`` row per block (and a ``source`` column if given)."""
    from datasets import Dataset

    columns: dict[str, Any] = {"input_ids": blocks.numpy()}
    if source is not None:
        columns[SOURCE_COLUMN] = np.full(len(blocks), source, dtype=np.int64)
    return Dataset.from_dict(columns)


# ---- mixing ------------------------------------------------------------------------------------------


def check_replay_ratio(ratio: float) -> float:
    if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not 0 <= ratio < 1:
        raise LifelongError(
            f"replay ratio is the share of old tokens in training and must be in [0, 1), got {ratio!r}; try 0.2"
        )
    return float(ratio)


def replay_blocks_needed(new_blocks: int, ratio: float) -> int:
    """Old blocks to add to ``new_blocks`` so that old ones are ``ratio`` of the total (rounded)."""
    return round(new_blocks * ratio / (1 - ratio)) if ratio > 0 else 0


def mix_by_token_share(new: torch.Tensor, old: torch.Tensor | None, ratio: float, seed: int = 0) -> Dataset:
    """Every new block plus exactly ``ratio`` old tokens, interleaved at random (``interleave_datasets``).

    Blocks are all ``block_size`` tokens, so a share of blocks is a share of tokens. The old corpus is
    first brought to the exact count needed: a random subset when it is larger, whole shuffled
    passes (then a random remainder) when it is smaller. ``all_exhausted_without_replacement`` then
    uses every block of both exactly once, so no new block is ever dropped. The ``source`` column
    says which corpus a block came from (0 = new, 1 = old); the Trainer drops it before the model.
    """
    from datasets import interleave_datasets

    ratio = check_replay_ratio(ratio)
    if len(new) == 0:
        raise LifelongError(
            "the new corpus has no training blocks; give it more text or use a smaller block size"
        )
    need = replay_blocks_needed(len(new), ratio)
    if need == 0 or old is None:
        if need > 0:
            raise LifelongError(
                "a replay ratio above 0 needs a replay corpus; pass one or set the ratio to 0"
            )
        return blocks_dataset(new, source=0)
    if len(old) == 0:
        raise LifelongError(
            "the replay corpus has no training blocks; give it more text or use a smaller block size"
        )
    if old.shape[1] != new.shape[1]:
        raise LifelongError(
            f"replay blocks have {old.shape[1]} tokens and new ones {new.shape[1]}; pack both alike"
        )
    generator = torch.Generator().manual_seed(seed)
    passes = [torch.randperm(len(old), generator=generator) for _ in range(math.ceil(need / len(old)))]
    chosen = old[torch.cat(passes)[:need]]
    mixed = interleave_datasets(
        [blocks_dataset(new, source=0), blocks_dataset(chosen, source=1)],
        probabilities=[1 - ratio, ratio],
        seed=seed,
        stopping_strategy="all_exhausted_without_replacement",
    )
    # interleave_datasets returns an index mapping over the concatenation; writing it out contiguously
    # once keeps every later row read (one per sample per epoch) a plain slice.
    from datasets.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    quiet = are_progress_bars_disabled()
    disable_progress_bars()
    try:
        return mixed.flatten_indices()
    finally:
        if not quiet:
            enable_progress_bars()


def token_shares(dataset: Dataset) -> dict[int, int]:
    """Tokens per ``source`` in a mixed set (what the mixing test counts)."""
    counts: dict[int, int] = {}
    for source, ids in zip(dataset[SOURCE_COLUMN], dataset["input_ids"], strict=True):
        counts[int(source)] = counts.get(int(source), 0) + len(ids)
    return counts


# ---- batches -----------------------------------------------------------------------------------------


class CausalCollator:
    """Stacks packed blocks into a batch; labels are the inputs (the model shifts them itself).

    Rows that bring their own ``labels`` (with -100 where no loss is wanted) keep them.
    """

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        ids = torch.as_tensor(np.asarray([row["input_ids"] for row in rows]), dtype=torch.long)
        batch = {"input_ids": ids}
        if "labels" in rows[0]:
            batch["labels"] = torch.as_tensor(np.asarray([row["labels"] for row in rows]), dtype=torch.long)
        else:
            batch["labels"] = ids.clone()
        if "attention_mask" in rows[0]:
            batch["attention_mask"] = torch.as_tensor(np.asarray([row["attention_mask"] for row in rows]))
        return batch


def as_blocks(data: Any, rows: torch.Tensor | None = None, column: str = "input_ids") -> torch.Tensor:
    """``[n, block]`` int64 token ids from a tensor, a PackedCorpus (held-out part) or a Dataset of
    equal-length ``input_ids``; only the given ``rows`` when given (a Dataset then reads just those).
    ``column`` reads another column of a Dataset, e.g. its ``labels``."""
    if isinstance(data, PackedCorpus):
        data = data.heldout
    if isinstance(data, torch.Tensor):
        return (data if rows is None else data[rows]).long()
    if hasattr(data, "column_names") and column in data.column_names:
        if rows is not None:
            data = data.select(rows.tolist())
        return torch.as_tensor(np.asarray(data.with_format("numpy")[column]), dtype=torch.long)
    raise LifelongError(
        f"cannot read token blocks from {type(data).__name__}; pass packed blocks or a Dataset"
    )
