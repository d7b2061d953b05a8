"""The run folder of `lifelong pretrain` and `lifelong finetune`, on the machinery every command shares
(`lifelong.runs`): ``run.json`` first (the settings to resume with), a checkpoint after every task of
every strategy composition, ``metrics.jsonl``, a ``result.json`` per finished composition, and
``results.json`` last.

A task's checkpoint, ``checkpoints/<k>-<composition>/task-<i>/`` (only the newest is kept), holds:

- the model: a fully trained model as a Hugging Face folder in the checkpoint folder itself (it
  loads with ``from_pretrained`` or ``--model``); under LoRA, the training adapter's tensors (the base
  never changes; each task's frozen copy is in the run's adapter library);
- every strategy's ``state_dict`` (EWC's Fisher and anchors) and every RNG;
- the `Scores` so far: the score matrix, finetune's answer-loss matrix, the timings;
- the run's fingerprint: its settings and a digest of the data it trains and scores on. A checkpoint
  is only resumed by a run whose fingerprint is the same.

A from-scratch model's first task, trained once for every composition, has its checkpoint in
``checkpoints/shared/task-0``. What is not saved is what a resumed run derives again, identically,
from the same data and seed: the replayed examples, the prompts kept for self-replay, the answers
the restored model generates to them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from lifelong.core.checkpoint import (
    atomic_write_json,
    flatten_state,
    latest_checkpoint,
    load_checkpoint,
    restoring,
    unflatten_state,
)
from lifelong.core.settings import check_types
from lifelong.core.state import load_strategies, restore_rng, rng_state, seed_all, strategies_state
from lifelong.errors import LifelongError
from lifelong.llm.training import drop_if_empty
from lifelong.report import write_report
from lifelong.report.text import labelled, visible
from lifelong.runs.callbacks import TaskLog, commit_task
from lifelong.runs.folder import CHECKPOINTS, RESULTS_FILE, RUN_FILE, RunFolder
from lifelong.strategies import Strategy

if TYPE_CHECKING:
    from rich.console import Console

# Files each command writes besides the common ones: only these (and those) are ever deleted.
OWN_FILES = {"pretrain": ("trainer",), "finetune": ("trainer", "models", "adapters")}
RESULT_FILE = "result.json"
Rebuild = Callable[[Path, dict[str, torch.Tensor]], Any]


@dataclass
class Scores:
    """What a composition measured so far; a checkpoint keeps it and a resumed run continues it."""

    matrix: list[list[Any]] = field(default_factory=list)  # row i: every task's score after task i
    losses: list[list[float]] = field(default_factory=list)  # finetune: answer loss, the same shape
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
    errors: list[list[Any]] = field(default_factory=list)  # the standard error of each score in matrix
    loss_errors: list[list[float]] = field(default_factory=list)  # and of each loss
    watch: list[list[dict[str, Any]]] = field(default_factory=list)  # row i: each watch set, measured


def saved_settings(run_dir: Path, command: str) -> dict[str, Any]:
    """The settings in ``run_dir``'s run.json of an unfinished ``command`` run (read only: no lock)."""
    settings: dict[str, Any] = RunFolder.resume(run_dir, command, main=False).saved["settings"]
    return settings


def open_folder(
    command: str, out: Path, settings: dict[str, Any], *, overwrite: bool = False, resume: bool = False
) -> RunFolder:
    """The run folder of a new ``command`` run with ``settings``, or of the unfinished one to resume."""
    if settings.get("tensorboard") and importlib.util.find_spec("tensorboard") is None:
        raise LifelongError(
            "--tensorboard needs the tensorboard package; pip install 'lifelong[tensorboard]'"
        )
    if resume:
        return RunFolder.resume(out, command)
    return RunFolder.create(out, command, settings, overwrite=overwrite, own=OWN_FILES[command])


def damaged(run_dir: Path, why: str = "") -> LifelongError:
    detail = f" ({why})" if why else ""
    return LifelongError(
        f"{run_dir / RUN_FILE} is damaged{detail}; start a new run instead of resuming this one"
    )


