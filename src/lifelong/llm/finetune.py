"""Continual instruction tuning: fine-tune a chat or instruction model task after task, keeping old skills.

`finetune` trains a causal LM on a stream of instruction tasks (JSONL files in the formats of
`lifelong.llm.instruct`, or the built-in ``skills`` stream) with `ContinualTrainer`, once per
strategy composition, and evaluates every task's held-out part after every task: mean token loss
on the answer tokens, and exact match (or a metric function of the user's) of greedy, batched
generation. The score matrix and the metrics go to ``results.json`` and the report, as in every run.

What a composition can hold (replay, self-replay, lwf on earlier prompts, ewc, ...) is in
`lifelong.llm.plans`.

With ``lora=True`` one LoRA adapter (on the frozen base) trains through the whole stream, and its
state after each task goes into an `AdapterLibrary` under that task's name: the run ends with one
adapter per task, the matrix is theirs (row i = adapter i), and ``merge=True`` adds their merge.

The built-in ``tiny-llama`` starts from random weights, so its first task is trained once and shared
by every composition (nothing is old yet for any strategy to protect, unless ``replay=`` data is given),
as ``lifelong pretrain`` does.
"""

from __future__ import annotations

import copy
import dataclasses
import random
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from lifelong.core.metrics import summarize
from lifelong.errors import LifelongError
from lifelong.llm.answers import Metric, Prompt, answer_loss, answer_prompts, generate_answers, resolve_metric
from lifelong.llm.data import check_replay_ratio
from lifelong.llm.instruct import (
    Example,
    InstructionTask,
    PaddingCollator,
    Record,
    check_chat_template,
    encode,
    encode_prompt,
    examples_dataset,
    load_task,
    pack_examples,
    pad_id_of,
    read_records,
)
from lifelong.llm.models import (
    is_tiny_llama,
    load_model,
    model_supply,
    offline,
    resolve_model_folder,
    save_model,
    to_device,
)
from lifelong.llm.plans import DEFAULT_KEEP, Plan, parse_plans, replayed_examples, self_replay_examples
from lifelong.llm.pretrain import (
    DEFAULT_LR,
    TINY_LR,
    TrainSettings,
    _ensure_old_importance,
    _slug,
    _training_args,
    _use_cpu,
    prepare_run_dir,
    publish_run,
)
from lifelong.llm.skills import is_skills, parse_skills
from lifelong.llm.trainer import ContinualTrainer
from lifelong.runs.results import results_document, write_results
from lifelong.strategies import Strategy

if TYPE_CHECKING:
    from rich.console import Console

LORA_LR = 2e-4  # the usual LoRA rate for a pretrained model; full fine-tuning continues at DEFAULT_LR
LORA_ADAPTER = "_stream"  # the adapter that trains; task names cannot start with "_", so no clash
TaskSource = str | Path | InstructionTask


@dataclass
class FinetuneSettings(TrainSettings):
    """`TrainSettings` plus what instruction data needs; ``block_size`` is the packing length and
    ``first_epochs`` the passes over the first task when a from-scratch model trains it once for all."""

    max_length: int = 256  # tokens per example; longer ones lose the start of their prompt
    packing: bool = False
    max_new_tokens: int = 64  # bound on generated answer tokens (also cut to the longest reference + 8)
    eval_examples: int | None = None  # cap on held-out examples per task (None: all)
    eval_batch_size: int = 64

    def validate(self) -> None:
        super().validate()
        if self.max_length < 2 or self.max_new_tokens < 1:
            raise LifelongError("max_length must be >= 2 and max_new_tokens >= 1")
        if self.eval_examples is not None and self.eval_examples < 1:
            raise LifelongError(f"eval_examples must be at least 1, got {self.eval_examples}")
        # Pretraining's perplexity settings would be silently ignored here: refuse them instead.
        for name, instead in (
            ("eval_blocks", "eval_examples"),
            ("eval_every", "the scores after every task"),
            ("stop_ratio", "the scores after every task"),
        ):
            if getattr(self, name) is not None:
                raise LifelongError(f"{name} is a pretrain setting that finetune does not use; see {instead}")


