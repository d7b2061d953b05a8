"""Continual instruction tuning: fine-tune a chat or instruction model task after task, keeping old skills.

`finetune` trains a causal LM on a stream of instruction tasks (JSONL files in the formats of
`lifelong.llm.instruct`, or the built-in ``skills`` stream) with `ContinualTrainer`, once per
strategy composition, and evaluates every task's held-out part after every task: mean token loss
on the answer tokens, and exact match (or a metric function of the user's) of greedy, batched
generation. The score matrix and the metrics go to ``results.json`` and the report, as in every run;
the run folder (`lifelong.llm.runs`) has a checkpoint after every task, and `resume_finetune`
(``lifelong finetune --resume RUN``) continues an unfinished run to the same numbers.

What a composition can hold (replay, self-replay, lwf on earlier prompts, ewc, ...) is in
`lifelong.llm.plans`.

With ``lora=True`` one LoRA adapter (on the frozen base) trains through the whole stream, and its
state after each task goes into an `AdapterLibrary` under that task's name: the run ends with one
adapter per task, the matrix is theirs (row i = adapter i), and ``merge=True`` adds their merge.

The built-in ``tiny-llama`` starts from random weights, so its first task is trained once and shared
by every composition (nothing is old yet for any strategy to protect, unless ``replay=`` data is given),
as ``lifelong pretrain`` does. A given model's first task is shared too when every composition would
train it exactly as naive fine-tuning does (naive, replay, self-replay without given prompts, lwf on
earlier prompts): the numbers are the same, in a fraction of the time.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from lifelong.core.metrics import summarize
from lifelong.errors import LifelongError
from lifelong.llm.answers import Metric, resolve_metric
from lifelong.llm.data import check_replay_ratio
from lifelong.llm.finetune_data import (
    FinetuneSettings,
    Prepared,
    TaskSource,
    evaluate_all,
    evaluate_task,
    given_prompts,
    load_tasks,
    prepare,
    score_name_of,
    tiny_skills_settings,
    unique_names,
)
from lifelong.llm.finetune_lora import LORA_ADAPTER, LORA_LR, load_task_adapter
from lifelong.llm.finetune_run import FinetuneRun, Row
from lifelong.llm.instruct import InstructionTask, Record, check_chat_template, read_records
from lifelong.llm.models import ModelSupply, check_positions, is_tiny_llama, load_model, to_device
from lifelong.llm.plans import DEFAULT_KEEP, Plan, parse_plans
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
from lifelong.llm.settings import FinetuneConfig
from lifelong.llm.summaries import forgetting_rows, print_finetune_results
from lifelong.llm.training import DEFAULT_LR, device_of, resolved
from lifelong.llm.watchsets import add_uncertainty, chosen_sources, load_watch
from lifelong.report.text import terminal
from lifelong.runs.folder import default_out
from lifelong.runs.results import results_document, write_results

__all__ = [
    "LORA_ADAPTER",
    "LORA_LR",
    "FinetuneSettings",
    "Prepared",
    "evaluate_all",
    "evaluate_task",
    "finetune",
    "forgetting_rows",
    "load_task_adapter",
    "load_tasks",
    "prepare",
    "print_finetune_results",
    "resume_finetune",
    "run_finetune_config",
    "tiny_skills_settings",
]

COMMAND = "finetune"


@dataclass
class FinetuneRequest:
    """What a `lifelong finetune` run is asked to do: what run.json keeps, to resume it with.

    Tasks given as objects and a metric given as a function are kept as ``None``: a resumed run needs
    them again (``resume_finetune(run, data=..., replay=..., metric=...)``)."""

    model: str
    data: list[TaskSource]
    replay: list[TaskSource]
    strategies: list[str]
    replay_ratio: float
    settings: FinetuneSettings
    self_replay_prompts: str | None = None
    lora: bool | dict[str, Any] = False
    merge: bool = False
    metric: str | Metric | None = None
    tensorboard: bool = False
    watch: list[str] | None = None  # None: by model (general for a pretrained chat model)
    allow_pickle: bool = False  # kept in run.json: a resumed run loads the model as the run did

    def saved(self) -> dict[str, Any]:
        def named(sources: list[TaskSource]) -> list[str | None]:
            return [str(s) if isinstance(s, str | Path) else None for s in sources]

        return {
            **{f.name: getattr(self, f.name) for f in dataclasses.fields(self)},
            "data": named(self.data),
            "replay": named(self.replay),
            "metric": self.metric if isinstance(self.metric, str) else None,
            "settings": dataclasses.asdict(self.settings),
        }

    @classmethod
    def from_saved(
        cls,
        run_dir: Path,
        data: Sequence[TaskSource] | None,
        replay: Sequence[TaskSource] | None,
        metric: str | Metric | None,
    ) -> FinetuneRequest:
        saved = saved_settings(run_dir, COMMAND)
        try:
            request = cls(**{**saved, "settings": FinetuneSettings(**saved["settings"])})
        except (TypeError, KeyError):
            raise damaged(run_dir) from None
        check_saved(run_dir, request.settings, request.strategies)
        request.data = given_again(request.data, data, "data")
        request.replay = given_again(request.replay, replay, "replay")
        if request.metric is None:
            if metric is None:
                raise LifelongError("the run was given its metric as a function; pass it again as metric=")
            request.metric = metric
        return request


def finetune(
    model: str | Path = "tiny-llama",
    data: TaskSource | Sequence[TaskSource] = "skills",
    out: str | Path = "runs/finetune",
    *,
    strategies: str | Sequence[str] | None = None,
    replay: TaskSource | Sequence[TaskSource] | None = None,
    replay_ratio: float = 0.1,
    self_replay_prompts: str | Path | None = None,
    lora: bool | Mapping[str, Any] = False,
    merge: bool = False,
    metric: str | Metric | None = None,
    settings: FinetuneSettings | None = None,
    overwrite: bool = False,
    console: Console | None = None,
    progress: bool = False,
    tensorboard: bool = False,
    watch: str | Path | Sequence[str | Path] | None = None,
    allow_pickle: bool = False,
) -> dict[str, Any]:
    """Fine-tune ``model`` on each task of ``data`` in turn, once per strategy composition; write ``out``.

    ``model``: ``tiny-llama[:options]`` or a local Hugging Face folder (model and tokenizer).
    ``data``: JSONL files (one task each) and/or ``skills`` (its three tasks). ``replay``: data the
    model already learned, replayed by ``replay`` and scored like the tasks (its rows of the matrix
    are the model as given). ``strategies``: compositions such as ``"naive"``, ``"replay"``,
    ``"self-replay"``, ``"lwf"``, ``"lwf:prompts=earlier"``, ``"replay:ratio=0.2+ewc"`` (default:
    ``replay`` when ``replay`` data is given, else ``naive``); ``replay_ratio`` is their default
    share. ``lora``: True or LoRA fields (``{"r": 8}``) for one adapter per task in
    ``out/adapters/<composition>``; ``merge`` adds their merge. ``metric``: ``"exact"`` (default),
    a function ``(prediction, reference) -> float`` or ``"module:function"``. ``tensorboard`` also
    logs each task's scores to TensorBoard. ``watch``: watch sets (`lifelong.llm.watchsets`), JSONL
    files or ``general``, scored whole before the first task and after every task and never trained
    on (default: ``general`` for a pretrained chat model, else none; ``[]`` or ``"none"``: none).
    ``allow_pickle`` also loads a model folder whose weights are only pickles (see
    `lifelong.models.hf.weights_format`). Returns the results document (also ``out/results.json``);
    an unfinished run continues with `resume_finetune`.
    """
    if strategies is None:
        strategies = ["replay"] if replay is not None else ["naive"]

    def listed(sources: TaskSource | Sequence[TaskSource] | None) -> list[TaskSource]:
        if sources is None:
            return []
        return [sources] if isinstance(sources, str | Path | InstructionTask) else list(sources)

    request = FinetuneRequest(
        model=str(model),
        data=listed(data),
        replay=listed(replay),
        strategies=[strategies] if isinstance(strategies, str) else list(strategies),
        replay_ratio=replay_ratio,
        settings=settings or FinetuneSettings(),
        self_replay_prompts=str(self_replay_prompts) if self_replay_prompts else None,
        lora=dict(lora) if isinstance(lora, Mapping) else lora,
        merge=merge,
        metric=metric or "exact",
        tensorboard=tensorboard,
        watch=None
        if watch is None
        else [str(w) for w in ([watch] if isinstance(watch, str | Path) else watch)],
        allow_pickle=allow_pickle,
    )
    return _finetune(request, Path(out), console, progress, overwrite=overwrite)


def run_finetune_config(
    config: FinetuneConfig, console: Console | None = None, progress: bool = False
) -> dict[str, Any]:
    """`finetune` with the settings of ``lifelong finetune`` (its flags and YAML keys) as one object."""
    config.validate()
    return finetune(
        config.model,
        config.data,
        config.out or default_out(COMMAND),
        strategies=config.strategies or None,
        replay=config.replay or None,
        replay_ratio=config.ratio,
        self_replay_prompts=config.self_replay_prompts,
        lora=config.lora_setting,
        merge=config.merge,
        metric=config.metric,
        settings=config.finetune_settings(),
        overwrite=config.overwrite,
        console=console,
        progress=progress,
        tensorboard=config.tensorboard,
        watch=config.eval or None,
        allow_pickle=config.allow_pickle,
    )


def resume_finetune(
    run_dir: str | Path,
    *,
    data: Sequence[TaskSource] | None = None,
    replay: Sequence[TaskSource] | None = None,
    metric: str | Metric | None = None,
    console: Console | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Continue the unfinished `finetune` run in ``run_dir`` with its own settings (run.json).

    Each composition continues after its last complete task, to the numbers an uninterrupted run
    gives. ``data``, ``replay`` and ``metric`` are needed only if the run was given tasks as
    objects or its metric as a function, which run.json cannot name.
    """
    request = FinetuneRequest.from_saved(Path(run_dir), data, replay, metric)
    return _finetune(request, Path(run_dir), console, progress, resume=True)


