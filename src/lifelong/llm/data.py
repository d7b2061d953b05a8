"""Text for causal-LM continual learning: reading corpora, the built-in domains, packing, mixing.

A *corpus* is a list of documents read from one source: a ``.txt`` file (the whole file is one
document, or one document per line), a ``.jsonl`` or ``.parquet`` file with a text field, a folder of
such files, or a folder written by ``datasets``' ``save_to_disk``. Two built-in corpora need no
download: ``prose`` (the paragraphs of Python's own documentation, ``pydoc_data.topics``) and
``code`` (Python source from the standard library folder).

Packing tokenizes every document, joins them with the end-of-text token and cuts the stream into
equal blocks of ``block_size`` tokens (the remainder shorter than one block is dropped), so every
training example has the same number of tokens and a share of blocks *is* a share of tokens.
Each corpus is split deterministically into train and held-out parts: every tenth document when
there are enough documents, else every tenth block.

`mix_by_token_share` builds a continual pre-training set: all new blocks, plus exactly as many old
blocks as the replay ratio asks for, interleaved with ``datasets.interleave_datasets``.
"""

from __future__ import annotations

import json
import math
import re
import sysconfig
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import torch

from lifelong.data.text import pydoc_paragraphs
from lifelong.errors import LifelongError

if TYPE_CHECKING:
    from datasets import Dataset
    from transformers import PreTrainedTokenizerBase

BUILTIN_CORPORA = ("prose", "code")
TEXT_SUFFIXES = (".txt",)
TABLE_SUFFIXES = (".jsonl", ".parquet")
SUPPORTED = ", ".join((*TEXT_SUFFIXES, *TABLE_SUFFIXES))
HELDOUT_EVERY = 10  # one document (or block) in ten is held out for perplexity
# The built-in code corpus is sampled down to about the size of the prose one, so the two domains
# weigh the same and the demo stays a few minutes on a CPU.
CODE_CHARS = 450_000
_CODE_CHUNK_CHARS = 2_000
T = TypeVar("T")  # documents, or instruction records: anything split one in ten
SOURCE_COLUMN = "source"  # which corpus a block came from, in a mixed set (0 = new, 1 = replay)


@dataclass(frozen=True)
class Corpus:
    """The documents of one text source, in a fixed order."""

    name: str
    documents: list[str]
    origin: str  # the path, or "built-in", for messages


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


# ---- reading ----------------------------------------------------------------------------------------


def load_corpus(
    source: str | Path, text_field: str = "text", one_doc_per_line: bool = False, name: str | None = None
) -> Corpus:
    """The documents of a built-in corpus name (``prose``, ``code``) or of a path.

    ``text_field`` names the text column of ``.jsonl`` / ``.parquet`` files and saved datasets;
    ``one_doc_per_line`` makes every non-blank line of a ``.txt`` file its own document.
    """
    text = str(source)
    if text in BUILTIN_CORPORA and not Path(text).exists():
        return builtin_corpus(text)
    path = Path(source)
    label = name or _corpus_name(path)
    if not path.exists():
        raise LifelongError(
            f"corpus {path} does not exist; pass a {SUPPORTED} file, a folder of them, "
            f"or a built-in corpus ({', '.join(BUILTIN_CORPORA)})"
        )
    if path.is_dir():
        if _is_saved_dataset(path):
            documents = _read_saved_dataset(path, text_field)
        else:
            files = _corpus_files(path)
            documents = [doc for f in files for doc in _read_file(f, text_field, one_doc_per_line)]
    else:
        documents = _read_file(path, text_field, one_doc_per_line)
    if not documents:
        raise LifelongError(
            f"corpus {path} has no text (it is empty or every document is blank); give it some"
        )
    return Corpus(label, documents, str(path))


def _corpus_name(path: Path) -> str:
    return path.stem if path.is_file() else (path.name or str(path))


def _natural_key(path: Path) -> list[Any]:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", str(path))]


def _corpus_files(folder: Path) -> list[Path]:
    files = sorted(
        (
            p
            for p in folder.rglob("*")
            if p.is_file() and p.suffix.lower() in (*TEXT_SUFFIXES, *TABLE_SUFFIXES)
        ),
        key=_natural_key,
    )
    if not files:
        raise LifelongError(f"folder {folder} holds no {SUPPORTED} files; put the corpus files there")
    return files


def _read_file(path: Path, text_field: str, one_doc_per_line: bool) -> list[str]:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return _read_parquet(path, text_field)
    if suffix not in (*TEXT_SUFFIXES, ".jsonl"):
        raise LifelongError(f"{path} is not a supported corpus file; use {SUPPORTED} or a folder of them")
    text = read_text(path)
    if suffix == ".jsonl":
        return _read_jsonl(path, text, text_field)
    if one_doc_per_line:
        return [line for line in text.splitlines() if line.strip()]
    return [text] if text.strip() else []