@dataclass
class Prepared:
    """A task in tokens. ``known`` tasks (``replay=`` data) were learned before the run and only replayed."""

    name: str
    train: list[Example]
    heldout: list[Example]
    prompts: list[Prompt]
    answered: bool
    known: bool = False


def evaluate_task(
    model: Any, task: Prepared, tokenizer: Any, metric: Metric, settings: FinetuneSettings
) -> tuple[float | None, float]:
    """(metric on generated answers, or None for plain text; mean answer-token loss) on the held-out part."""
    pad = pad_id_of(tokenizer)
    loss = answer_loss(model, task.heldout, pad, settings.eval_batch_size)
    if not task.answered:
        return None, loss
    answers = generate_answers(
        model, answer_prompts(task.heldout, settings.max_new_tokens), pad, settings.eval_batch_size
    )
    scores = []
    for example, answer in zip(task.heldout, answers, strict=True):
        if answer and answer[-1] in example.stop_ids:
            answer = answer[:-1]  # an end-of-turn mark may be plain text, which decoding would keep
        text = tokenizer.decode(answer, skip_special_tokens=True)
        scores.append(float(metric(text.strip(), example.answer or "")))
    return sum(scores) / len(scores), loss


def evaluate_all(
    model: Any, tasks: Sequence[Prepared], tokenizer: Any, metric: Metric, settings: FinetuneSettings
) -> tuple[list[float | None], list[float]]:
    scores, losses = [], []
    for task in tasks:
        score, loss = evaluate_task(model, task, tokenizer, metric, settings)
        scores.append(score)
        losses.append(loss)
    return scores, losses


# ---- reading the stream ---------------------------------------------------------------------------------------


def load_tasks(sources: TaskSource | Sequence[TaskSource] | None) -> list[InstructionTask]:
    """JSONL paths, ``skills`` (three tasks) or `InstructionTask` objects -> tasks, each file read once."""
    if sources is None:
        return []
    items = [sources] if isinstance(sources, str | Path | InstructionTask) else list(sources)
    tasks: list[InstructionTask] = []
    for item in items:
        if isinstance(item, InstructionTask):
            tasks.append(item)
        elif is_skills(str(item)) and not Path(str(item)).exists():
            tasks += parse_skills(str(item))
        else:
            tasks.append(load_task(item))
    return tasks


def _unique_names(tasks: Sequence[InstructionTask]) -> list[InstructionTask]:
    out: list[InstructionTask] = []
    seen: set[str] = set()
    for task in tasks:
        name, k = task.name, 2
        while name in seen:
            name, k = f"{task.name}-{k}", k + 1
        seen.add(name)
        out.append(task if name == task.name else dataclasses.replace(task, name=name))
    return out


def prepare(
    task: InstructionTask, tokenizer: Any, settings: FinetuneSettings, keep: int, known: bool = False
) -> Prepared:
    """Tokenize a task. Only up to ``keep`` training prompts (no answers) outlive it, for self-replay."""
    train = [encode(r, tokenizer, settings.max_length) for r in task.train]
    heldout_records = task.heldout[: settings.eval_examples] if settings.eval_examples else task.heldout
    heldout = [encode(r, tokenizer, settings.max_length) for r in heldout_records]
    rng = random.Random(f"{settings.seed}-{task.name}")
    answered = [e for e in train if e.answer is not None]
    kept = rng.sample(answered, min(keep, len(answered)))
    return Prepared(
        task.name,
        train,
        heldout,
        answer_prompts(kept, settings.max_new_tokens),
        answered=task.answered,
        known=known,
    )