def _config(
    request: FinetuneRequest,
    settings: FinetuneSettings,
    named: Sequence[InstructionTask],
    prepared: Sequence[Prepared],
    plans: Sequence[Plan],
    lora: dict[str, Any] | None,
    watch: list[str],
) -> dict[str, Any]:
    """The run's settings as results.json records them."""
    return {
        **vars(settings),
        "model": request.model,
        "data": [t.origin for t in named],
        "replay_tasks": [t.name for t in prepared if t.known],
        "replay_ratio": check_replay_ratio(request.replay_ratio),
        "self_replay_prompts": request.self_replay_prompts,
        "strategies": [p.label for p in plans],
        "lora": False if lora is None else lora,
        "merge": request.merge,
        "watch": watch,
    }


def _finetune(
    request: FinetuneRequest,
    out: Path,
    console: Console | None,
    progress: bool,
    *,
    overwrite: bool = False,
    resume: bool = False,
) -> dict[str, Any]:
    console = console or terminal()
    started = time.perf_counter()
    plans = parse_plans(request.strategies, check_replay_ratio(request.replay_ratio))
    if request.merge and not request.lora:
        raise LifelongError("merge combines the per-task LoRA adapters; add lora=True (--lora)")
    metric_fn, metric_name = resolve_metric(request.metric)
    request.settings = settings = resolved(
        request.settings, request.model, LORA_LR if request.lora else DEFAULT_LR
    )
    named, known, given_records = _read_tasks(request, plans)
    base, tokenizer = load_model(request.model, allow_pickle=request.allow_pickle)
    check_positions(base, settings.max_length, "--max-length")
    if settings.packing:
        check_positions(base, settings.block_size, "--block-size")
    check_chat_template(
        tokenizer, [r for t in named for r in (*t.train, *t.heldout)] + list(given_records), request.model
    )
    keep = max((p.keep for p in plans), default=DEFAULT_KEEP)
    prepared = [prepare(t, tokenizer, settings, keep, known=i < known) for i, t in enumerate(named)]
    given = given_prompts(given_records, tokenizer, settings)
    answered = all(t.answered for t in prepared)
    # Multiple-choice tasks are scored by acc_norm, the others by the metric; with plain text, all by loss.
    score_name = " / ".join(dict.fromkeys(score_name_of(t, metric_name) for t in prepared))
    score_name = score_name if answered else "answer loss"
    watch = load_watch(
        chosen_sources(request.watch, base, tokenizer), tokenizer, settings, metric_fn, metric_name
    )
    folder = open_folder(COMMAND, out, request.saved(), overwrite=overwrite, resume=resume)
    with folder.running():
        run = LLMRun(
            folder,
            data_digest(prepared, given, *watch.sets),
            [t.name for t in prepared],
            seed=settings.seed,
            tensorboard=request.tensorboard,
            average="average_" + score_name.replace(" / ", "_or_").replace(" ", "_"),
            scored_by_loss=not answered,
            watch_names=watch.names,
        )
        to_device(base, device_of(settings))
        evaluating = time.perf_counter()
        initial = Row(
            evaluate_all(base, prepared, tokenizer, metric_fn, settings), watch.measure(base, tokenizer)
        )
        eval_seconds = time.perf_counter() - evaluating
        lora = None  # full fine-tuning
        if request.lora:
            lora = dict(request.lora) if isinstance(request.lora, Mapping) else {}
        job = FinetuneRun(
            run, tokenizer, prepared, given, settings, metric_fn, console, progress, lora, watch, initial
        )
        shared = None
        # A from-scratch model's first task is shared by all (nothing is old yet to protect); a given
        # model's, where every composition would train it exactly as naive does and no prompts are given.
        alike = len(plans) > 1 and not given and all(p.first_task_plain for p in plans)
        if lora is None and not known and (is_tiny_llama(request.model) or alike):
            shared = job.shared_first(base)
        supply = ModelSupply(
            request.model,
            None if shared is not None else base,
            device_of(settings),
            allow_pickle=request.allow_pickle,
        )
        del base
        results = [job.composition(i, plan, supply, shared, request.merge) for i, plan in enumerate(plans)]
        config = {
            **_config(request, settings, named, prepared, plans, lora, watch.sources),
            "shared_first_task": shared is not None,
            "out": str(out),
        }
        wall = time.perf_counter() - started
        document = _document(results, prepared, answered, score_name, eval_seconds, config, wall)
        write_results(out, document)
    return publish(out, document, console, print_finetune_results)


