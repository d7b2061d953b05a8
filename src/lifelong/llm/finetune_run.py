"""The compositions of one `lifelong finetune` run, task after task, each task checkpointed.

What a composition can hold (replay, self-replay, lwf on earlier prompts, ewc, ...) is in
`lifelong.llm.plans`; the run folder and its checkpoints in `lifelong.llm.runs`.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lifelong.adapters.routing import BASE, prompt_embeddings, route_by_signature
from lifelong.core.checkpoint import CHECKPOINT_FILES, latest_checkpoint
from lifelong.llm.answers import Metric, Prompt
from lifelong.llm.batches import PaddingCollator, examples_dataset, pack_examples, pad_id_of
from lifelong.llm.callbacks import quiet_logs
from lifelong.llm.finetune_data import (
    FinetuneSettings,
    Measure,
    Prepared,
    evaluate_all,
    measure_task,
    pooled,
    row_text,
    subset,
)
from lifelong.llm.finetune_lora import (
    LORA_ADAPTER,
    answering_through,
    keep_adapters,
    load_training_adapter,
    prompts_of,
    signature_of,
    store_adapter,
    training_adapter,
    with_lora,
)
from lifelong.llm.instruct import Example
from lifelong.llm.models import ModelSupply, link_model, load_to, offline, save_model, write_model
from lifelong.llm.plans import Plan, replayed_examples, self_replay_examples
from lifelong.llm.runs import Checkpoints, LLMRun, Scores
from lifelong.llm.trainer import ContinualTrainer
from lifelong.llm.training import device_of, ensure_old_importance, training_args
from lifelong.llm.watchsets import Watch
from lifelong.report.text import safe_text
from lifelong.strategies import Strategy

if TYPE_CHECKING:
    from rich.console import Console

    from lifelong.adapters import AdapterLibrary


@dataclass
class Trained:
    """The model a composition trains, and under LoRA the library of its per-task adapters."""

    model: Any
    library: AdapterLibrary | None = None


@dataclass
class Row:
    """One evaluation pass: every task's held-out part and every watch set, measured."""

    tasks: list[Measure]
    watch: list[dict[str, Any]]

    def add_to(self, scores: Scores) -> None:
        scores.matrix.append([m.score for m in self.tasks])
        scores.losses.append([m.loss for m in self.tasks])
        scores.errors.append([m.score_se for m in self.tasks])
        scores.loss_errors.append([m.loss_se for m in self.tasks])
        scores.watch.append(self.watch)