def _given_prompts(records: Sequence[Record], tokenizer: Any, settings: FinetuneSettings) -> list[Prompt]:
    return [
        Prompt(ids, stops, settings.max_new_tokens)
        for ids, stops in (encode_prompt(r, tokenizer, settings.max_length) for r in records)
    ]


# ---- the run ----------------------------------------------------------------------------------------------------


def tiny_skills_settings(**overrides: Any) -> FinetuneSettings:
    """What the from-scratch ``tiny-llama`` needs to learn each skill in about a minute of CPU."""
    values: dict[str, Any] = {
        "batch_size": 32,
        "epochs": 8.0,  # 125 steps an epoch on the 4000 training examples of a skill
        "learning_rate": 3e-3,
        "max_length": 64,
        "max_new_tokens": 16,
        "block_size": 64,
    }
    return FinetuneSettings(**{**values, **overrides})


def _resolved(settings: FinetuneSettings, model: Any, lora: bool) -> FinetuneSettings:
    settings.validate()
    if settings.learning_rate is not None:
        return settings
    tiny = isinstance(model, str | Path) and is_tiny_llama(model)
    rate = TINY_LR if tiny else (LORA_LR if lora else DEFAULT_LR)
    return dataclasses.replace(settings, learning_rate=rate)


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
    a function ``(prediction, reference) -> float`` or ``"module:function"``. Returns the results
    document (also ``out/results.json``).
    """
    from rich.console import Console

    console = console or Console()
    started = time.perf_counter()
    ratio = check_replay_ratio(replay_ratio)
    if strategies is None:
        strategies = ["replay"] if replay is not None else ["naive"]
    plans = parse_plans([strategies] if isinstance(strategies, str) else list(strategies), ratio)
    if merge and not lora:
        raise LifelongError("merge combines the per-task LoRA adapters; add lora=True (--lora)")
    metric_fn, metric_name = resolve_metric(metric)
    settings = _resolved(settings or FinetuneSettings(), model, bool(lora))
    lora_options = dict(lora) if isinstance(lora, Mapping) else {}
    # Every file is read and checked here, once: a bad line fails before any training, and no task's
    # file is opened again later (self-replay must not read old data).
    stream = load_tasks(data)
    if not stream:
        raise LifelongError("no instruction data; pass --data FILE.jsonl (repeatable) or --data skills")
    known_raw = load_tasks(replay)
    given_records = read_records(self_replay_prompts, prompts_only=True) if self_replay_prompts else []
    named = _unique_names([*known_raw, *stream])
    if any(p.self_replay_ratio > 0 for p in plans) and len(named) < 2 and not given_records:
        raise LifelongError(
            "self-replay answers prompts from earlier tasks or from self_replay_prompts, and one task has no "
            "earlier ones; pass --self-replay-prompts FILE or more than one task"
        )
    from_scratch = is_tiny_llama(model)
    base, tokenizer = load_model(model)
    check_chat_template(
        tokenizer, [r for t in named for r in (*t.train, *t.heldout)] + list(given_records), str(model)
    )
    keep = max((p.keep for p in plans), default=DEFAULT_KEEP)
    prepared = [prepare(t, tokenizer, settings, keep, known=i < len(known_raw)) for i, t in enumerate(named)]
    given = _given_prompts(given_records, tokenizer, settings)
    answered = all(t.answered for t in prepared)
    names = [t.name for t in prepared]
    run_dir = Path(out)
    created = prepare_run_dir(run_dir, overwrite)
    for folder in (run_dir / "models", run_dir / "adapters"):  # ours too: an overwrite clears them
        shutil.rmtree(folder, ignore_errors=True)
    try:
        device = "cpu" if _use_cpu(settings.device) else "cuda"
        to_device(base, device)
        eval_started = time.perf_counter()
        initial = evaluate_all(base, prepared, tokenizer, metric_fn, settings)
        eval_seconds = time.perf_counter() - eval_started
        context = _Context(
            tokenizer, prepared, given, settings, metric_fn, run_dir, console, progress, lora_options
        )
        shared = None
        if from_scratch and not lora and not known_raw:
            shared = _train_shared_first(base, context)
        fresh_model = model_supply(model, None if shared is not None else base, device)
        del base
        results = []
        for index, plan in enumerate(plans):
            results.append(_run_plan(index, plan, fresh_model, shared, initial, context, bool(lora), merge))
        for record in results:
            if not answered:  # plain-text tasks have no answers to match: the loss is the score
                record["accuracy_matrix"], record["initial_scores"] = (
                    record["loss_matrix"],
                    record["initial_loss"],
                )
            matrix = record["accuracy_matrix"]
            record["metrics"] = summarize(
                matrix, names, higher_is_better=answered, initial_scores=record["initial_scores"]
            )
            record["loss_metrics"] = summarize(
                record["loss_matrix"], names, higher_is_better=False, initial_scores=record["initial_loss"]
            )
            record["eval_seconds"] = round(record["eval_seconds"] + eval_seconds, 4)
        document = results_document(
            benchmark="finetune:" + ",".join(names),
            scenario="task",
            tasks=names,
            higher_is_better=answered,
            score_name=metric_name if answered else "answer loss",
            config={
                **{k: v for k, v in vars(settings).items()},
                "model": str(model),
                "data": [t.origin for t in named],
                "replay_tasks": [t.name for t in prepared if t.known],
                "replay_ratio": ratio,
                "self_replay_prompts": str(self_replay_prompts) if self_replay_prompts else None,
                "strategies": [p.label for p in plans],
                "lora": lora_options if lora else False,
                "merge": merge,
                "shared_first_task": shared is not None,
                "out": str(run_dir),
            },
            wall_seconds=time.perf_counter() - started,
            results=results,
        )
        write_results(run_dir, document)
    except BaseException:
        if created:
            shutil.rmtree(run_dir, ignore_errors=True)  # nothing finished: leave nothing behind
        raise
    return publish_run(run_dir, document, console, print_finetune_results)


@dataclass
class _Context:
    """What every composition of one run shares."""

    tokenizer: Any
    tasks: list[Prepared]
    given: list[Prompt]
    settings: FinetuneSettings
    metric: Metric
    run_dir: Path
    console: Console
    progress: bool
    lora_options: dict[str, Any]


def _train_shared_first(base: Any, ctx: _Context) -> tuple[Any, list[float | None], list[float], float]:
    task = ctx.tasks[0]
    ctx.console.print(f"[bold]{task.name}[/]: training the shared first task ({len(task.train)} examples)")
    # As in pretrain: a from-scratch model's first task may need more passes than the later ones.
    first = dataclasses.replace(ctx.settings, epochs=ctx.settings.first_epochs or ctx.settings.epochs)
    seconds = _train_task(
        base,
        task.train,
        [],
        dataclasses.replace(ctx, settings=first),
        ctx.run_dir / "trainer" / "shared",
        task,
    )
    scores, losses = evaluate_all(base, ctx.tasks, ctx.tokenizer, ctx.metric, ctx.settings)
    ctx.console.print(f"  trained in {seconds:.0f}s; after it: " + _row_text(ctx.tasks, scores, losses))
    return base, scores, losses, seconds


def _train_task(
    model: Any,
    examples: Sequence[Example],
    strategies: Sequence[Strategy],
    ctx: _Context,
    output_dir: Path,
    task: Prepared,
) -> float:
    """One task with `ContinualTrainer`; EWC measures importance on the task's own examples, packed."""
    settings = ctx.settings
    pad = pad_id_of(ctx.tokenizer)
    dataset = pack_examples(examples, settings.block_size) if settings.packing else examples_dataset(examples)
    with offline():
        trainer = ContinualTrainer(
            model=model,
            args=_training_args(settings, output_dir, ctx.progress),
            train_dataset=dataset,
            data_collator=PaddingCollator(pad),
            strategies=list(strategies),
            lr_schedule=settings.schedule,
            min_lr_ratio=settings.min_lr_ratio,
        )
        trainer.remove_callback(PrinterCallback)  # it prints every log dict to stdout
        if ctx.progress:
            trainer.remove_callback(ProgressCallback)
            trainer.add_callback(_BarOnly())
        started = time.perf_counter()
        fisher = (
            pack_examples(task.train, settings.block_size)
            if any(s.lm_task_data for s in strategies)
            else None
        )
        trainer.train_task(fisher_dataset=fisher)
    return time.perf_counter() - started


