"""Continual pre-training: keep training a causal LM on new text without forgetting the old.

`continual_pretrain` is the seed's function, done properly: it tokenizes and packs the corpora,
mixes the old corpus in **by token share** (``replay_ratio=0.2``: 20% of training tokens are old;
the new corpus is never truncated), trains one epoch with `ContinualTrainer` under a re-warming LR
schedule, measures perplexity on every domain before and after, and saves the model (safetensors),
``perplexity.json`` and ``results.json``.

`run_pretrain` runs a stream of domains (``lifelong pretrain``) for one or more strategy
compositions and writes one run folder in the classic side's layout: ``results.json`` (perplexity
matrix per strategy, metrics with ``higher_is_better: false``), the report, and every task's model
under ``checkpoints/<i>-<strategy>/task-<t>``.

Learning rates: 1e-5 by default for real models (the seed's "small learning rate when continuing");
the from-scratch ``tiny-llama`` demo uses `TINY_LR`, since a random model learns nothing at 1e-5.
"""

from __future__ import annotations

import copy
import dataclasses
import re
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from lifelong.core.checkpoint import atomic_write_json
from lifelong.core.distributed import is_main_process
from lifelong.core.metrics import summarize
from lifelong.core.spec import Spec, parse_composition
from lifelong.errors import LifelongError
from lifelong.llm.callbacks import ForgettingCallback
from lifelong.llm.corpora import Corpus, load_corpus
from lifelong.llm.data import CausalCollator, PackedCorpus, check_replay_ratio, mix_by_token_share, pack
from lifelong.llm.fisher import OutsideTrainer
from lifelong.llm.models import (
    is_tiny_llama,
    load_model,
    model_supply,
    offline,
    save_model,
    to_device,
    vocab_size,
)
from lifelong.llm.perplexity import perplexities
from lifelong.llm.schedules import SCHEDULES
from lifelong.llm.trainer import ContinualTrainer, llm_strategies
from lifelong.runs.results import results_document, write_results
from lifelong.strategies import Strategy, build_strategy

if TYPE_CHECKING:
    from rich.console import Console
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

DEFAULT_LR = 1e-5
TINY_LR = 2e-3
CorpusLike = str | Path | Corpus | PackedCorpus
RESULTS_FILE, PERPLEXITY_FILE = "results.json", "perplexity.json"
OWNED = (RESULTS_FILE, "checkpoints", "trainer", "report.md", "report.html", "plots")


@dataclass
class TrainSettings:
    """How each task trains; the defaults are the seed's (1 epoch, batch 4, warmup 10%, LR 1e-5)."""

    block_size: int = 128
    batch_size: int = 4
    epochs: float = 1.0
    # A from-scratch model's first domain is its pretraining: it may need more passes than later tasks.
    first_epochs: float | None = None
    learning_rate: float | None = None  # None: DEFAULT_LR, or TINY_LR for the from-scratch tiny-llama
    schedule: str = "rewarm-cosine"
    warmup_ratio: float = 0.1
    min_lr_ratio: float = 0.1
    gradient_accumulation_steps: int = 1
    weight_decay: float = 0.0
    seed: int = 0
    device: str = "auto"
    eval_batch_size: int = 16
    eval_blocks: int | None = None  # cap on held-out blocks per domain (None: all)
    eval_every: int | None = None  # ForgettingCallback: old-domain perplexity every N steps
    stop_ratio: float | None = None  # ForgettingCallback: stop a task when an old domain rises past this
    report_to: str | list[str] = "none"

    def validate(self) -> None:
        if self.block_size < 2 or self.batch_size < 1 or self.gradient_accumulation_steps < 1:
            raise LifelongError("block size must be >= 2, batch size and gradient accumulation >= 1")
        if not self.epochs > 0 or (self.first_epochs is not None and not self.first_epochs > 0):
            raise LifelongError(f"epochs must be positive, got {self.epochs} (first: {self.first_epochs})")
        if self.learning_rate is not None and not self.learning_rate > 0:
            raise LifelongError(f"learning rate must be positive, got {self.learning_rate}; try 1e-5")
        if self.schedule not in SCHEDULES:
            raise LifelongError(f"unknown LR schedule '{self.schedule}'; use one of: {', '.join(SCHEDULES)}")
        if not 0 <= self.warmup_ratio < 1:
            raise LifelongError(f"warmup ratio must be in [0, 1), got {self.warmup_ratio}; try 0.1")
        if self.device not in ("auto", "cpu", "cuda"):
            raise LifelongError(f"device must be auto, cpu or cuda, got '{self.device}'")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise LifelongError("device cuda was asked for but no CUDA GPU is available; use --device cpu")


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