@dataclass
class FinetuneRun:
    """What every composition of one run shares, and how each one runs."""

    run: LLMRun
    tokenizer: Any
    tasks: list[Prepared]
    given: list[Prompt]
    settings: FinetuneSettings
    metric: Metric
    console: Console
    progress: bool
    lora_options: dict[str, Any] | None  # None: full fine-tuning
    watch: Watch
    initial: Row  # the model as given

    def measure(self, model: Any) -> Row:
        tasks = evaluate_all(model, self.tasks, self.tokenizer, self.metric, self.settings)
        return Row(tasks, self.watch.measure(model, self.tokenizer))

    def lora_row(self, model: Any, t: int, scores: Scores) -> Row:
        """After task ``t`` under LoRA, every task scored through its own adapter. Only task ``t``'s score
        is new (the training adapter is its adapter now). An earlier task's adapter has not changed since
        its own row, and a task not trained yet, known data and the watch sets answer through the bare
        base, unchanged since the start: their scores are copied, not measured again."""
        tasks = []
        for j, task in enumerate(self.tasks):
            if j == t:
                tasks.append(measure_task(model, task, self.tokenizer, self.metric, self.settings))
            elif task.known or j > t:
                tasks.append(self.initial.tasks[j])
            else:
                own = (
                    scores.matrix[j][j],
                    scores.errors[j][j],
                    scores.losses[j][j],
                    scores.loss_errors[j][j],
                )
                tasks.append(Measure(*own, items=self.initial.tasks[j].items))
        return Row(tasks, copy.deepcopy(self.initial.watch))

    def row_text(self, row: Row) -> str:
        text = row_text(self.tasks, row.tasks)
        if row.watch:
            text += "; watch: " + row_text(self.watch.sets, [Measure(**m) for m in row.watch])
        return text

    # ---- the shared first task ------------------------------------------------------------------------

    def shared_first(self, base: Any) -> tuple[Any, Scores]:
        """The model trained on the first task (no strategies), once for every composition."""
        with self.run.shared() as checkpoints:
            resumed = checkpoints.resume([], lambda folder, _: load_to(folder, device_of(self.settings)))
            if resumed is not None:
                return resumed
            task = self.tasks[0]
            self.console.print(
                f"[bold]{safe_text(task.name)}[/]: training the shared first task ({len(task.train)} examples)"
            )
            # As in pretrain: a from-scratch model's first task may need more passes than the later ones.
            first = dataclasses.replace(
                self.settings, epochs=self.settings.first_epochs or self.settings.epochs
            )
            seconds = self.train(base, task.train, [], self.run.path / "trainer" / "shared", task, first)
            row = self.measure(base)
            self.console.print(f"  trained in {seconds:.0f}s; after it: " + self.row_text(row))
            done = Scores(train_seconds=seconds)
            row.add_to(done)
            checkpoints.commit(0, done, [], files=lambda folder: write_model(base, self.tokenizer, folder))
        return base, done

    # ---- one composition --------------------------------------------------------------------------------

    def composition(
        self, index: int, plan: Plan, supply: ModelSupply, shared: tuple[Any, Scores] | None, merge: bool
    ) -> dict[str, Any]:
        with self.run.composition(index, plan.label) as checkpoints:
            finished = checkpoints.result()
            if finished is not None:
                return finished
            strategies = [
                copy.deepcopy(s) for s in plan.strategies
            ]  # no EWC Fisher leaks between compositions
            trained, scores = self._start(strategies, supply, shared, checkpoints)
            for t in range(len(scores.matrix), len(self.tasks)):
                self._task(t, plan, trained, strategies, scores, checkpoints)
            return checkpoints.finish(self._record(plan, trained, scores, checkpoints.folder, merge))

    def _start(
        self,
        strategies: list[Strategy],
        supply: ModelSupply,
        shared: tuple[Any, Scores] | None,
        checkpoints: Checkpoints,
    ) -> tuple[Trained, Scores]:
        """The composition's model and scores: from its newest checkpoint, the shared first task, or the start."""
        root = self.run.path / "adapters" / checkpoints.folder.name

        def rebuild(folder: Path, tensors: dict[str, Any]) -> Trained:
            if self.lora_options is None:
                return Trained(supply.saved(folder))
            library, peft = with_lora(supply.fresh(), root, self.tokenizer, self.lora_options)
            load_training_adapter(peft, tensors)
            return Trained(peft, library)

        resumed = checkpoints.resume(strategies, rebuild)
        if resumed is not None:
            trained, scores = resumed
        elif shared is not None:
            trained, scores = Trained(copy.deepcopy(shared[0])), copy.deepcopy(shared[1])
            if any(s.lm_task_data for s in strategies):
                # The shared first task ran without strategies: do its after-task part (EWC's Fisher) now.
                ensure_old_importance(
                    strategies,
                    trained.model,
                    pack_examples(self.tasks[0].train, self.settings.block_size),
                    self.settings.seed,
                )
        else:
            # The model as given counts as having learned the replay= data: those rows are the start.
            scores = Scores()
            for _ in (t for t in self.tasks if t.known):
                self.initial.add_to(scores)
            trained = Trained(supply.fresh())
            if self.lora_options is not None:
                library, peft = with_lora(trained.model, root, self.tokenizer, self.lora_options)
                trained = Trained(peft, library)
        if trained.library is not None:
            keep_adapters(trained.library, [t.name for t in self.tasks[: len(scores.matrix)] if not t.known])
        return trained, scores

    def _task(
        self,
        t: int,
        plan: Plan,
        trained: Trained,
        strategies: list[Strategy],
        scores: Scores,
        checkpoints: Checkpoints,
    ) -> None:
        task, model = self.tasks[t], trained.model
        examples = self._examples(t, plan, model)
        extra = len(examples) - len(task.train)
        self.console.print(
            f"[bold]{safe_text(plan.label)}[/]: training {safe_text(task.name)} (task {t + 1} of {len(self.tasks)}): "
            f"{len(task.train)} examples" + (f" + {extra} replayed" if extra else "")
        )
        slug = checkpoints.folder.name
        seconds = self.train(
            model, examples, strategies, self.run.path / "trainer" / slug / f"task-{t}", task
        )
        scores.train_seconds += seconds
        evaluating = time.perf_counter()
        row = self.measure(model) if trained.library is None else self.lora_row(model, t, scores)
        scores.eval_seconds += time.perf_counter() - evaluating
        row.add_to(scores)
        self.console.print(f"  trained in {seconds:.0f}s; after it: " + self.row_text(row))
        if trained.library is None:
            checkpoints.commit(t, scores, strategies, files=lambda f: write_model(model, self.tokenizer, f))
            return
        score, loss = row.tasks[t].score, row.tasks[t].loss
        signature = signature_of(model, task.train)
        store_adapter(trained.library, model, task.name, len(examples), score, loss, signature)
        checkpoints.commit(t, scores, strategies, model=training_adapter(model))

    def _examples(self, t: int, plan: Plan, model: Any) -> list[Example]:
        """Task ``t``'s training examples, with what the plan replays from earlier tasks."""
        task = self.tasks[t]
        examples = list(task.train)
        if plan.replay_ratio:
            pool = [e for old in self.tasks[:t] for e in old.train]
            examples += replayed_examples(pool, len(task.train), plan.replay_ratio, self.settings.seed + t)
        if plan.self_replay_ratio:
            examples += self.own_answers(model, plan, t, plan.self_replay_ratio, "self-replay")
        if plan.distill_ratio:
            # The teacher is asked on earlier prompts only: on the new ones it would answer the old way.
            soft = self.own_answers(model, plan, t, plan.distill_ratio, "lwf on earlier prompts")
            examples = [dataclasses.replace(e, distilled=False) for e in examples]
            examples += [dataclasses.replace(e, soft=True) for e in soft]
        return examples

    def own_answers(self, model: Any, plan: Plan, t: int, ratio: float, what: str) -> list[Example]:
        """Before task ``t``: the model's answers to prompts given or kept from earlier tasks, ``ratio`` of its examples."""
        prompts = self.given + [p for old in self.tasks[:t] for p in old.prompts[: plan.keep]]
        generating = time.perf_counter()
        made = self_replay_examples(
            model,
            prompts,
            len(self.tasks[t].train),
            ratio,
            pad_id_of(self.tokenizer),
            self.settings.seed + t,
            self.settings.eval_batch_size,
        )
        self.console.print(
            f"  {what}: {len(made)} answers generated in {time.perf_counter() - generating:.1f}s"
        )
        return made

    def _record(
        self, plan: Plan, trained: Trained, scores: Scores, checkpoints: Path, merge: bool
    ) -> dict[str, Any]:
        initial = self.initial.tasks
        answered = all(m.score is not None for m in initial)
        record: dict[str, Any] = {
            "strategy": plan.label,
            "accuracy_matrix": scores.matrix,
            "loss_matrix": scores.losses,
            "initial_scores": [m.score for m in initial] if answered else None,
            "initial_loss": [m.loss for m in initial],
            "train_seconds": round(scores.train_seconds, 4),
            "eval_seconds": scores.eval_seconds,
            "accuracy_matrix_se": scores.errors,
            "loss_matrix_se": scores.loss_errors,
            "initial_scores_se": [m.score_se for m in initial] if answered else None,
            "initial_loss_se": [m.loss_se for m in initial],
            "items": [m.items for m in initial],
        }
        if self.watch.sets:
            record["watch"] = self.watch.results(self.initial.watch, scores.watch)
        if trained.library is None:
            record["model"] = str(self._final_model(trained.model, checkpoints))
            return record
        names = [t.name for t in self.tasks if not t.known]
        record["adapters"] = {"root": str(trained.library.root), "tasks": names}
        record["routed"] = self._routed(trained.library, trained.model)
        if merge:
            record["merged"] = self._merged(trained.library, names)
        return record

    def _routed(self, library: AdapterLibrary, peft: Any) -> dict[str, Any]:
        """Every task's and watch set's held-out prompts routed by where they sit among the task adapters'
        training prompts, or else to the bare base (`route_by_signature`), and scored through what each
        was sent to: the run as deployed without being told the task."""
        sets = [*self.tasks, *self.watch.sets]
        expected = [BASE if t.known else t.name for t in self.tasks] + [BASE] * len(self.watch.sets)
        pad, batch = pad_id_of(self.tokenizer), self.settings.eval_batch_size
        embedded = prompt_embeddings(peft, [p for s in sets for p in prompts_of(s.heldout)], pad, batch)
        # As the library keeps them; made again from the tasks for adapters saved by a run begun before
        # the library kept them.
        trained = [t for t in self.tasks if not t.known]
        signatures = {t.name: library.signature(t.name) or signature_of(peft, t.train) for t in trained}
        route = route_by_signature(embedded, signatures)
        initial = [*self.initial.tasks, *(Measure(**m) for m in self.initial.watch)]
        out, start = [], 0
        for task, right, as_given in zip(sets, expected, initial, strict=True):
            choices = route.choices[start : start + len(task.heldout)]
            start += len(task.heldout)
            parts = [as_given] if set(choices) == {BASE} else []  # the bare base, as measured at the start
            for adapter in dict.fromkeys(choices) if not parts else ():
                rows = [i for i, c in enumerate(choices) if c == adapter]
                with answering_through(library, peft, None if adapter == BASE else adapter):
                    part = measure_task(peft, subset(task, rows), self.tokenizer, self.metric, self.settings)
                parts.append(part)
            routed = {"name": task.name, "expected": right, "routed_to": dict(Counter(choices))}
            out.append(routed | {"right": choices.count(right) / len(choices)} | pooled(parts))
        right = sum(r["right"] * r["items"] for r in out) / max(sum(r["items"] for r in out), 1)
        return {"by": "prompts", "right": right, "sets": out}

    def _final_model(self, model: Any, checkpoints: Path) -> Path:
        """The trained model as a folder of its own: the newest checkpoint holds it as trained (nothing
        changes it after the last task's commit), so its files are linked, not written again."""
        folder = self.run.path / "models" / checkpoints.name
        latest = latest_checkpoint(checkpoints)
        if latest is None:  # a composition that trained nothing of its own (one task, shared)
            return save_model(model, self.tokenizer, folder)
        return link_model(latest, folder, CHECKPOINT_FILES)

    def _merged(self, library: AdapterLibrary, tasks: list[str]) -> dict[str, Any]:
        """The task adapters merged (``cat``: the exact mean of their updates), scored on every task and
        watch set."""
        info = library.merge(tasks, method="cat", name="merged")
        peft = library.peft_model
        measured = evaluate_all(peft, self.tasks, self.tokenizer, self.metric, self.settings)
        watch = self.watch.measure(peft, self.tokenizer)
        assert peft is not None
        peft.set_adapter(LORA_ADAPTER)
        scores, losses = [m.score for m in measured], [m.loss for m in measured]
        merged = {"adapter": info.task, "path": str(info.path), "scores": scores, "loss": losses}
        return merged | {"scores_se": [m.score_se for m in measured], "watch": watch}

    # ---- one task with the Trainer ----------------------------------------------------------------------

    def train(
        self,
        model: Any,
        examples: Sequence[Example],
        strategies: Sequence[Strategy],
        output_dir: Path,
        task: Prepared,
        settings: FinetuneSettings | None = None,
    ) -> float:
        """One task with `ContinualTrainer`; EWC measures importance on the task's own examples, packed."""
        settings = settings or self.settings
        pad = pad_id_of(self.tokenizer)
        dataset = (
            pack_examples(examples, settings.block_size) if settings.packing else examples_dataset(examples)
        )
        with offline():
            trainer = ContinualTrainer(
                model=model,
                args=training_args(settings, output_dir, self.progress),
                train_dataset=dataset,
                data_collator=PaddingCollator(pad),
                strategies=list(strategies),
                lr_schedule=settings.schedule,
                min_lr_ratio=settings.min_lr_ratio,
            )
            quiet_logs(trainer, self.progress)
            started = time.perf_counter()
            fisher = (
                pack_examples(task.train, settings.block_size)
                if any(s.lm_task_data for s in strategies)
                else None
            )
            trainer.train_task(fisher_dataset=fisher)
        return time.perf_counter() - started
