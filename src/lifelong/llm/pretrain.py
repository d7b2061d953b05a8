"""Continual pre-training: keep training a causal LM on new text without forgetting the old.

`run_pretrain` runs a stream of domains (``lifelong pretrain``) for one or more strategy
compositions and writes one run folder in the classic side's layout (`lifelong.llm.runs`):
``run.json``, a checkpoint after every task (the model as a Hugging Face folder, loadable with
``--model``, plus the strategies' state), ``metrics.jsonl``, ``results.json`` (perplexity matrix
per strategy, metrics with ``higher_is_better: false``) and the report. `resume_pretrain` (``lifelong
pretrain --resume RUN``) continues an unfinished run after its last complete tasks, to the same
numbers.

The one-task pieces, `train_task` and the seed's `continual_pretrain`, are in
`lifelong.llm.pretrain_task`; the settings in `lifelong.llm.training`; the tables in
`lifelong.llm.summaries`. Their public names are importable from here too.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from lifelong.errors import LifelongError
from lifelong.llm.corpora import Corpus, load_corpus
from lifelong.llm.data import PackedCorpus, check_replay_ratio
from lifelong.llm.domains import Composition, CorpusLike, packed, parse_compositions, unique_domains
from lifelong.llm.models import (
    ModelSupply,
    check_positions,
    is_tiny_llama,
    load_model,
    to_device,
    vocab_size,
)
from lifelong.llm.pretrain_run import PretrainRun
from lifelong.llm.pretrain_task import (
    TaskResult,
    continual_pretrain,
    train_task,
)
from lifelong.llm.runs import (
    LLMRun,
    check_saved,
    damaged,
    data_digest,
    given_again,
    open_folder,
    publish,
    saved_settings,
)
from lifelong.llm.settings import PretrainConfig
from lifelong.llm.summaries import forgetting_summary, print_pretrain_results
from lifelong.llm.training import (
    DEFAULT_LR,
    TINY_LR,
    TrainSettings,
    device_of,
    resolved,
)
from lifelong.llm.watchsets import pretrain_watch
from lifelong.report.text import terminal
from lifelong.runs.folder import default_out
from lifelong.runs.results import write_results

if TYPE_CHECKING:
    pass

__all__ = [
    "DEFAULT_LR",
    "TINY_LR",
    "Composition",
    "TaskResult",
    "TrainSettings",
    "continual_pretrain",
    "forgetting_summary",
    "parse_compositions",
    "print_pretrain_results",
    "resume_pretrain",
    "run_pretrain",
    "run_pretrain_config",
    "train_task",
]

COMMAND = "pretrain"


@dataclass
class PretrainRequest:
    """What a `lifelong pretrain` run is asked to do: what run.json keeps, to resume it with.

    A corpus given as an object (not a path or a built-in name) is kept as ``None``: a resumed run
    needs it again (``resume_pretrain(run, corpora=...)``)."""

    model: str
    corpora: list[CorpusLike]
    compositions: list[str]
    replay_ratio: float
    settings: TrainSettings
    text_field: str = "text"
    one_doc_per_line: bool = False
    tensorboard: bool = False
    watch: list[str] | None = None  # None: by model (general for a pretrained chat model)
    allow_pickle: bool = False  # kept in run.json: a resumed run loads the model as the run did

    def saved(self) -> dict[str, Any]:
        return {
            **{f.name: getattr(self, f.name) for f in dataclasses.fields(self)},
            "corpora": [str(c) if isinstance(c, str | Path) else None for c in self.corpora],
            "settings": dataclasses.asdict(self.settings),
        }

    @classmethod
    def from_saved(cls, run_dir: Path, corpora: Sequence[CorpusLike] | None) -> PretrainRequest:
        saved = saved_settings(run_dir, COMMAND)
        try:
            request = cls(**{**saved, "settings": TrainSettings(**saved["settings"])})
        except (TypeError, KeyError):
            raise damaged(run_dir) from None
        check_saved(run_dir, request.settings, request.compositions)
        request.corpora = given_again(request.corpora, corpora, "corpora")
        return request


def run_pretrain(
    model: str = "tiny-llama",
    corpora: Sequence[CorpusLike] = ("prose", "code"),
    compositions: Sequence[str] = ("replay",),
    out: str | Path = "runs/pretrain",
    replay_ratio: float = 0.2,
    settings: TrainSettings | None = None,
    overwrite: bool = False,
    console: Console | None = None,
    text_field: str = "text",
    one_doc_per_line: bool = False,
    tensorboard: bool = False,
    progress: bool = False,
    watch: Sequence[str | Path] | None = None,
    allow_pickle: bool = False,
) -> dict[str, Any]:
    """Train ``model`` on each corpus in turn, once per strategy composition; write the run folder.

    Every composition starts from the same model; ``replay`` draws its share of tokens from all
    earlier domains pooled (each in proportion to its size). For the from-scratch ``tiny-llama`` the first
    domain is trained once and shared: nothing is old yet, so every strategy would train it alike
    (replay has no earlier domain, EWC no Fisher, and distilling a random model teaches nothing).
    With your own model, strategies apply from the first domain on (distillation then keeps what
    the model knew before). ``tensorboard`` also logs each task's perplexities to TensorBoard;
    ``progress`` shows the Trainer's progress bar while a task trains. ``watch``: watch sets
    (`lifelong.llm.watchsets`: JSONL files or ``general``) scored before the first domain and after each,
    never trained on (default: ``general`` for a pretrained chat model, else none; ``[]``: none).
    ``allow_pickle`` also loads a model folder whose weights are only pickles (see
    `lifelong.models.hf.weights_format`).
    Returns the results document (also ``results.json``); an unfinished run continues with
    `resume_pretrain`.
    """
    request = PretrainRequest(
        str(model),
        list(corpora),
        list(compositions) or ["replay"],
        replay_ratio,
        settings or TrainSettings(),
        text_field,
        one_doc_per_line,
        tensorboard,
        None if watch is None else [str(w) for w in watch],
        allow_pickle,
    )
    return _pretrain(request, Path(out), console, overwrite=overwrite, progress=progress)


def run_pretrain_config(
    config: PretrainConfig, console: Console | None = None, progress: bool = False
) -> dict[str, Any]:
    """`run_pretrain` with the settings of ``lifelong pretrain`` (its flags and YAML keys) as one object."""
    config.validate()
    return run_pretrain(
        model=config.model,
        corpora=config.corpus,
        compositions=config.strategies,
        out=config.out or default_out(COMMAND),
        replay_ratio=config.ratio,
        settings=config.train_settings(),
        overwrite=config.overwrite,
        console=console,
        text_field=config.text_field,
        one_doc_per_line=config.lines,
        tensorboard=config.tensorboard,
        progress=progress,
        watch=config.eval or None,
        allow_pickle=config.allow_pickle,
    )


def resume_pretrain(
    run_dir: str | Path,
    *,
    corpora: Sequence[CorpusLike] | None = None,
    console: Console | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Continue the unfinished `run_pretrain` run in ``run_dir`` with its own settings (run.json).

    Each composition continues after its last complete task, to the numbers an uninterrupted run
    gives. ``corpora`` are needed only if the run was given corpus objects rather than paths or names.
    """
    request = PretrainRequest.from_saved(Path(run_dir), corpora)
    return _pretrain(request, Path(run_dir), console, resume=True, progress=progress)