# ---- one task ---------------------------------------------------------------------------------------


def _resolved(settings: TrainSettings, model: Any) -> TrainSettings:
    """Checked settings with the learning rate filled in for this model (a copy: the caller's stays)."""
    settings.validate()
    if settings.learning_rate is not None:
        return settings
    tiny = isinstance(model, str | Path) and is_tiny_llama(model)
    return dataclasses.replace(settings, learning_rate=TINY_LR if tiny else DEFAULT_LR)


def _use_cpu(device: str) -> bool:
    return device == "cpu" or not torch.cuda.is_available()


def _packed(
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


def _training_args(settings: TrainSettings, output_dir: Path, progress: bool) -> Any:
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=settings.batch_size,
        per_device_eval_batch_size=settings.eval_batch_size,
        gradient_accumulation_steps=settings.gradient_accumulation_steps,
        num_train_epochs=settings.epochs,
        learning_rate=settings.learning_rate or DEFAULT_LR,
        warmup_steps=settings.warmup_ratio,  # below 1 it is a share of the steps (transformers 5)
        weight_decay=settings.weight_decay,
        lr_scheduler_type="constant",  # replaced by ContinualTrainer's own schedule
        logging_steps=50,
        save_strategy="no",  # each task is saved whole, with its tokenizer, by us
        eval_strategy="no",
        report_to=settings.report_to,
        use_cpu=_use_cpu(settings.device),
        seed=settings.seed,
        data_seed=settings.seed,
        disable_tqdm=not progress,
        dataloader_num_workers=0,
    )


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
    from transformers.trainer_callback import PrinterCallback

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
            args=_training_args(settings, output_dir, progress),
            train_dataset=dataset,
            data_collator=CausalCollator(),
            strategies=list(strategies),
            lr_schedule=settings.schedule,
            min_lr_ratio=settings.min_lr_ratio,
            callbacks=callbacks,
        )
        trainer.remove_callback(PrinterCallback)  # it prints every log dict to stdout
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


def _ensure_old_importance(
    strategies: Sequence[Strategy], model: PreTrainedModel, old: Any, seed: int
) -> None:
    """Strategies that protect nothing yet protect the ``old`` data (blocks or a Dataset; None: nothing
    is old), which the model already learned: `Strategy.lm_protect` (EWC: its Fisher under the model)."""
    for strategy in strategies:
        strategy.lm_protect(OutsideTrainer(model, seed), old)


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
    settings = _resolved(settings or TrainSettings(), model)
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
    if replay_corpus is None:
        replay_sources: list[CorpusLike] = []
    elif isinstance(replay_corpus, str | Path | Corpus | PackedCorpus):
        replay_sources = [replay_corpus]
    else:
        replay_sources = list(replay_corpus)
    new = _packed(new_corpus, tokenizer, settings.block_size, vocab)
    replay = [_packed(s, tokenizer, settings.block_size, vocab) for s in replay_sources]
    effective = ratio if replay else 0.0  # with no replay corpus there is nothing to mix in
    domains = _unique([*replay, new])
    new = list(domains.values())[-1]  # renamed if a replay corpus had its name
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    to_device(model, "cpu" if _use_cpu(settings.device) else "cuda")
    heldout = {name: p.heldout for name, p in domains.items()}
    before = perplexities(model, heldout, settings.eval_batch_size, settings.eval_blocks)
    _ensure_old_importance(
        items, model, torch.cat([p.train for p in replay]) if replay else None, settings.seed
    )
    result = train_task(
        model, tokenizer, new, replay, effective, items, settings, out / "trainer", domains, progress=progress
    )
    after = perplexities(model, heldout, settings.eval_batch_size, settings.eval_blocks)
    result.before, result.after = before, after
    result.checkpoint = out / "model"
    if is_main_process():  # under a launcher every process holds the same model; one writes
        _drop_if_empty(out / "trainer")
        save_model(model, tokenizer, result.checkpoint)
        atomic_write_json(
            result.checkpoint / PERPLEXITY_FILE,
            {"task": new.name, "block_size": settings.block_size, "before": before, "after": after},
        )
        atomic_write_json(out / PERPLEXITY_FILE, {"task": new.name, "before": before, "after": after})
    names = list(domains)
    if len(names) > 1:
        # The model as given counts as having learned every old domain: rows 0..T-2 are "before".
        matrix = [[before[n] for n in names]] * (len(names) - 1) + [[after[n] for n in names]]
        initial = None
    else:
        matrix, initial = [[after[names[0]]]], [before[names[0]]]
    record = {
        "strategy": _label(items, effective),
        "accuracy_matrix": matrix,
        "metrics": summarize(matrix, names, higher_is_better=False, initial_scores=initial),
        "initial_scores": initial,
        "train_seconds": round(result.train_seconds, 4),
    }
    if is_main_process():
        document = _document(
            names, [record], settings, {"replay_ratio": effective}, time.perf_counter() - started
        )
        write_results(out, document)
    return result


