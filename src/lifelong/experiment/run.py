"""One whole experiment: build the stream, train each strategy on it from the same start, score it.

`lifelong run` is a thin shell around `run_experiment`; Python users can call it with a `RunConfig`.

A run folder holds ``run.json`` (the config, written first), ``checkpoints/<k>-<strategy>/task-<i>/``
(the state after each task, so ``--resume`` continues after the last complete one), ``metrics.jsonl``
(one line per evaluation) and, once every strategy has finished, ``results.json``.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import shutil
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from lifelong.core import metrics
from lifelong.core.checkpoint import atomic_write_json, latest_checkpoint, load_checkpoint, save_checkpoint
from lifelong.core.distributed import Processes
from lifelong.core.learner import FitResult, Learner
from lifelong.core.stream import Stream
from lifelong.data import build_benchmark
from lifelong.errors import LifelongError
from lifelong.experiment.settings import RunConfig, make_config
from lifelong.models import build_model
from lifelong.report import print_results, versions, write_report, write_results
from lifelong.strategies import REGISTRY, build_strategies

RUN_FILE, RESULTS_FILE, METRICS_LOG = "run.json", "results.json", "metrics.jsonl"
OWNED = (
    RUN_FILE,
    RESULTS_FILE,
    METRICS_LOG,
    "checkpoints",
    "report.md",
    "report.html",
    "plots",
    "tensorboard",
)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def default_strategies() -> list[str]:
    return [name for name, cls in REGISTRY.items() if cls.in_default_run]


def build_stream(config: RunConfig) -> Stream:
    if config.data:
        from lifelong.data.files import load_user_stream

        return load_user_stream(
            Path(config.data),
            label_column=config.label_column,
            task_column=config.task_column,
            classes_per_task=config.classes_per_task,
            scenario=config.scenario,  # type: ignore[arg-type]
            test_size=config.test_size,
            seed=config.seed,
        )
    return build_benchmark(config.benchmark, seed=config.seed, scenario=config.scenario)


def config_fingerprint(config: RunConfig, compositions: list[str]) -> str:
    """What a checkpoint must agree with to be resumed: every setting that changes the numbers."""
    settings = {k: v for k, v in config.to_json().items() if k not in ("out", "overwrite")}
    settings["strategies"] = compositions
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def strategy_dir(run_dir: Path, index: int, composition: str) -> Path:
    return run_dir / "checkpoints" / f"{index}-{re.sub(r'[^A-Za-z0-9_.=+-]+', '_', composition)[:80]}"


def prepare_run_dir(config: RunConfig) -> Path:
    """The run folder; one that holds a run (finished or not) is only reused with ``overwrite``."""
    if config.out:
        run_dir = Path(config.out)
    else:
        run_dir = Path("runs") / f"{config.stream_name}-{datetime.now():%Y%m%d-%H%M%S}"
    if run_dir.exists() and not run_dir.is_dir():
        raise LifelongError(f"--out {run_dir} is a file, not a folder; choose another path")
    if not config.overwrite:
        if (run_dir / RESULTS_FILE).exists():
            raise LifelongError(
                f"{run_dir} already holds a finished run; pass --overwrite or choose another --out"
            )
        if (run_dir / RUN_FILE).exists():
            raise LifelongError(
                f"{run_dir} holds an unfinished run; continue it with --resume {run_dir}, or pass --overwrite"
            )
    return run_dir


def run_strategy(
    config: RunConfig,
    stream: Stream,
    composition: str,
    progress: Progress | None = None,
    folder: Path | None = None,
    fingerprint: str = "",
    processes: Processes | None = None,
) -> dict[str, Any]:
    """Train a fresh model (same seed, same initial weights) with one strategy composition.

    With ``folder`` the state is checkpointed after every task, and a run found there is resumed.
    In a multi-process run every process trains; only the main one writes.
    """
    processes = processes or Processes(config.device, config.precision)
    if folder is not None and (folder / "result.json").is_file():
        finished: dict[str, Any] = json.loads((folder / "result.json").read_text(encoding="utf-8"))
        return finished
    strategies = build_strategies(composition)
    seed_everything(config.seed)
    model = build_model(config.model or stream.default_model, stream.input_shape, stream.num_classes)
    learner = Learner(
        model,
        strategies,
        epochs=config.epochs,
        batch_size=config.batch_size,
        lr=config.lr,
        optimizer=config.optimizer,  # type: ignore[arg-type]
        device=config.device,
        seed=config.seed,
        progress=progress,
        processes=processes,
    )
    start, result = 0, None
    # The main process's checkpoint is the commit point: it is written once every other process's
    # own part (its replay buffer share, its generators) is on disk, so its presence means all are.
    checkpoint = latest_checkpoint(folder) if folder is not None else None
    if checkpoint is not None:
        own = checkpoint if processes.is_main else _rank_part(checkpoint, processes.rank)
        tensors, state = load_checkpoint(own)
        if state.get("fingerprint") != fingerprint:
            raise LifelongError(
                f"checkpoint {checkpoint} was written with a different config than this run's {RUN_FILE}; "
                "resume with the original settings or start a new run"
            )
        if state.get("processes", 1) != processes.world:
            raise LifelongError(
                f"checkpoint {checkpoint} was written by {state.get('processes', 1)} processes, this run has "
                f"{processes.world}; resume with --processes {state.get('processes', 1)}"
            )
        learner.restore_state(tensors, state["learner"], stream)
        result = FitResult(**state["result"])
        start = len(result.matrix)

    writer = (
        tensorboard_writer(folder.parent.parent / "tensorboard" / folder.name)
        if folder and config.tensorboard and processes.is_main
        else None
    )

    def on_task_end(learner: Learner, fit: FitResult) -> None:
        if folder is None:
            return
        done = len(fit.matrix)
        tensors, tree = learner.checkpoint_state()
        state = {
            "fingerprint": fingerprint,
            "learner": tree,
            "result": vars(fit),
            "processes": processes.world,
        }
        if not processes.is_main:
            save_checkpoint(_rank_part(folder / f"task-{done - 1}", processes.rank), tensors, state)
            processes.wait()  # the main process commits this task only once every part is written
            processes.wait()  # then each process drops its parts of older tasks
            _keep_only(folder / f"rank-{processes.rank}", f"task-{done - 1}")
            return
        processes.wait()
        with (folder.parent.parent / METRICS_LOG).open("a", encoding="utf-8") as log:
            log.write(
                json.dumps({"strategy": composition, "after_task": done - 1, "scores": fit.matrix[-1]}) + "\n"
            )
        if writer is not None:  # the same numbers as metrics.jsonl, one scalar per task
            for name, score in zip(fit.task_names, fit.matrix[-1], strict=True):
                writer.add_scalar(f"score/{name}", score, global_step=done - 1)
            seen = fit.matrix[-1][:done]
            writer.add_scalar("average_accuracy", sum(seen) / len(seen), global_step=done - 1)
            writer.flush()
        save_checkpoint(folder / f"task-{done - 1}", tensors, state)
        _keep_only(folder, f"task-{done - 1}")  # keep only the newest complete checkpoint
        processes.wait()

    try:
        fit = learner.fit(stream, start_task=start, result=result, on_task_end=on_task_end)
    finally:
        if writer is not None:
            writer.close()
    record = {
        "strategy": composition,
        "accuracy_matrix": fit.matrix,
        "metrics": metrics.summarize(fit.matrix, fit.task_names, initial_scores=fit.initial_scores),
        "initial_scores": fit.initial_scores,
        "train_seconds": round(fit.train_seconds, 4),
        "eval_seconds": round(fit.eval_seconds, 4),
    }
    if folder is not None and processes.is_main:
        atomic_write_json(folder / "result.json", record)
    return record


def _rank_part(checkpoint: Path, rank: int) -> Path:
    """Where process ``rank`` (not the main one) keeps its own part of a checkpoint."""
    return checkpoint.parent / f"rank-{rank}" / checkpoint.name


def _keep_only(folder: Path, newest: str) -> None:
    for older in folder.glob("task-*"):
        if older.name != newest:
            shutil.rmtree(older, ignore_errors=True)


def tensorboard_writer(log_dir: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise LifelongError(
            "--tensorboard needs the tensorboard package; pip install 'lifelong[tensorboard]'"
        ) from None
    return SummaryWriter(log_dir=str(log_dir))


def load_run(run_dir: Path) -> tuple[RunConfig, list[str]]:
    """The config and strategies of an unfinished run, for ``--resume``."""
    path = run_dir / RUN_FILE
    if (run_dir / RESULTS_FILE).exists():
        raise LifelongError(f"{run_dir} holds a finished run; there is nothing to resume")
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        config = make_config(saved["config"], {})
        compositions = [str(c) for c in saved["strategies"]]
    except FileNotFoundError:
        raise LifelongError(
            f"{run_dir} has no {RUN_FILE}; --resume takes the folder of a run started earlier"
        ) from None
    except (ValueError, KeyError, TypeError, LifelongError):
        raise LifelongError(f"{path} is damaged; start a new run instead of resuming this one") from None
    return config, compositions


def run_experiment(
    config: RunConfig | None = None,
    console: Console | None = None,
    show_progress: bool = True,
    resume: Path | None = None,
) -> dict[str, Any]:
    """Run every strategy of the config on its stream; write and return the results document.

    ``resume`` continues the unfinished run in that folder, after its last complete task.
    """
    console = console or Console()
    if resume is not None:
        config, compositions = load_run(resume)
        run_dir = resume
        processes = Processes(config.device, config.precision)
    else:
        if config is None:
            raise LifelongError("run_experiment needs a config or a run folder to resume")
        config.validate()
        compositions = config.strategies or default_strategies()
        for composition in compositions:  # fail on a bad name before any training starts
            build_strategies(composition)
        run_dir = prepare_run_dir(config)
        processes = Processes(config.device, config.precision)
        processes.wait()  # every process has checked the folder before the main one writes to it
    if not processes.is_main:
        console, show_progress = Console(quiet=True), False
    stream = build_stream(config)
    fingerprint = config_fingerprint(config, compositions)
    created = not run_dir.exists()
    if resume is None and processes.is_main:
        for name in OWNED:  # --overwrite: the old run's files must not mix with the new one's
            target = run_dir / name
            shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
        atomic_write_json(run_dir / RUN_FILE, {"config": config.to_json(), "strategies": compositions})
    processes.wait()  # no process may read the folder (a finished strategy of an overwritten run) before that
    started = time.perf_counter()
    results = []
    try:
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=True,
            disable=not show_progress,
        ) as progress:
            overall = progress.add_task("strategies", total=len(compositions))
            for index, composition in enumerate(compositions):
                progress.update(overall, description=f"strategy {composition}")
                folder = strategy_dir(run_dir, index, composition)
                results.append(
                    run_strategy(config, stream, composition, progress, folder, fingerprint, processes)
                )
                progress.advance(overall)
        document = {
            "benchmark": stream.name,
            "scenario": stream.scenario,
            "tasks": [task.name for task in stream],
            "config": {**config.to_json(), "strategies": compositions, "out": str(run_dir)},
            "processes": processes.world,
            "versions": versions(),
            "wall_seconds": round(time.perf_counter() - started, 3),
            "results": results,
        }
        if not processes.is_main:
            return document
        write_results(run_dir, document)
    except BaseException as err:
        if not processes.is_main:
            raise
        if created and not any((run_dir / "checkpoints").glob("*/task-*")):
            shutil.rmtree(run_dir, ignore_errors=True)  # nothing finished: leave nothing behind
        elif isinstance(err, LifelongError):
            raise LifelongError(
                f"{err}; the last complete task is kept: continue with --resume {run_dir}"
            ) from None
        raise
    print_results(console, document, [task.name for task in stream])
    console.print(f"results written to {run_dir / RESULTS_FILE}")
    try:
        _, html = write_report(run_dir, document)
        console.print(f"report written to {html}")
    except Exception as err:  # the results are safe on disk; a plotting problem must not lose the run
        console.print(
            f"[yellow]warning:[/] the report could not be written ({err}); retry with lifelong report {run_dir}"
        )
    return document