class _BarOnly(ProgressCallback):
    """The Trainer's progress bar without the log dicts it writes under it (the losses are in the results)."""

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
        return None


def _run_plan(
    index: int,
    plan: Plan,
    fresh_model: Callable[[], Any],
    shared: tuple[Any, list[float | None], list[float], float] | None,
    initial: tuple[list[float | None], list[float]],
    ctx: _Context,
    lora: bool,
    merge: bool,
) -> dict[str, Any]:
    tasks, settings = ctx.tasks, ctx.settings
    slug = f"{index}-{_slug(plan.label)}"
    strategies = [copy.deepcopy(s) for s in plan.strategies]  # no EWC Fisher leaks between compositions
    known = [t for t in tasks if t.known]
    # The model as given counts as having learned the replay= data: those rows are the start.
    scores: list[list[float | None]] = [initial[0] for _ in known]
    losses: list[list[float]] = [initial[1] for _ in known]
    train_seconds = eval_seconds = 0.0
    start = len(known)
    if shared is not None:
        trained, first_scores, first_losses, first_seconds = shared
        model = copy.deepcopy(trained)
        scores.append(first_scores)
        losses.append(first_losses)
        train_seconds += first_seconds
        if any(s.lm_task_data for s in strategies):
            # The shared first task ran without strategies: do its after-task part (EWC's Fisher) now.
            _ensure_old_importance(
                strategies, model, pack_examples(tasks[0].train, settings.block_size), settings.seed
            )
        start = 1
    else:
        model = fresh_model()
    library = None
    if lora:
        library, model = _with_lora(model, ctx, slug)
    for t in range(start, len(tasks)):
        task = tasks[t]
        examples = list(task.train)
        if plan.replay_ratio:
            pool = [e for old in tasks[:t] for e in old.train]
            examples += replayed_examples(pool, len(task.train), plan.replay_ratio, settings.seed + t)
        if plan.self_replay_ratio:
            examples += _own_answers(model, ctx, plan, t, plan.self_replay_ratio, "self-replay")
        if plan.distill_ratio:
            # The teacher is asked on earlier prompts only: on the new ones it would answer the old way.
            soft = _own_answers(model, ctx, plan, t, plan.distill_ratio, "lwf on earlier prompts")
            examples = [dataclasses.replace(e, distilled=False) for e in examples]
            examples += [dataclasses.replace(e, soft=True) for e in soft]
        extra = len(examples) - len(task.train)
        ctx.console.print(
            f"[bold]{plan.label}[/]: training {task.name} (task {t + 1} of {len(tasks)}): "
            f"{len(task.train)} examples" + (f" + {extra} replayed" if extra else "")
        )
        seconds = _train_task(
            model, examples, strategies, ctx, ctx.run_dir / "trainer" / slug / f"task-{t}", task
        )
        train_seconds += seconds
        evaluating = time.perf_counter()
        row_scores, row_losses = evaluate_all(model, tasks, ctx.tokenizer, ctx.metric, settings)
        eval_seconds += time.perf_counter() - evaluating
        scores.append(row_scores)
        losses.append(row_losses)
        ctx.console.print(
            f"  trained in {seconds:.0f}s; after it: " + _row_text(tasks, row_scores, row_losses)
        )
        if library is not None:
            _store_adapter(library, model, task.name, len(examples), row_scores[t], row_losses[t])
    record: dict[str, Any] = {
        "strategy": plan.label,
        "accuracy_matrix": scores,
        "loss_matrix": losses,
        "initial_scores": initial[0] if all(s is not None for s in initial[0]) else None,
        "initial_loss": initial[1],
        "train_seconds": round(train_seconds, 4),
        "eval_seconds": eval_seconds,
    }
    if library is not None:
        record["adapters"] = {"root": str(library.root), "tasks": [t.name for t in tasks if not t.known]}
        if merge:
            record["merged"] = _merged(library, ctx, [t.name for t in tasks if not t.known])
    else:
        folder = save_model(model, ctx.tokenizer, ctx.run_dir / "models" / slug)
        record["model"] = str(folder)
    return record