def _drop_if_empty(folder: Path) -> None:
    """The Trainers' output_dirs hold nothing unless report_to wrote logs there; then they go."""
    if folder.is_dir() and not any(p.is_file() for p in folder.rglob("*")):
        shutil.rmtree(folder)


def _label(strategies: Sequence[Strategy], ratio: float) -> str:
    parts = [f"replay:ratio={ratio:g}"] if ratio > 0 else []
    parts += [s.name for s in strategies if s.name != "naive"]
    return "+".join(parts) or "naive"


def _unique(ordered: Sequence[PackedCorpus]) -> dict[str, PackedCorpus]:
    """Domains by name, renamed (``notes``, ``notes-2``) where two corpora share one."""
    out: dict[str, PackedCorpus] = {}
    for packed in ordered:
        name, k = packed.name, 2
        while name in out:
            name, k = f"{packed.name}-{k}", k + 1
        out[name] = packed if name == packed.name else dataclasses.replace(packed, name=name)
    return out


def _document(
    names: list[str],
    results: list[dict[str, Any]],
    settings: TrainSettings,
    extra: dict[str, Any],
    wall: float,
) -> dict[str, Any]:
    config = {k: v for k, v in vars(settings).items()}
    return results_document(
        benchmark="llm-pretrain:" + ",".join(names),
        scenario="domain",
        tasks=names,
        higher_is_better=False,
        score_name="perplexity",
        config={**config, **extra},
        wall_seconds=wall,
        results=results,
    )


# ---- a stream of domains, several strategies (lifelong pretrain) ---------------------------------------


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
            else:
                others.append(spec)
        strategies = llm_strategies([build_strategy(spec) for spec in others])
        label = "+".join((f"replay:ratio={ratio:g}" if s.name == "replay" else str(s)) for s in specs)
        out.append(Composition(label, ratio, strategies))
    labels = [c.label for c in out]
    if len(set(labels)) < len(labels):
        raise LifelongError(f"strategy compositions must differ, got {labels}")
    return out


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=+-]+", "_", text)[:80]


