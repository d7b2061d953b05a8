"""One whole experiment: build the stream, train each strategy on it from the same start, score it.

`lifelong run` is a thin shell around `run_experiment`; Python users can call it with a `RunConfig`.
"""

from __future__ import annotations

import random
import shutil
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from lifelong import metrics
from lifelong.benchmarks import build_benchmark
from lifelong.config import RunConfig
from lifelong.errors import LifelongError
from lifelong.learner import Learner
from lifelong.models import build_model
from lifelong.report import print_results, versions, write_results
from lifelong.strategies import REGISTRY, build_strategies
from lifelong.stream import Stream


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def default_strategies() -> list[str]:
    return [name for name, cls in REGISTRY.items() if getattr(cls, "in_default_run", True)]


def build_stream(config: RunConfig) -> Stream:
    if config.data:
        from lifelong.benchmarks.files import load_user_stream

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


def prepare_run_dir(config: RunConfig) -> Path:
    """The run folder; one that holds a finished run is only reused with ``overwrite``."""
    if config.out:
        run_dir = Path(config.out)
    else:
        run_dir = Path("runs") / f"{config.stream_name}-{datetime.now():%Y%m%d-%H%M%S}"
    if (run_dir / "results.json").exists() and not config.overwrite:
        raise LifelongError(
            f"{run_dir} already holds a finished run; pass --overwrite or choose another --out"
        )
    if run_dir.exists() and not run_dir.is_dir():
        raise LifelongError(f"--out {run_dir} is a file, not a folder; choose another path")
    return run_dir


def run_strategy(
    config: RunConfig, stream: Stream, composition: str, progress: Progress | None = None
) -> dict[str, Any]:
    """Train a fresh model (same seed, same initial weights) with one strategy composition."""
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
    )
    fit = learner.fit(stream)
    return {
        "strategy": composition,
        "accuracy_matrix": fit.matrix,
        "metrics": metrics.summarize(fit.matrix, fit.task_names, initial_scores=fit.initial_scores),
        "initial_scores": fit.initial_scores,
        "train_seconds": round(fit.train_seconds, 4),
        "eval_seconds": round(fit.eval_seconds, 4),
    }


def run_experiment(
    config: RunConfig, console: Console | None = None, show_progress: bool = True
) -> dict[str, Any]:
    """Run every strategy of the config on its stream; write and return the results document."""
    console = console or Console()
    config.validate()
    compositions = config.strategies or default_strategies()
    for composition in compositions:  # fail on a bad name before any training starts
        build_strategies(composition)
    run_dir = prepare_run_dir(config)
    stream = build_stream(config)
    created = not run_dir.exists()
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
            for composition in compositions:
                progress.update(overall, description=f"strategy {composition}")
                results.append(run_strategy(config, stream, composition, progress))
                progress.advance(overall)
        document = {
            "benchmark": stream.name,
            "scenario": stream.scenario,
            "tasks": [task.name for task in stream],
            "config": {**config.to_json(), "strategies": compositions, "out": str(run_dir)},
            "versions": versions(),
            "wall_seconds": round(time.perf_counter() - started, 3),
            "results": results,
        }
        write_results(run_dir, document)
    except BaseException:
        if created and run_dir.exists():
            shutil.rmtree(run_dir)  # nothing finished: leave no folder a later run could mistake for one
        raise
    print_results(console, document, [task.name for task in stream])
    console.print(f"results written to {run_dir / 'results.json'}")
    return document
