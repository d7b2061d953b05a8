"""One task of continual pre-training: `train_task` (what every task of `lifelong pretrain` runs) and
`continual_pretrain`, the seed's one-call function.

`continual_pretrain` tokenizes and packs the corpora, mixes the old corpus in **by token share**
(``replay_ratio=0.2``: 20% of training tokens are old; the new corpus is never truncated), trains one
epoch with `ContinualTrainer` under a re-warming LR schedule, measures perplexity on every domain
before and after, and saves the model (safetensors), ``perplexity.json`` and ``results.json``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from lifelong.core.checkpoint import atomic_write_json
from lifelong.core.distributed import is_main_process
from lifelong.core.metrics import summarize
from lifelong.errors import LifelongError
from lifelong.llm.callbacks import ForgettingCallback, quiet_logs
from lifelong.llm.corpora import Corpus
from lifelong.llm.data import CausalCollator, PackedCorpus, check_replay_ratio, mix_by_token_share
from lifelong.llm.domains import CorpusLike, label, packed, unique_domains
from lifelong.llm.models import check_positions, load_model, offline, save_model, to_device, vocab_size
from lifelong.llm.perplexity import perplexities
from lifelong.llm.trainer import ContinualTrainer, llm_strategies
from lifelong.llm.training import (
    TrainSettings,
    device_of,
    drop_if_empty,
    ensure_old_importance,
    resolved,
    training_args,
)
from lifelong.runs.results import results_document, write_results
from lifelong.strategies import Strategy

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

PERPLEXITY_FILE = "perplexity.json"


@dataclass
class TaskResult:
    """One task of continual pre-training: perplexity per domain before and after, and its checkpoint."""

    name: str
    before: dict[str, float]
    after: dict[str, float]
    train_seconds: float
    steps: int
    checkpoint: Path | None = None
    early_stop: dict[str, Any] | None = None
    log_history: list[dict[str, Any]] = field(default_factory=list)


def train_task(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    new: PackedCorpus,
    replay: Sequence[PackedCorpus],
    replay_ratio: float,
    strategies: Sequence[Strategy],
    settings: TrainSettings,
    output_dir: Path,
    watch: Mapping[str, PackedCorpus] | None = None,
    progress: bool = False,
) -> TaskResult:
    """Train ``model`` on ``new`` (plus ``replay_ratio`` of tokens from ``replay``); return timings.

    ``watch`` are the domains the `ForgettingCallback` follows while training (when
    ``settings.eval_every`` or ``settings.stop_ratio`` is set).
    """
    old = torch.cat([p.train for p in replay]) if replay else None
    dataset = mix_by_token_share(new.train, old, replay_ratio if replay else 0.0, seed=settings.seed)
    callbacks = []
    forgetting = None
    if watch and (settings.eval_every or settings.stop_ratio):
        forgetting = ForgettingCallback(
            {name: p.heldout for name, p in watch.items()},
            every=settings.eval_every,
            stop_ratio=settings.stop_ratio,
            batch_size=settings.eval_batch_size,
            max_blocks=settings.eval_blocks,
        )
        callbacks.append(forgetting)
    with offline():
        trainer = ContinualTrainer(
            model=model,
            args=training_args(settings, output_dir, progress),
            train_dataset=dataset,
            data_collator=CausalCollator(),
            strategies=list(strategies),
            lr_schedule=settings.schedule,
            min_lr_ratio=settings.min_lr_ratio,
            callbacks=callbacks,
        )
        quiet_logs(trainer, progress)
        started = time.perf_counter()
        output = trainer.train_task(fisher_dataset=new.train)
        seconds = time.perf_counter() - started
    stop = forgetting.stopped if forgetting is not None else None
    return TaskResult(
        name=new.name,
        before={},
        after={},
        train_seconds=seconds,
        steps=int(output.global_step),
        early_stop=None if stop is None else {"domain": stop.domain, "ratio": stop.ratio, "step": stop.step},
        log_history=list(trainer.state.log_history),
    )


def pretrain_document(
    names: list[str],
    results: list[dict[str, Any]],
    settings: TrainSettings,
    extra: dict[str, Any],
    wall: float,
) -> dict[str, Any]:
    """The results document of continual pre-training: perplexity, lower is better."""
    return results_document(
        benchmark="llm-pretrain:" + ",".join(names),
        scenario="domain",
        tasks=names,
        higher_is_better=False,
        score_name="perplexity",
        config={**vars(settings), **extra},
        wall_seconds=wall,
        results=results,
    )


def continual_pretrain(
    model: str | Path | PreTrainedModel,
    new_corpus: CorpusLike,
    output_dir: str | Path,
    replay_corpus: CorpusLike | Sequence[CorpusLike] | None = None,
    replay_ratio: float = 0.2,
    *,
    tokenizer: PreTrainedTokenizerBase | None = None,
    strategies: str | Sequence[Strategy] | None = None,
    settings: TrainSettings | None = None,
    progress: bool = False,
) -> TaskResult:
    """Continue pre-training ``model`` on ``new_corpus``, mixing in ``replay_ratio`` old tokens.

    ``model`` is ``tiny-llama``, a local model folder, or a loaded model (then pass ``tokenizer``).
    ``replay_ratio`` is the share of training tokens taken from the replay corpus (ignored without
    one); the new corpus is always used whole. The learning rate defaults to 1e-5 (`TINY_LR` for
    ``tiny-llama``).
    Corpora are paths, built-in names (``prose``, ``code``) or `Corpus` / `PackedCorpus` objects;
    several replay corpora are pooled. Writes to ``output_dir``: ``model/`` (safetensors and
    tokenizer), ``perplexity.json`` (per domain, before and after) and ``results.json`` (the classic
    schema: tasks = replay corpora then the new one, the model as given counting as having learned
    the old ones, ``higher_is_better: false``). An EWC among ``strategies`` with nothing learned yet
    protects the replay corpus (Fisher measured on it before training).
    """
    started = time.perf_counter()
    ratio = check_replay_ratio(replay_ratio)
    settings = resolved(settings or TrainSettings(), model)
    items = llm_strategies(strategies)
    if isinstance(model, str | Path):
        if tokenizer is not None:
            raise LifelongError("pass a tokenizer only with a loaded model; a folder brings its own")
        model, tokenizer = load_model(model)
    elif tokenizer is None:
        raise LifelongError(
            "a loaded model needs its tokenizer: continual_pretrain(model, ..., tokenizer=tok)"
        )
    vocab = vocab_size(model)
    check_positions(model, settings.block_size, "block_size")
    if replay_corpus is None:
        replay_sources: list[CorpusLike] = []
    elif isinstance(replay_corpus, str | Path | Corpus | PackedCorpus):
        replay_sources = [replay_corpus]
    else:
        replay_sources = list(replay_corpus)
    replay = [packed(s, tokenizer, settings.block_size, vocab) for s in replay_sources]
    effective = ratio if replay else 0.0  # with no replay corpus there is nothing to mix in
    domains = unique_domains([*replay, packed(new_corpus, tokenizer, settings.block_size, vocab)])
    new = list(domains.values())[-1]  # renamed if a replay corpus had its name
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    to_device(model, device_of(settings))
    heldout = {name: p.heldout for name, p in domains.items()}
    before = perplexities(model, heldout, settings.eval_batch_size, settings.eval_blocks)
    ensure_old_importance(
        items, model, torch.cat([p.train for p in replay]) if replay else None, settings.seed
    )
    result = train_task(
        model, tokenizer, new, replay, effective, items, settings, out / "trainer", domains, progress=progress
    )
    result.before = before
    result.after = perplexities(model, heldout, settings.eval_batch_size, settings.eval_blocks)
    result.checkpoint = out / "model"
    if is_main_process():  # under a launcher every process holds the same model; one writes
        _save_task(out, model, tokenizer, result, settings.block_size)
        names = list(domains)
        record = _task_record(names, result, label(items, effective))
        document = pretrain_document(
            names, [record], settings, {"replay_ratio": effective}, time.perf_counter() - started
        )
        write_results(out, document)
    return result


def _save_task(
    out: Path, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, result: TaskResult, block_size: int
) -> None:
    assert result.checkpoint is not None
    before, after = result.before, result.after
    drop_if_empty(out / "trainer")
    save_model(model, tokenizer, result.checkpoint)
    atomic_write_json(
        result.checkpoint / PERPLEXITY_FILE,
        {"task": result.name, "block_size": block_size, "before": before, "after": after},
    )
    atomic_write_json(out / PERPLEXITY_FILE, {"task": result.name, "before": before, "after": after})


def _task_record(names: list[str], result: TaskResult, strategy: str) -> dict[str, Any]:
    before, after = result.before, result.after
    if len(names) > 1:
        # The model as given counts as having learned every old domain: rows 0..T-2 are "before".
        matrix = [[before[n] for n in names]] * (len(names) - 1) + [[after[n] for n in names]]
        initial = None
    else:
        matrix, initial = [[after[names[0]]]], [before[names[0]]]
    return {
        "strategy": strategy,
        "accuracy_matrix": matrix,
        "metrics": summarize(matrix, names, higher_is_better=False, initial_scores=initial),
        "initial_scores": initial,
        "train_seconds": round(result.train_seconds, 4),
    }