def prepare_run_dir(out: Path, overwrite: bool) -> bool:
    """Check the run folder; clear our files from it with ``overwrite``. True when it was created."""
    if out.exists() and not out.is_dir():
        raise LifelongError(f"--out {out} is a file, not a folder; choose another path")
    if (out / RESULTS_FILE).exists() and not overwrite:
        raise LifelongError(f"{out} already holds a finished run; pass --overwrite or choose another --out")
    if (out / "checkpoints").exists() and not overwrite:
        raise LifelongError(f"{out} holds an unfinished run; pass --overwrite or choose another --out")
    created = not out.exists()
    for name in OWNED:
        target = out / name
        shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    return created


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
) -> dict[str, Any]:
    """Train ``model`` on each corpus in turn, once per strategy composition; write the run folder.

    Every composition starts from the same model; ``replay`` draws its share of tokens from all
    earlier domains pooled (each in proportion to its size). For the from-scratch ``tiny-llama`` the first
    domain is trained once and shared: nothing is old yet, so every strategy would train it alike
    (replay has no earlier domain, EWC no Fisher, and distilling a random model teaches nothing).
    With your own model, strategies apply from the first domain on (distillation then keeps what
    the model knew before). Returns the results document (also ``results.json``).
    """
    from rich.console import Console

    console = console or Console()
    started = time.perf_counter()
    ratio = check_replay_ratio(replay_ratio)
    settings = _resolved(settings or TrainSettings(), model)
    plans = parse_compositions(list(compositions) or ["replay"], ratio)
    if not corpora:
        raise LifelongError(
            "no corpus given; pass --corpus at least once (or none for the built-in prose, code)"
        )
    run_dir = Path(out)
    from_scratch = is_tiny_llama(model)
    base, tokenizer = load_model(model)  # fails on a bad folder before the run folder is touched
    vocab = vocab_size(base)
    loaded: list[Corpus | PackedCorpus] = []
    for source in corpora:
        if isinstance(source, str | Path):
            loaded.append(load_corpus(source, text_field=text_field, one_doc_per_line=one_doc_per_line))
        else:
            loaded.append(source)
    packed = [_packed(c, tokenizer, settings.block_size, vocab) for c in loaded]
    domains = _unique(packed)
    names = list(domains)
    created = prepare_run_dir(run_dir, overwrite)
    try:
        device = "cpu" if _use_cpu(settings.device) else "cuda"
        to_device(base, device)
        heldout = {n: p.heldout for n, p in domains.items()}
        eval_started = time.perf_counter()
        initial = perplexities(base, heldout, settings.eval_batch_size, settings.eval_blocks)
        eval_seconds = time.perf_counter() - eval_started
        shared: tuple[Any, list[float], float, Path] | None = None
        if from_scratch:
            console.print(
                f"[bold]{names[0]}[/]: training the shared first domain ({len(domains[names[0]].train)} blocks)"
            )
            first_settings = dataclasses.replace(settings, epochs=settings.first_epochs or settings.epochs)
            first = train_task(
                base,
                tokenizer,
                domains[names[0]],
                [],
                0.0,
                [],
                first_settings,
                run_dir / "trainer" / "shared",
            )
            row = perplexities(base, heldout, settings.eval_batch_size, settings.eval_blocks)
            folder = save_model(base, tokenizer, run_dir / "checkpoints" / "shared" / "task-0")
            atomic_write_json(
                folder / PERPLEXITY_FILE,
                {"task": names[0], "block_size": settings.block_size, "before": initial, "after": row},
            )
            shared = (base, [row[n] for n in names], first.train_seconds, folder)
        # Your own model: the first composition trains the loaded copy, later ones reload it, so one
        # model (not two) is in memory at a time.
        fresh_model = model_supply(model, None if shared is not None else base, device)
        del base
        results = []
        for index, plan in enumerate(plans):
            results.append(
                _run_composition(
                    index, plan, fresh_model, shared, domains, initial, settings, run_dir, console, tokenizer
                )
            )
        for record in results:
            record["metrics"] = summarize(
                record["accuracy_matrix"],
                names,
                higher_is_better=False,
                initial_scores=record["initial_scores"],
            )
            record["eval_seconds"] = round(record["eval_seconds"] + eval_seconds, 4)
        extra = {
            "model": str(model),
            "corpora": [c.origin if isinstance(c, Corpus) else c.name for c in loaded],
            "replay_ratio": ratio,
            "strategies": [p.label for p in plans],
            "shared_first_task": from_scratch,
            "out": str(run_dir),
        }
        document = _document(names, results, settings, extra, time.perf_counter() - started)
        write_results(run_dir, document)
    except BaseException:
        if created:
            shutil.rmtree(run_dir, ignore_errors=True)  # nothing finished: leave nothing behind
        raise
    return publish_run(run_dir, document, console, print_pretrain_results)


def publish_run(
    run_dir: Path,
    document: dict[str, Any],
    console: Console,
    print_results: Callable[[Console, dict[str, Any]], None],
) -> dict[str, Any]:
    """After ``results.json`` is written: tidy the folder, write the report, print the tables."""
    from lifelong.report import write_report

    _drop_if_empty(run_dir / "trainer")
    try:
        write_report(run_dir, document)
    except LifelongError as err:  # the results are written; a report problem must not hide them
        console.print(f"[yellow]report not written: {err}[/]")
    print_results(console, document)
    console.print(f"results written to {run_dir / RESULTS_FILE}")
    return document