def read_text(path: Path) -> str:
    """UTF-8 text, or a `LifelongError` for binary files (a NUL byte, or bytes that are not UTF-8)."""
    data = path.read_bytes()
    if b"\x00" in data[:8192]:
        raise LifelongError(f"{path} is not a text file (it holds binary data); pass UTF-8 text")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise LifelongError(
            f"{path} is not UTF-8 text (bad byte at offset {err.start}); convert it to UTF-8"
        ) from None


def _read_jsonl(path: Path, text: str, field: str) -> list[str]:
    documents = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            raise LifelongError(f"{path} line {number} is not valid JSON; fix or remove that line") from None
        if not isinstance(row, dict) or field not in row:
            keys = ", ".join(row) if isinstance(row, dict) else type(row).__name__
            raise LifelongError(
                f"{path} line {number} has no '{field}' field (has: {keys}); pass --text-field with the right one"
            )
        documents.append(_as_text(row[field], f"{path} line {number}", field))
    return [d for d in documents if d.strip()]


def _read_parquet(path: Path, field: str) -> list[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as err:
        raise LifelongError(
            f"{path} is not a readable Parquet file ({err}); rewrite it with pandas or pyarrow"
        ) from None
    if field not in table.column_names:
        raise LifelongError(
            f"{path} has no '{field}' column (has: {', '.join(table.column_names)}); pass --text-field"
        )
    return _text_column(table.column(field).to_pylist(), str(path), field)


def _as_text(value: Any, where: str, field: str) -> str:
    if not isinstance(value, str):
        raise LifelongError(
            f"{where}: field '{field}' holds {type(value).__name__}, not text; pick a text field"
        )
    return value


def _text_column(values: Iterable[Any], where: str, field: str) -> list[str]:
    out = []
    for row, value in enumerate(values):
        if value is None:
            continue
        out.append(_as_text(value, f"{where} row {row}", field))
    return [v for v in out if v.strip()]


def _is_saved_dataset(folder: Path) -> bool:
    return (folder / "dataset_dict.json").is_file() or (
        (folder / "state.json").is_file() and (folder / "dataset_info.json").is_file()
    )


def _read_saved_dataset(folder: Path, field: str) -> list[str]:
    from datasets import DatasetDict, load_from_disk

    loaded = load_from_disk(str(folder))
    if isinstance(loaded, DatasetDict):
        if "train" in loaded:
            loaded = loaded["train"]
        elif len(loaded) == 1:
            loaded = next(iter(loaded.values()))
        else:
            raise LifelongError(
                f"saved dataset {folder} has splits {', '.join(loaded)} and none is 'train'; "
                "save the split you want on its own"
            )
    if field not in loaded.column_names:
        raise LifelongError(
            f"saved dataset {folder} has no '{field}' column (has: {', '.join(loaded.column_names)}); pass --text-field"
        )
    return _text_column(loaded[field], f"saved dataset {folder}", field)


# ---- built-in corpora -----------------------------------------------------------------------------


def builtin_corpus(name: str) -> Corpus:
    """``prose`` or ``code``: deterministic for a given Python version, no download."""
    if name == "prose":
        return Corpus("prose", list(_prose_documents()), "built-in: pydoc_data.topics")
    if name == "code":
        return Corpus("code", list(_code_documents()), "built-in: the standard library's Python source")
    raise LifelongError(f"unknown built-in corpus '{name}'; use one of: {', '.join(BUILTIN_CORPORA)}")


@lru_cache(maxsize=1)
def _prose_documents() -> tuple[str, ...]:

    return tuple(p for paragraphs in pydoc_paragraphs().values() for p in paragraphs)


@lru_cache(maxsize=1)
def _code_documents() -> tuple[str, ...]:
    """Chunks of the top-level standard-library modules, sampled evenly down to `CODE_CHARS`.

    Chunks end at blank lines so a document is a few whole statements; sampling every k-th chunk (not
    the first files) keeps the whole alphabet of modules, so the domain is not one module's style.
    """
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    chunks: list[str] = []
    for path in sorted(stdlib.glob("*.py")):
        text = path.read_text(encoding="utf-8", errors="replace")
        chunks.extend(_chunks(text, _CODE_CHUNK_CHARS))
    if not chunks:
        raise LifelongError(
            f"found no Python source in {stdlib}; the built-in code corpus needs the standard library"
        )
    total = sum(len(c) for c in chunks)
    stride = max(1, math.ceil(total / CODE_CHARS))
    return tuple(chunks[::stride])


def _chunks(text: str, limit: int) -> Iterable[str]:
    piece: list[str] = []
    size = 0
    for block in re.split(r"\n\s*\n", text):
        if not block.strip():
            continue
        piece.append(block)
        size += len(block)
        if size >= limit:
            yield "\n\n".join(piece)
            piece, size = [], 0
    if piece:
        yield "\n\n".join(piece)


def split_documents(documents: Sequence[T]) -> tuple[list[T], list[T]]:
    """(train, held-out): every `HELDOUT_EVERY`-th document, counted from the fifth, is held out."""
    held = [d for i, d in enumerate(documents) if i % HELDOUT_EVERY == HELDOUT_EVERY // 2]
    train = [d for i, d in enumerate(documents) if i % HELDOUT_EVERY != HELDOUT_EVERY // 2]
    return train, held


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