def _own_answers(model: Any, ctx: _Context, plan: Plan, t: int, ratio: float, what: str) -> list[Example]:
    """Before task ``t``: the model's answers to prompts given or kept from earlier tasks, ``ratio`` of its examples."""
    prompts = ctx.given + [p for old in ctx.tasks[:t] for p in old.prompts[: plan.keep]]
    generating = time.perf_counter()
    made = self_replay_examples(
        model,
        prompts,
        len(ctx.tasks[t].train),
        ratio,
        pad_id_of(ctx.tokenizer),
        ctx.settings.seed + t,
        ctx.settings.eval_batch_size,
    )
    ctx.console.print(f"  {what}: {len(made)} answers generated in {time.perf_counter() - generating:.1f}s")
    return made


def _row_text(tasks: Sequence[Prepared], scores: Sequence[float | None], losses: Sequence[float]) -> str:
    parts = []
    for task, score, loss in zip(tasks, scores, losses, strict=True):
        parts.append(f"{task.name} {'' if score is None else f'{score:.2f} / '}loss {loss:.3f}")
    return ", ".join(parts)


# ---- LoRA: one adapter per task in the library -----------------------------------------------------------------


def _with_lora(model: Any, ctx: _Context, slug: str) -> tuple[Any, Any]:
    """An `AdapterLibrary` for this composition and the base wrapped with the one training adapter."""
    from peft import get_peft_model

    from lifelong.adapters import AdapterLibrary, _peft_call

    library = AdapterLibrary(model, ctx.run_dir / "adapters" / slug, tokenizer=ctx.tokenizer)
    try:
        config = library.default_lora(**ctx.lora_options)
    except (TypeError, ValueError) as err:
        raise LifelongError(f"bad LoRA option: {err}") from None
    with _peft_call():
        peft = get_peft_model(model, config, adapter_name=LORA_ADAPTER)
    library.peft_model = peft  # the library saves, loads and merges through the same PEFT model
    return library, peft