def _run_composition(
    index: int,
    plan: Composition,
    fresh_model: Callable[[], Any],
    shared: tuple[Any, list[float], float, Path] | None,
    domains: dict[str, PackedCorpus],
    initial: dict[str, float],
    settings: TrainSettings,
    run_dir: Path,
    console: Console,
    tokenizer: PreTrainedTokenizerBase,
) -> dict[str, Any]:
    names = list(domains)
    folder = run_dir / "checkpoints" / f"{index}-{_slug(plan.label)}"
    heldout = {n: p.heldout for n, p in domains.items()}
    # Fresh strategy objects per composition: EWC's Fisher must not leak from one run to the next.
    strategies = [copy.deepcopy(s) for s in plan.strategies]
    if shared is not None:
        trained, first_row, first_seconds, _ = shared
        model = copy.deepcopy(trained)
        matrix = [first_row]
        start, train_seconds = 1, first_seconds
        # The shared first task had no strategies: do its after-task part (EWC's Fisher) now.
        _ensure_old_importance(strategies, model, domains[names[0]].train, settings.seed)
    else:
        model = fresh_model()
        matrix, start, train_seconds = [], 0, 0.0
    eval_seconds = 0.0
    previous = initial if shared is None else dict(zip(names, matrix[0], strict=True))
    for t in range(start, len(names)):
        name = names[t]
        earlier = [domains[n] for n in names[:t]]
        console.print(f"[bold]{plan.label}[/]: training {name} (task {t + 1} of {len(names)})")
        result = train_task(
            model,
            tokenizer,
            domains[name],
            earlier if plan.replay_ratio > 0 else [],
            plan.replay_ratio,
            strategies,
            settings,
            run_dir / "trainer" / folder.name / f"task-{t}",  # report_to logs, one folder per task
            watch={n: domains[n] for n in names[:t]},
        )
        train_seconds += result.train_seconds
        if result.early_stop is not None:
            stop = result.early_stop
            console.print(
                f"  stopped early at step {stop['step']}: {stop['domain']} perplexity rose {stop['ratio']:.2f}x"
            )
        eval_started = time.perf_counter()
        row = perplexities(model, heldout, settings.eval_batch_size, settings.eval_blocks)
        eval_seconds += time.perf_counter() - eval_started
        matrix.append([row[n] for n in names])
        checkpoint = save_model(model, tokenizer, folder / f"task-{t}")
        atomic_write_json(
            checkpoint / PERPLEXITY_FILE,
            {
                "task": name,
                "block_size": settings.block_size,
                "before": previous,
                "after": row,
                "steps": result.steps,
                "early_stop": result.early_stop,
            },
        )
        previous = row
    return {
        "strategy": plan.label,
        "accuracy_matrix": matrix,
        "initial_scores": [initial[n] for n in names],
        "train_seconds": round(train_seconds, 4),
        "eval_seconds": eval_seconds,
    }


# ---- printing ------------------------------------------------------------------------------------------


def forgetting_summary(document: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per strategy: old domains' perplexity rise, the last domain's perplexity, and both against naive.

    ``rise`` is the mean over old domains of (final perplexity - perplexity right after learning it);
    ``cut`` is ``1 - rise / naive's rise`` (0.5 = half the forgetting); ``last_vs_naive`` is the
    relative change of the last domain's perplexity against naive (+0.05 = 5% worse).
    """
    rows = []
    for result in document["results"]:
        r = result["accuracy_matrix"]
        t = len(r)
        rise = sum(r[t - 1][j] - r[j][j] for j in range(t - 1)) / (t - 1) if t > 1 else None
        rows.append({"strategy": result["strategy"], "rise": rise, "last": r[t - 1][t - 1]})
    naive = next((row for row in rows if row["strategy"] == "naive"), None)
    for row in rows:
        row["cut"] = row["last_vs_naive"] = None
        # A cut is only meaningful against forgetting: if naive's old domains did not get worse, none.
        if naive is not None and naive["rise"] is not None and naive["rise"] > 0 and row["rise"] is not None:
            row["cut"] = 1 - row["rise"] / naive["rise"]
        if naive is not None:
            row["last_vs_naive"] = row["last"] / naive["last"] - 1
    return rows


def print_pretrain_results(console: Console, document: Mapping[str, Any]) -> None:
    from rich.table import Table

    names = document["tasks"]
    for result in document["results"]:
        table = Table(
            title=f"{result['strategy']}: perplexity (row = after training, column = domain; lower is better)",
            min_width=72,  # wide enough for the title on one line
        )
        table.add_column("after", style="bold")
        for name in names:
            table.add_column(name, justify="right")
        table.add_row("(start)", *(f"{v:.2f}" for v in result["initial_scores"]))
        for name, row in zip(names, result["accuracy_matrix"], strict=True):
            table.add_row(name, *(f"{v:.2f}" for v in row))
        console.print(table)
    if len(names) < 2:
        return
    table = Table(title="forgetting: old domains' perplexity rise after the later ones (lower is better)")
    table.add_column("strategy", no_wrap=True)
    for column in ("old-domain rise", "cut vs naive", f"{names[-1]} ppl", "vs naive", "train s"):
        table.add_column(column, justify="right")
    for row, result in zip(forgetting_summary(document), document["results"], strict=True):
        table.add_row(
            row["strategy"],
            f"{row['rise']:+.2f}",
            "—" if row["cut"] is None else f"{row['cut']:.0%}",
            f"{row['last']:.2f}",
            "—" if row["last_vs_naive"] is None else f"{row['last_vs_naive']:+.1%}",
            f"{result['train_seconds']:.1f}",
        )
    console.print(table)
