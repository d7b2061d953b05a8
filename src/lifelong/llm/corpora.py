"""Text corpora for causal-LM continual learning: reading them, and the built-in domains.

A *corpus* is a list of documents read from one source: a ``.txt`` file (the whole file is one
document, or one document per line), a ``.jsonl`` or ``.parquet`` file with a text field, a folder of
such files, or a folder written by ``datasets``' ``save_to_disk``. Two built-in corpora need no
download: ``prose`` (the paragraphs of Python's own documentation, ``pydoc_data.topics``) and
``code`` (Python source from the standard library folder). `split_documents` splits any list of
documents (or instruction records) into train and held-out parts the same way everywhere.
"""

from __future__ import annotations

import math
import re
import sysconfig
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar

from lifelong.data.folders import data_files, not_a_file
from lifelong.data.jsonl import json_lines, parse_json
from lifelong.data.text import pydoc_paragraphs
from lifelong.errors import LifelongError

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


@dataclass(frozen=True)
class Corpus:
    """The documents of one text source, in a fixed order."""

    name: str
    documents: list[str]
    origin: str  # the path, or "built-in", for messages


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


def _corpus_files(folder: Path) -> list[Path]:
    files = data_files(folder, (*TEXT_SUFFIXES, *TABLE_SUFFIXES), recursive=True)
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
        return [line for _, line in json_lines(text)]
    return [text] if text.strip() else []


def read_text(path: Path) -> str:
    """UTF-8 text, or a `LifelongError` for binary files (a NUL byte, or bytes that are not UTF-8)."""
    if not path.is_file():  # reading a pipe would block until something writes to it
        raise LifelongError(f"{path} is {not_a_file(path)}; pass a text file")
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
    for number, line in json_lines(text):
        row = parse_json(line, f"{path} line {number}")
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