def _read_tasks(
    request: FinetuneRequest, plans: list[Plan]
) -> tuple[list[InstructionTask], int, list[Record]]:
    """(every task, replay= data first; how many are replay= data; the self-replay prompts given).

    Every file is read and checked here, once: a bad line fails before any training, and no task's
    file is opened again later (self-replay must not read old data)."""
    stream = load_tasks(request.data)
    if not stream:
        raise LifelongError("no instruction data; pass --data FILE.jsonl (repeatable) or --data skills")
    known = load_tasks(request.replay)
    prompts = request.self_replay_prompts
    given_records = read_records(prompts, prompts_only=True) if prompts else []
    named = unique_names([*known, *stream])
    if any(p.self_replay_ratio > 0 for p in plans) and len(named) < 2 and not given_records:
        raise LifelongError(
            "self-replay answers prompts from earlier tasks or from self_replay_prompts, and one task has no "
            "earlier ones; pass --self-replay-prompts FILE or more than one task"
        )
    return named, len(known), given_records


def _document(
    results: list[dict[str, Any]],
    prepared: list[Prepared],
    answered: bool,
    score_name: str,
    eval_seconds: float,
    config: dict[str, Any],
    wall: float,
) -> dict[str, Any]:
    names = [t.name for t in prepared]
    for record in results:
        if not answered:  # plain-text tasks have no answers to match: the loss is the score
            for score, loss in (
                ("accuracy_matrix", "loss_matrix"),
                ("initial_scores", "initial_loss"),
                ("accuracy_matrix_se", "loss_matrix_se"),
                ("initial_scores_se", "initial_loss_se"),
            ):
                record[score] = record[loss]
        record["metrics"] = summarize(
            record["accuracy_matrix"],
            names,
            higher_is_better=answered,
            initial_scores=record["initial_scores"],
        )
        record["loss_metrics"] = summarize(
            record["loss_matrix"], names, higher_is_better=False, initial_scores=record["initial_loss"]
        )
        add_uncertainty(record)
        record["eval_seconds"] = round(record["eval_seconds"] + eval_seconds, 4)
    return results_document(
        benchmark="finetune:" + ",".join(names),
        scenario="task",
        tasks=names,
        higher_is_better=answered,
        score_name=score_name,
        config=config,
        wall_seconds=wall,
        results=results,
    )