def check_saved(run_dir: Path, settings: Any, strategies: Any) -> None:
    """Values of the wrong kind in a hand-edited run.json make it damaged: one line now, rather than a
    TypeError deep in the resumed run."""
    try:
        check_types(settings)
    except LifelongError as err:
        raise damaged(run_dir, str(err)) from None
    if not (isinstance(strategies, list) and all(isinstance(s, str) for s in strategies)):
        raise damaged(run_dir)


def given_again(saved: Sequence[Any], given: Sequence[Any] | None, what: str) -> list[Any]:
    """The sources of a resumed run: those run.json names, or ``given`` again where it could not name
    them (objects given in memory, saved as null); the data digest then checks they are the same."""
    if given is not None:
        if len(given) != len(saved):
            raise LifelongError(f"the run had {len(saved)} {what}; {len(given)} were given to resume it")
        return list(given)
    if any(source is None for source in saved):
        raise LifelongError(
            f"the run was given {what} as objects, which its run.json cannot name; pass the same again as {what}=..."
        )
    return list(saved)


def data_digest(*items: Any) -> str:
    """A SHA-256 of what a run trains and scores on: tensors, dataclasses, lists and JSON values."""
    digest = hashlib.sha256()

    def feed(value: Any) -> None:
        if isinstance(value, torch.Tensor):
            digest.update(f"{value.dtype}{tuple(value.shape)}".encode())
            digest.update(value.detach().cpu().contiguous().numpy().tobytes())
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            for item in dataclasses.fields(value):
                feed(getattr(value, item.name))
        elif isinstance(value, list | tuple) and not all(isinstance(v, str | int | float) for v in value):
            digest.update(f"[{len(value)}".encode())
            for item in value:
                feed(item)
        else:  # JSON values, and lists of them, in one piece (a list of token ids is one update)
            digest.update(json.dumps(value, sort_keys=True).encode() + b";")

    for item in items:
        feed(item)
    return digest.hexdigest()


class LLMRun:
    """One run folder of an LLM command: its fingerprint, its compositions' checkpoints, its results.

    ``digest`` is the `data_digest` of the run's data; ``scored_by_loss`` logs the loss matrix as the
    scores (plain-text tasks have no answers to match); ``average`` is the TensorBoard tag of the mean;
    ``watch_names`` name the watch sets whose scores are logged beside the tasks'.
    Every composition starts with the RNGs seeded with ``seed``, as it starts from the same model: what
    it draws before its first task (a LoRA adapter's initial weights) does not depend on which
    compositions ran before it in this process (a resumed run skips the finished ones).
    """

    def __init__(
        self,
        folder: RunFolder,
        digest: str,
        task_names: Sequence[str],
        *,
        seed: int = 0,
        tensorboard: bool = False,
        average: str = "average_score",
        scored_by_loss: bool = False,
        watch_names: Sequence[str] = (),
    ) -> None:
        self.folder, self.task_names, self.seed = folder, list(task_names), seed
        self.watch_names = list(watch_names)
        self.tensorboard, self.average, self.scored_by_loss = tensorboard, average, scored_by_loss
        settings = json.dumps(folder.saved["settings"], sort_keys=True)
        self.fingerprint = hashlib.sha256(f"{settings}\n{digest}".encode()).hexdigest()

    @property
    def path(self) -> Path:
        return self.folder.path

    def composition(self, index: int, label: str) -> Checkpoints:
        """The ``index``-th composition's checkpoints; ``with`` closes its TensorBoard writer."""
        return Checkpoints(self, self.folder.strategy_dir(index, label), label)

    def shared(self) -> Checkpoints:
        """The checkpoint of the first task a from-scratch model trains once for every composition."""
        return Checkpoints(self, self.path / CHECKPOINTS / "shared", "shared")