def _store_adapter(library: Any, peft: Any, task: str, size: int, score: float | None, loss: float) -> None:
    """Copy the training adapter's current weights into an adapter named ``task`` and save it in the library.

    The training adapter keeps one name through the stream, so EWC's anchors and the distillation
    teacher keep pointing at the weights that train; each task's state is a frozen copy beside it.
    """
    from lifelong.adapters import _peft_call

    config = copy.deepcopy(peft.peft_config[LORA_ADAPTER])
    with _peft_call():
        peft.add_adapter(task, config)
    source = {n: p for n, p in peft.named_parameters() if f".{LORA_ADAPTER}." in n}
    with torch.no_grad():
        for name, parameter in peft.named_parameters():
            if f".{task}." in name:
                parameter.copy_(source[name.replace(f".{task}.", f".{LORA_ADAPTER}.")])
                parameter.requires_grad_(False)
    peft.set_adapter(LORA_ADAPTER)  # PEFT's set_adapter leaves only the active adapter trainable
    library.add(
        task,
        config,
        {
            "training": {"continual": True, "after": task},
            "data_size": size,
            "eval": {
                "metric": "exact match" if score is not None else "loss",
                "value": score if score is not None else loss,
                "loss": loss,
                "split": "heldout",
            },
        },
    )


