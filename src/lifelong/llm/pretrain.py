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

import copy
import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from lifelong.core.checkpoint import atomic_write_json
from lifelong.core.metrics import summarize
from lifelong.errors import LifelongError
from lifelong.llm.corpora import Corpus, load_corpus
from lifelong.llm.data import PackedCorpus, check_replay_ratio
from lifelong.llm.domains import Composition, CorpusLike, packed, parse_compositions, unique_domains
from lifelong.llm.models import (
    ModelSupply,
    is_tiny_llama,
    load_model,
    load_to,
    to_device,
    vocab_size,
    write_model,
)
from lifelong.llm.perplexity import perplexity_and_se
from lifelong.llm.pretrain_task import (
    PERPLEXITY_FILE,
    TaskResult,
    continual_pretrain,
    pretrain_document,
    train_task,
)
from lifelong.llm.runs import (
    Checkpoints,
    LLMRun,
    Scores,
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
    ensure_old_importance,
    resolved,
)
from lifelong.llm.watchsets import Watch, add_uncertainty, pretrain_watch
from lifelong.report.text import safe_text, terminal
from lifelong.runs.folder import default_out
from lifelong.runs.results import write_results

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

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
        job = _Domains(run, domains, tokenizer, settings, console, progress, watch)
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


class _Domains:
    """One `lifelong pretrain` run over its domains: the shared first task and each composition."""

    def __init__(
        self,
        run: LLMRun,
        domains: dict[str, PackedCorpus],
        tokenizer: PreTrainedTokenizerBase,
        settings: TrainSettings,
        console: Console,
        progress: bool,
        watch: Watch,
    ) -> None:
        self.run, self.domains, self.tokenizer, self.settings = run, domains, tokenizer, settings
        self.console, self.progress, self.names, self.watch = console, progress, list(domains), watch
        self.heldout = {n: p.heldout for n, p in domains.items()}
        self.initial: dict[str, float] = {}
        self.initial_se: list[float] = []
        self.initial_watch: list[dict[str, Any]] = []
        self.errors: list[float] = []  # the standard errors of the last perplexities measured
        self.items: list[int] = []  # and the held-out blocks each was measured on

    def perplexities(self, model: Any) -> dict[str, float]:
        """Every domain's perplexity; their standard errors (bootstrap over blocks) go to ``errors``."""
        settings = self.settings
        measured = {
            name: perplexity_and_se(model, data, settings.eval_batch_size, settings.eval_blocks)
            for name, data in self.heldout.items()
        }
        self.errors = [se for _, se, _ in measured.values()]
        self.items = [n for _, _, n in measured.values()]
        return {name: value for name, (value, _, _) in measured.items()}

    def evaluate_initial(self, base: Any) -> float:
        """Perplexity of the model as given, on every domain, and its watch sets; returns the seconds it took."""
        started = time.perf_counter()
        self.initial = self.perplexities(base)
        self.initial_se = self.errors
        self.initial_watch = self.watch.measure(base, self.tokenizer)
        return time.perf_counter() - started

    def shared_first(self, base: Any) -> tuple[Any, Scores]:
        """The from-scratch model trained on the first domain (no strategies), once for every composition."""
        with self.run.shared() as checkpoints:
            resumed = checkpoints.resume([], lambda folder, _: load_to(folder, device_of(self.settings)))
            if resumed is not None:
                return resumed
            first = self.names[0]
            self.console.print(
                f"[bold]{safe_text(first)}[/]: training the shared first domain ({len(self.domains[first].train)} blocks)"
            )
            settings = dataclasses.replace(
                self.settings, epochs=self.settings.first_epochs or self.settings.epochs
            )
            trained = train_task(
                base,
                self.tokenizer,
                self.domains[first],
                [],
                0.0,
                [],
                settings,
                self.run.path / "trainer" / "shared",
                progress=self.progress,
            )
            row = self.perplexities(base)
            scores = Scores([[row[n] for n in self.names]], train_seconds=trained.train_seconds)
            scores.errors.append(self.errors)
            scores.watch.append(self.watch.measure(base, self.tokenizer))
            self._commit(
                checkpoints, 0, scores, [], base, {"task": first, "before": self.initial, "after": row}
            )
        return base, scores

    def composition(
        self, index: int, plan: Composition, supply: ModelSupply, shared: tuple[Any, Scores] | None
    ) -> dict[str, Any]:
        with self.run.composition(index, plan.label) as checkpoints:
            finished = checkpoints.result()
            if finished is not None:
                return finished
            # Fresh strategy objects per composition: EWC's Fisher must not leak from one run to the next.
            strategies = [copy.deepcopy(s) for s in plan.strategies]
            resumed = checkpoints.resume(strategies, lambda folder, _: supply.saved(folder))
            if resumed is not None:
                model, scores = resumed
            elif shared is not None:
                model, scores = copy.deepcopy(shared[0]), copy.deepcopy(shared[1])
                # The shared first task had no strategies: do its after-task part (EWC's Fisher) now.
                ensure_old_importance(
                    strategies, model, self.domains[self.names[0]].train, self.settings.seed
                )
            else:
                model, scores = supply.fresh(), Scores()
            for t in range(len(scores.matrix), len(self.names)):
                self._task(t, plan, model, strategies, scores, checkpoints)
            record = {
                "strategy": plan.label,
                "accuracy_matrix": scores.matrix,
                "initial_scores": [self.initial[n] for n in self.names],
                "train_seconds": round(scores.train_seconds, 4),
                "eval_seconds": scores.eval_seconds,
                "accuracy_matrix_se": scores.errors,
                "initial_scores_se": self.initial_se,
                "items": self.items,
            }
            if self.watch.sets:
                record["watch"] = self.watch.results(self.initial_watch, scores.watch)
            return checkpoints.finish(record)

    def _task(
        self,
        t: int,
        plan: Composition,
        model: Any,
        strategies: list[Any],
        scores: Scores,
        checkpoints: Checkpoints,
    ) -> None:
        name, names = self.names[t], self.names
        self.console.print(
            f"[bold]{safe_text(plan.label)}[/]: training {safe_text(name)} (task {t + 1} of {len(names)})"
        )
        result = train_task(
            model,
            self.tokenizer,
            self.domains[name],
            [self.domains[n] for n in names[:t]] if plan.replay_ratio > 0 else [],
            plan.replay_ratio,
            strategies,
            self.settings,
            self.run.path
            / "trainer"
            / checkpoints.folder.name
            / f"task-{t}",  # report_to logs, one folder per task
            watch={n: self.domains[n] for n in names[:t]},
            progress=self.progress,
        )
        scores.train_seconds += result.train_seconds
        if result.early_stop is not None:
            stop = result.early_stop
            self.console.print(
                f"  stopped early at step {stop['step']}: {safe_text(stop['domain'])} perplexity rose {stop['ratio']:.2f}x"
            )
        started = time.perf_counter()
        row = self.perplexities(model)
        scores.errors.append(self.errors)
        scores.watch.append(self.watch.measure(model, self.tokenizer))
        scores.eval_seconds += time.perf_counter() - started
        before = dict(zip(names, scores.matrix[-1], strict=True)) if scores.matrix else self.initial
        scores.matrix.append([row[n] for n in names])
        about = {
            "task": name,
            "before": before,
            "after": row,
            "steps": result.steps,
            "early_stop": result.early_stop,
        }
        self._commit(checkpoints, t, scores, strategies, model, about)

    def _commit(
        self,
        checkpoints: Checkpoints,
        t: int,
        scores: Scores,
        strategies: list[Any],
        model: Any,
        about: dict[str, Any],
    ) -> None:
        """Task ``t``'s checkpoint: the model as a Hugging Face folder, with its perplexity.json."""
        about = {**about, "block_size": self.settings.block_size}

        def files(folder: Path) -> None:
            write_model(model, self.tokenizer, folder)
            atomic_write_json(folder / PERPLEXITY_FILE, about)

        checkpoints.commit(t, scores, strategies, files=files)

    def document(
        self, results: list[dict[str, Any]], eval_seconds: float, extra: dict[str, Any], wall: float
    ) -> dict[str, Any]:
        for record in results:
            record["metrics"] = summarize(
                record["accuracy_matrix"],
                self.names,
                higher_is_better=False,
                initial_scores=record["initial_scores"],
            )
            add_uncertainty(record)
            record["eval_seconds"] = round(record["eval_seconds"] + eval_seconds, 4)
        return pretrain_document(self.names, results, self.settings, extra, wall)