class Checkpoints:
    """One composition's checkpoints, ``metrics.jsonl`` lines and ``result.json``."""

    def __init__(self, run: LLMRun, folder: Path, label: str) -> None:
        self.run, self.folder, self.label = run, folder, label
        self.log: TaskLog | None = None

    def result(self) -> dict[str, Any] | None:
        """The record of this composition if it finished in an earlier attempt of the run."""
        path = self.folder / RESULT_FILE
        if not path.is_file():
            return None
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(saved, dict) or not isinstance(saved["result"], dict):
                raise ValueError("not a result")
        except (OSError, ValueError, UnicodeDecodeError, KeyError):
            raise LifelongError(f"{path} is damaged; delete it to run that composition again") from None
        if saved.get("fingerprint") != self.run.fingerprint:
            raise self._foreign(path)
        record: dict[str, Any] = saved["result"]
        return record

    def resume(self, strategies: Sequence[Strategy], rebuild: Rebuild) -> tuple[Any, Scores] | None:
        """The model, strategies and RNGs as the newest checkpoint left them, and its scores; None if none.

        ``rebuild(folder, tensors)`` makes the model from the checkpoint's folder (a Hugging Face
        model saved there) or its model tensors. The RNGs are restored last, after anything the
        rebuild drew from them (a new LoRA adapter's initial weights)."""
        latest = latest_checkpoint(self.folder)
        if latest is None:
            return None
        tensors, state = load_checkpoint(latest)
        if state.get("fingerprint") != self.run.fingerprint:
            raise self._foreign(latest)
        with restoring(latest):
            model = rebuild(latest, unflatten_state(state["model"], tensors))
            load_strategies(strategies, state, tensors)
            restore_rng(state, tensors)
            return model, Scores(**state["scores"])

    def commit(
        self,
        task: int,
        scores: Scores,
        strategies: Sequence[Strategy],
        model: Mapping[str, torch.Tensor] | None = None,
        files: Callable[[Path], None] | None = None,
    ) -> None:
        """Log task ``task``'s row, then checkpoint it: ``model`` tensors and/or the ``files`` writer's."""
        tensors: dict[str, torch.Tensor] = {}
        state = {
            "fingerprint": self.run.fingerprint,
            "task": task,
            "scores": dataclasses.asdict(scores),
            "model": flatten_state(dict(model or {}), "model", tensors),
            **strategies_state(strategies, tensors),
            **rng_state(tensors),
        }
        if self.log is None:
            self.log = TaskLog(
                self.run.folder,
                self.label,
                self.folder.name,
                tensorboard=self.run.tensorboard,
                average=self.run.average,
            )
        watch = None
        if self.run.watch_names and scores.watch:  # a plain-text set's score is its loss
            row = scores.watch[-1]
            watch = {
                n: m["loss"] if m["score"] is None else m["score"]
                for n, m in zip(self.run.watch_names, row, strict=True)
            }
        self.log.task_done(
            self.run.task_names, scores.losses if self.run.scored_by_loss else scores.matrix, watch
        )
        commit_task(self.folder, task, tensors, state, files)

    def finish(self, record: dict[str, Any]) -> dict[str, Any]:
        atomic_write_json(self.folder / RESULT_FILE, {"fingerprint": self.run.fingerprint, "result": record})
        return record

    def close(self) -> None:
        if self.log is not None:
            self.log.close()
            self.log = None

    def __enter__(self) -> Checkpoints:
        seed_all(self.run.seed)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _foreign(self, path: Path) -> LifelongError:
        return LifelongError(
            f"{path} was written with other settings or data than this run's {RUN_FILE}; "
            "resume with the original settings and data, or start a new run"
        )


def publish(
    run_dir: Path,
    document: dict[str, Any],
    console: Console,
    print_results: Callable[[Console, dict[str, Any]], None],
) -> dict[str, Any]:
    """After ``results.json`` is written: tidy the folder, write the report, print the tables."""
    drop_if_empty(run_dir / "trainer")
    try:
        write_report(run_dir, document)
    except LifelongError as err:  # the results are written; a report problem must not hide them
        console.print(labelled("report not written:", "yellow", err), highlight=False)
    print_results(console, document)
    console.print(f"results written to {visible(run_dir / RESULTS_FILE)}", markup=False)
    return document
