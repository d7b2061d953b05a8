"""What continual pre-training runs over: text domains packed into blocks, and the strategy
compositions of `lifelong pretrain`, parsed and checked before anything trains."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from lifelong.core.spec import Spec, parse_composition
from lifelong.errors import LifelongError
from lifelong.llm.corpora import Corpus, load_corpus
from lifelong.llm.data import PackedCorpus, check_replay_ratio, pack
from lifelong.llm.trainer import build_lm_strategies
from lifelong.strategies import Strategy

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

CorpusLike = str | Path | Corpus | PackedCorpus


def packed(
    source: CorpusLike, tokenizer: PreTrainedTokenizerBase, block_size: int, vocab: int
) -> PackedCorpus:
    if isinstance(source, PackedCorpus):
        if source.block_size != block_size:
            raise LifelongError(
                f"corpus '{source.name}' is packed in blocks of {source.block_size}, not {block_size}; pack it again"
            )
        return source
    corpus = source if isinstance(source, Corpus) else load_corpus(source)
    return pack(corpus, tokenizer, block_size, vocab)


def unique_domains(ordered: Sequence[PackedCorpus]) -> dict[str, PackedCorpus]:
    """Domains by name, renamed (``notes``, ``notes-2``) where two corpora share one."""
    out: dict[str, PackedCorpus] = {}
    for corpus in ordered:
        name, k = corpus.name, 2
        while name in out:
            name, k = f"{corpus.name}-{k}", k + 1
        out[name] = corpus if name == corpus.name else dataclasses.replace(corpus, name=name)
    return out


def label(strategies: Sequence[Strategy], ratio: float) -> str:
    parts = [f"replay:ratio={ratio:g}"] if ratio > 0 else []
    parts += [s.name for s in strategies if s.name != "naive"]
    return "+".join(parts) or "naive"


@dataclass
class Composition:
    """One strategy composition of a run: its replay ratio and its loss-term strategies."""

    label: str
    replay_ratio: float
    strategies: list[Strategy]


def parse_compositions(compositions: Sequence[str], default_ratio: float) -> list[Composition]:
    """``["naive", "replay", "replay:ratio=0.3+ewc", "lwf"]`` -> compositions; every name checked now.

    ``replay`` (in any composition) mixes old domains in by token share at ``ratio`` (default: the
    run's ``--replay-ratio``); the other names are the shared registry's, restricted to those with a
    causal-LM form (naive, ewc, lwf / distill).
    """
    out = []
    for text in compositions:
        specs = parse_composition(text)
        ratio = 0.0
        others: list[Spec] = []
        for spec in specs:
            if spec.name == "replay":
                ratio = _replay_ratio(spec, default_ratio)
            else:
                others.append(spec)
        strategies = build_lm_strategies(others, also=["replay"])
        name = "+".join((f"replay:ratio={ratio:g}" if s.name == "replay" else str(s)) for s in specs)
        out.append(Composition(name, ratio, strategies))
    labels = [c.label for c in out]
    if len(set(labels)) < len(labels):
        raise LifelongError(f"strategy compositions must differ, got {labels}")
    return out


def _replay_ratio(spec: Spec, default_ratio: float) -> float:
    unknown = set(spec.options) - {"ratio"}
    if unknown:
        raise LifelongError(
            f"replay for language models has one option, ratio (token share); got {', '.join(sorted(unknown))}"
        )
    try:
        ratio = check_replay_ratio(float(spec.options.get("ratio", default_ratio)))
    except ValueError:
        raise LifelongError(
            f"replay ratio must be a number in [0, 1), got '{spec.options['ratio']}'; try replay:ratio=0.2"
        ) from None
    if ratio == 0:
        raise LifelongError(
            "'replay' with ratio 0 replays nothing; give a ratio in (0, 1) or leave replay out of the strategies"
        )
    return ratio