def _pretrain(
    request: PretrainRequest,
    out: Path,
    console: Console | None,
    *,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    console = console or terminal()
    started = time.perf_counter()
    ratio = check_replay_ratio(request.replay_ratio)
    request.settings = settings = resolved(request.settings, request.model)
    plans = parse_compositions(request.compositions, ratio)
    if not request.corpora:
        raise LifelongError(
            "no corpus given; pass --corpus at least once (or none for the built-in prose, code)"
        )
    base, tokenizer = load_model(
        request.model, allow_pickle=request.allow_pickle
    )  # fails on a bad folder before the run folder is touched
    loaded: list[Corpus | PackedCorpus] = [
        load_corpus(s, text_field=request.text_field, one_doc_per_line=request.one_doc_per_line)
        if isinstance(s, str | Path)
        else s
        for s in request.corpora
    ]
    check_positions(base, settings.block_size, "--block-size")
    domains = unique_domains([packed(c, tokenizer, settings.block_size, vocab_size(base)) for c in loaded])
    watch = pretrain_watch(request.watch, base, tokenizer, settings)
    folder = open_folder(COMMAND, out, request.saved(), overwrite=overwrite, resume=resume)
    with folder.running():
        run = LLMRun(
            folder,
            data_digest(list(domains.values()), *watch.sets),
            list(domains),
            seed=settings.seed,
            tensorboard=request.tensorboard,
            average="average_perplexity",
            watch_names=watch.names,
        )
        job = PretrainRun(run, domains, tokenizer, settings, console, progress, watch)
        device = device_of(settings)
        to_device(base, device)
        eval_seconds = job.evaluate_initial(base)
        shared = job.shared_first(base) if is_tiny_llama(request.model) else None
        # Your own model: the first composition trains the loaded copy, later ones reload it, so one
        # model (not two) is in memory at a time.
        supply = ModelSupply(
            request.model, None if shared is not None else base, device, allow_pickle=request.allow_pickle
        )
        del base
        results = [job.composition(index, plan, supply, shared) for index, plan in enumerate(plans)]
        extra = {
            "model": request.model,
            "corpora": [c.origin if isinstance(c, Corpus) else c.name for c in loaded],
            "replay_ratio": ratio,
            "strategies": [p.label for p in plans],
            "watch": watch.sources,
            "shared_first_task": shared is not None,
            "out": str(out),
        }
        document = job.document(results, eval_seconds, extra, time.perf_counter() - started)
        write_results(out, document)
    return publish(out, document, console, print_pretrain_results)