def _merged(library: Any, ctx: _Context, tasks: list[str]) -> dict[str, Any]:
    """The task adapters merged (``cat``: the exact mean of their updates), scored on every task."""
    info = library.merge(tasks, method="cat", name="merged")
    peft = library.peft_model
    scores, losses = evaluate_all(peft, ctx.tasks, ctx.tokenizer, ctx.metric, ctx.settings)
    peft.set_adapter(LORA_ADAPTER)
    return {"adapter": info.task, "path": str(info.path), "scores": scores, "loss": losses}


def load_task_adapter(model: str | Path, root: str | Path, task: str) -> Any:
    """The base of ``model`` with the adapter ``task`` of a finetune run's library, ready to evaluate."""
    from lifelong.adapters import AdapterLibrary

    library = AdapterLibrary(resolve_model_folder(model), root)
    with offline():  # no weight-loading progress bar
        return library.load(task)


# ---- printing ------------------------------------------------------------------------------------------------


def forgetting_rows(document: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per composition, for the first task: its score drop (right after it, or as given for replay data,
    minus final), its answer-loss rise, and the share of naive's drop and rise each cuts."""
    rows = []
    sign = 1 if document.get("higher_is_better", True) else -1
    for result in document["results"]:
        r, loss = result["accuracy_matrix"], result["loss_matrix"]
        several = len(r) > 1
        rows.append(
            {
                "strategy": result["strategy"],
                "first": document["tasks"][0],
                "drop": sign * (r[0][0] - r[-1][0]) if several else None,
                "loss_rise": loss[-1][0] - loss[0][0] if several else None,
                "final_mean": sum(r[-1]) / len(r[-1]),
                "train_seconds": result["train_seconds"],
            }
        )
    naive = next((row for row in rows if row["strategy"] == "naive"), None)
    for row in rows:
        for key, cut in (("drop", "cut"), ("loss_rise", "loss_cut")):
            row[cut] = None
            # A cut only means something against forgetting: if naive did not forget, there is none.
            if naive is not None and naive[key] is not None and naive[key] > 0 and row[key] is not None:
                row[cut] = 1 - row[key] / naive[key]
    return rows


def print_finetune_results(console: Console, document: Mapping[str, Any]) -> None:
    from rich.table import Table

    names = document["tasks"]
    score = document["score_name"]
    for result in document["results"]:
        table = Table(
            title=f"{result['strategy']}: {score} (row = after training, column = task)", min_width=60
        )
        table.add_column("after", style="bold")
        for name in names:
            table.add_column(name, justify="right")
        for name, row in zip(names, result["accuracy_matrix"], strict=True):
            table.add_row(name, *(f"{v:.3f}" for v in row))
        if "merged" in result:
            table.add_row("merged", *("—" if v is None else f"{v:.3f}" for v in result["merged"]["scores"]))
        console.print(table)
    if len(names) < 2:
        return
    table = Table(title=f"forgetting of the first task, {names[0]} (drop: {score}; rise: answer loss)")
    table.add_column("strategy", no_wrap=True)
    # "cut": the share of naive's drop (or loss rise) that the strategy avoids.
    for column in ("drop", "cut", "loss rise", "loss cut", "final mean", "train s"):
        table.add_column(column, justify="right")
    for row in forgetting_rows(document):
        table.add_row(
            row["strategy"],
            "—" if row["drop"] is None else f"{row['drop']:+.3f}",
            "—" if row["cut"] is None else f"{row['cut']:.0%}",
            "—" if row["loss_rise"] is None else f"{row['loss_rise']:+.3f}",
            "—" if row["loss_cut"] is None else f"{row['loss_cut']:.0%}",
            f"{row['final_mean']:.3f}",
            f"{row['train_seconds']:.1f}",
        )
    console.print(table)
