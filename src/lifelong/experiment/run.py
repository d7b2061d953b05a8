"""One whole experiment: build the stream, train each strategy on it from the same start, score it.

`lifelong run` is a thin shell around `run_experiment`; Python users can call it with a `RunConfig`.

The run folder (``run.json`` first, a checkpoint after every task, ``metrics.jsonl``, ``results.json``
last) is `lifelong.runs.folder.RunFolder`, the same for every command that trains.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

from lifelong.core import metrics
from lifelong.core.checkpoint import (
    json_digest,
    latest_checkpoint,
    load_checkpoint,
    read_checked_json,
    restoring,
    save_checkpoint,
    write_checked_json,
)
from lifelong.core.distributed import Processes
from lifelong.core.learner import FitResult, Learner
from lifelong.core.stream import Stream
from lifelong.data import build_benchmark
from lifelong.data.vision import random_crop_flip
from lifelong.errors import LifelongError
from lifelong.experiment.settings import RunConfig, make_config
from lifelong.models import build_model
from lifelong.report import print_results, write_report
from lifelong.report.text import DescriptionColumn, safe_text, terminal
from lifelong.report.write import write_markdown_report
from lifelong.runs.callbacks import TaskLog, commit_task
from lifelong.runs.folder import RESULTS_FILE, RUN_FILE, RunFolder, default_out, keep_only
from lifelong.runs.results import results_document, write_results
from lifelong.strategies import REGISTRY, build_strategies

COMMAND = "run"
REPORTS = ("none", "md", "html")  # what `lifelong run --report` may write, lightest first
RESULT_FILE = "result.json"  # a finished strategy's record, in its checkpoint folder


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def default_strategies() -> list[str]:
    return [name for name, cls in REGISTRY.items() if cls.in_default_run]


def build_stream(config: RunConfig, progress: Progress | None = None) -> Stream:
    """The stream ``config`` names: its --data (a table, image folders, a Hugging Face dataset) or a
    built-in benchmark."""
    if config.data:
        # Imported here: a built-in stream never needs pandas (0.3 s of every run's start).
        from lifelong.data.files import load_user_stream
        from lifelong.data.hf_datasets import HF_PREFIX, is_saved_dataset, load_hf_stream
        from lifelong.data.image_folders import is_image_folder, load_image_folders

        path = Path(config.data)
        split: dict[str, Any] = {
            "scenario": config.scenario,
            "test_size": config.test_size,
            "seed": config.seed,
        }
        tasks: dict[str, Any] = {"classes_per_task": config.classes_per_task}
        columns: dict[str, Any] = {"label_column": config.label_column, "task_column": config.task_column}
        if config.data.startswith(HF_PREFIX) or is_saved_dataset(path):
            text, size = config.text_column, config.image_size
            return load_hf_stream(config.data, text_column=text, image_size=size, **columns, **tasks, **split)
        if is_image_folder(path):
            return load_image_folders(path, image_size=config.image_size, progress=progress, **tasks, **split)
        if config.image_size is not None:
            raise LifelongError(
                f"--image-size resizes the images of class folders or of a Hugging Face image dataset, "
                f"and '{path}' is neither; drop it"
            )
        return load_user_stream(path, **columns, **tasks, **split)
    files = {"data_root": config.data_root, "download": config.download}
    return build_benchmark(config.benchmark, seed=config.seed, scenario=config.scenario, files=files)


# Settings that came after runs were first checkpointed: at their defaults they are left out of the
# fingerprint, so a run started before they existed still resumes.
LATER_SETTINGS = {
    "data_root": None,
    "download": False,
    "augment": False,
    "image_size": None,
    "text_column": None,
}


def config_fingerprint(config: RunConfig, compositions: list[str]) -> str:
    """What a checkpoint must agree with to be resumed: every setting that changes the numbers."""
    settings = {
        k: v
        for k, v in config.to_json().items()
        if k not in ("out", "overwrite") and not (k in LATER_SETTINGS and LATER_SETTINGS[k] == v)
    }
    settings["strategies"] = compositions
    return json_digest(settings)


def run_strategy(
    config: RunConfig,
    stream: Stream,
    composition: str,
    progress: Progress | None = None,
    folder: RunFolder | None = None,
    index: int = 0,
    processes: Processes | None = None,
    fingerprint: str = "",
) -> dict[str, Any]:
    """Train a fresh model (same seed, same initial weights) with one strategy composition.

    With ``folder`` the state is checkpointed after every task, and a run found there is resumed.
    In a multi-process run every process trains; only the main one writes.
    """
    processes = processes or Processes(config.device, config.precision)
    strategy_dir = folder.strategy_dir(index, composition) if folder is not None else None
    finished = _finished(strategy_dir, fingerprint) if strategy_dir is not None else None
    if finished is not None:
        return finished
    strategies = build_strategies(composition)
    seed_everything(config.seed)
    model = build_model(
        config.model or stream.default_model,
        stream.input_shape,
        stream.num_classes,
        normalize=stream.normalize,
    )
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
        augment=random_crop_flip if config.augment else None,
    )
    result = _restore(learner, stream, strategy_dir, fingerprint, processes) if strategy_dir else None
    log = (
        TaskLog(folder, composition, strategy_dir.name, tensorboard=config.tensorboard)
        if folder is not None and strategy_dir is not None and processes.is_main
        else None
    )

    def on_task_end(learner: Learner, fit: FitResult) -> None:
        if strategy_dir is not None:
            _checkpoint(learner, fit, strategy_dir, fingerprint, processes, log)

    try:
        fit = learner.fit(
            stream, start_task=len(result.matrix) if result else 0, result=result, on_task_end=on_task_end
        )
    finally:
        if log is not None:
            log.close()
    record = {
        "strategy": composition,
        "accuracy_matrix": fit.matrix,
        "metrics": metrics.summarize(fit.matrix, fit.task_names, initial_scores=fit.initial_scores),
        "initial_scores": fit.initial_scores,
        "train_seconds": round(fit.train_seconds, 4),
        "eval_seconds": round(fit.eval_seconds, 4),
    }
    if strategy_dir is not None and processes.is_main:
        write_checked_json(strategy_dir / RESULT_FILE, {"fingerprint": fingerprint, "result": record})
    return record


def _finished(strategy_dir: Path, fingerprint: str) -> dict[str, Any] | None:
    """The record a strategy left when it finished in an earlier, interrupted run of the same config."""
    path = strategy_dir / RESULT_FILE
    if not path.exists():
        return None
    saved = read_checked_json(path)
    if saved is None or not isinstance(saved.get("result"), dict):
        raise LifelongError(
            f"{path} is damaged or was changed (its checksum does not match); delete it to score this "
            "strategy again from its last checkpoint"
        )
    if saved.get("fingerprint") != fingerprint:
        raise LifelongError(
            f"{path} was written with a different config than this run's {RUN_FILE}; "
            "resume with the original settings or start a new run"
        )
    result: dict[str, Any] = saved["result"]
    return result


def _restore(
    learner: Learner, stream: Stream, strategy_dir: Path, fingerprint: str, processes: Processes
) -> FitResult | None:
    """The state of the last complete task in ``strategy_dir``, loaded into ``learner``; None if none.

    The main process's checkpoint is the commit point: it is written once every other process's own
    part (its replay buffer share, its generators) is on disk, so its presence means all are.
    """
    checkpoint = latest_checkpoint(strategy_dir)
    if checkpoint is None:
        return None
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
    with restoring(own):
        learner.restore_state(tensors, state["learner"], stream)
        return FitResult(**state["result"])


def _checkpoint(
    learner: Learner,
    fit: FitResult,
    strategy_dir: Path,
    fingerprint: str,
    processes: Processes,
    log: TaskLog | None,
) -> None:
    """After a task: every process saves its state; the main one logs the scores and commits the task."""
    done = len(fit.matrix)
    tensors, tree = learner.checkpoint_state()
    state = {"fingerprint": fingerprint, "learner": tree, "result": vars(fit), "processes": processes.world}
    if not processes.is_main:
        save_checkpoint(_rank_part(strategy_dir / f"task-{done - 1}", processes.rank), tensors, state)
        processes.wait()  # the main process commits this task only once every part is written
        processes.wait()  # then each process drops its parts of older tasks
        keep_only(strategy_dir / f"rank-{processes.rank}", f"task-{done - 1}")
        return
    processes.wait()
    if log is not None:
        log.task_done(fit.task_names, fit.matrix)
    commit_task(strategy_dir, done - 1, tensors, state)
    processes.wait()


def _rank_part(checkpoint: Path, rank: int) -> Path:
    """Where process ``rank`` (not the main one) keeps its own part of a checkpoint."""
    return checkpoint.parent / f"rank-{rank}" / checkpoint.name


def load_run(run_dir: Path) -> tuple[RunConfig, list[str]]:
    """The config and strategies of an unfinished run, for ``--resume`` (read only: no lock taken)."""
    return _settings(RunFolder.resume(run_dir, COMMAND, main=False))


def _settings(folder: RunFolder) -> tuple[RunConfig, list[str]]:
    saved = folder.saved["settings"]
    try:
        return make_config(saved["config"], {}), [str(c) for c in saved["strategies"]]
    except (ValueError, KeyError, TypeError, LifelongError):
        raise LifelongError(
            f"{folder.path / RUN_FILE} is damaged; start a new run instead of resuming this one"
        ) from None


def _open(
    config: RunConfig | None, resume: Path | None, processes_for: Callable[[RunConfig], Processes]
) -> tuple[RunFolder, RunConfig, list[str], Processes]:
    """The run folder of a new run of ``config``, or of the unfinished one in ``resume``."""
    if resume is not None:
        probe = RunFolder.resume(resume, COMMAND, main=False)
        config, compositions = _settings(probe)
        processes = processes_for(config)
        folder = RunFolder.resume(resume, COMMAND, main=processes.is_main)
        return folder, config, compositions, processes
    if config is None:
        raise LifelongError("run_experiment needs a config or a run folder to resume")
    config.validate()
    compositions = config.strategies or default_strategies()
    for composition in compositions:  # fail on a bad name before any training starts
        build_strategies(composition)
    processes = processes_for(config)
    out = Path(config.out) if config.out else default_out(config.stream_name)
    settings = {"config": config.to_json(), "strategies": compositions}
    folder = RunFolder.create(
        out,
        COMMAND,
        settings,
        overwrite=config.overwrite,
        main=processes.is_main,
        barrier=processes.wait,  # every process has checked the folder before the main one writes to it
    )
    return folder, config, compositions, processes


def _open_stream(
    config: RunConfig, folder: RunFolder, processes: Processes, progress: Progress | None = None
) -> Stream:
    """The run's stream, its cut recorded in run.json (a resumed run's must be the same)."""
    if config.download and processes.world > 1:  # one process downloads; the others then read
        stream: Stream | None = None
        failure: Exception | None = None
        if processes.is_main:
            try:
                stream = build_stream(config, progress)
            except Exception as err:  # raised after the barrier: the others must not wait for ever
                failure = err
        processes.wait()
        if failure is not None:
            raise failure
        stream = stream or build_stream(dataclasses.replace(config, download=False))
    else:
        stream = build_stream(config, progress)
    if config.augment and not stream.augmentable:
        raise LifelongError(
            f"--augment crops and flips natural images, and {stream.name}'s inputs would not keep their "
            "labels under it (or are not images); drop --augment"
        )
    recorded = folder.saved.get("stream")
    now = json.loads(json.dumps(stream.details))
    if recorded is not None and recorded != now:
        differ = sorted(k for k in {*recorded, *now} if recorded.get(k) != now.get(k))
        raise LifelongError(
            f"the stream is not cut as when {folder.path} started ({', '.join(differ)} differ: its files "
            "or folders changed, or lifelong cuts it another way now); restore them, or start a new run"
        )
    if processes.is_main and stream.details and recorded is None:
        folder.describe("stream", stream.details)
    return stream


def run_experiment(
    config: RunConfig | None = None,
    console: Console | None = None,
    show_progress: bool = True,
    resume: Path | None = None,
    report: str = "html",
) -> dict[str, Any]:
    """Run every strategy of the config on its stream; write and return the results document.

    ``resume`` continues the unfinished run in that folder, after its last complete task. ``report``:
    ``html`` writes report.md and report.html with their plots, ``md`` report.md and its plots only,
    ``none`` no report (``lifelong report RUN`` draws it later, from results.json).
    """
    if report not in REPORTS:
        raise LifelongError(f"unknown --report '{safe_text(report)}'; choose one of: {', '.join(REPORTS)}")
    console = console or terminal()
    folder, config, compositions, processes = _open(
        config, resume, lambda c: Processes(c.device, c.precision)
    )
    if not processes.is_main:
        console, show_progress = terminal(quiet=True), False
    started = time.perf_counter()
    # Only the main process holds the folder: it alone releases it, or abandons it after a failure.
    with folder.running() if processes.is_main else contextlib.nullcontext():
        with _progress(console, show_progress) as progress:
            stream = _open_stream(config, folder, processes, progress)
            fingerprint = config_fingerprint(config, compositions)
            overall = progress.add_task("strategies", total=len(compositions))
            results = []
            for index, composition in enumerate(compositions):
                progress.update(overall, description=f"strategy {composition}")
                results.append(
                    run_strategy(config, stream, composition, progress, folder, index, processes, fingerprint)
                )
                progress.advance(overall)
        document = results_document(
            benchmark=stream.name,
            scenario=stream.scenario,
            tasks=[task.name for task in stream],
            config={**config.to_json(), "strategies": compositions, "out": str(folder.path)},
            processes=processes.world,
            wall_seconds=time.perf_counter() - started,
            results=results,
        )
        if not processes.is_main:
            return document
        write_results(folder.path, document)
    _publish(console, folder.path, document, [task.name for task in stream], report)
    return document


def _progress(console: Console, show: bool) -> Progress:
    return Progress(
        DescriptionColumn(),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=not show,
    )


def _publish(
    console: Console, run_dir: Path, document: dict[str, Any], task_names: list[str], report: str
) -> None:
    """Print the tables and write the report once the results are safe on disk."""
    print_results(console, document, task_names)
    console.print(f"results written to {safe_text(run_dir / RESULTS_FILE)}")
    if report == "none":
        console.print(f"no report drawn; draw it with lifelong report {safe_text(run_dir)}")
        return
    try:
        written = (
            write_report(run_dir, document)[1]
            if report == "html"
            else write_markdown_report(run_dir, document)
        )
        console.print(f"report written to {safe_text(written)}")
    except Exception as err:  # the results are safe on disk; a plotting problem must not lose the run
        console.print(
            f"[yellow]warning:[/] the report could not be written ({safe_text(err)}); "
            f"retry with lifelong report {safe_text(run_dir)}"
        )
