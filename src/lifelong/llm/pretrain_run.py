"""One `lifelong pretrain` run over its domains (`lifelong.llm.pretrain`): the shared first task, then
each composition, task after task, each task checkpointed."""

from __future__ import annotations

import copy
import dataclasses
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from lifelong.core.checkpoint import atomic_write_json
from lifelong.core.metrics import summarize
from lifelong.llm.data import PackedCorpus
from lifelong.llm.domains import Composition
from lifelong.llm.models import ModelSupply, load_to, write_model
from lifelong.llm.perplexity import perplexity_and_se
from lifelong.llm.pretrain_task import PERPLEXITY_FILE, pretrain_document, train_task
from lifelong.llm.runs import Checkpoints, LLMRun, Scores
from lifelong.llm.training import TrainSettings, device_of, ensure_old_importance
from lifelong.llm.watchsets import Watch, add_uncertainty
from lifelong.report.text import safe_text

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


class PretrainRun:
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
