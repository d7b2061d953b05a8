"""lifelong: continual learning for PyTorch and Hugging Face models.

Learn task after task without forgetting, and measure how much was forgotten::

    from lifelong import Learner, build_benchmark, build_model, build_strategies, summarize

    stream = build_benchmark("split-digits")
    model = build_model("mlp", stream.input_shape, stream.num_classes)
    result = Learner(model, build_strategies("naive")).fit(stream)
    print(summarize(result.matrix, result.task_names))

Names are imported on first use: ``import lifelong`` loads no torch, and ``lifelong.Learner`` loads
only the core. Where things live: ``core/`` (the loop, hooks, state, metrics), ``strategies/``,
``data/`` (streams), ``models/``, ``runs/`` (run folders, results), ``report/``, ``experiment/``
(``lifelong run``), ``llm/`` (causal LMs), ``adapters/`` (LoRA per task), ``cli/``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lifelong.core.exports import lazy_getattr

if TYPE_CHECKING:
    from lifelong.core.learner import FitResult, Learner
    from lifelong.core.metrics import (
        average_accuracy,
        average_incremental_accuracy,
        backward_transfer,
        compute_forgetting_rate,
        forgetting,
        forgetting_rate,
        forward_transfer,
        summarize,
    )
    from lifelong.core.strategy import Batch, Strategy
    from lifelong.core.stream import Stream, Task
    from lifelong.data import BENCHMARKS, build_benchmark
    from lifelong.errors import LifelongError
    from lifelong.experiment import RunConfig, run_experiment
    from lifelong.models import build_model
    from lifelong.strategies import REGISTRY, build_strategies
    from lifelong.strategies.buffers import ReplayBuffer
    from lifelong.strategies.ewc import EWC

__version__ = "0.1.0"

_WHERE = {
    "BENCHMARKS": "lifelong.data",
    "build_benchmark": "lifelong.data",
    "Batch": "lifelong.core.strategy",
    "Strategy": "lifelong.core.strategy",
    "FitResult": "lifelong.core.learner",
    "Learner": "lifelong.core.learner",
    "LifelongError": "lifelong.errors",
    "REGISTRY": "lifelong.strategies",
    "build_strategies": "lifelong.strategies",
    "EWC": "lifelong.strategies.ewc",
    "ReplayBuffer": "lifelong.strategies.buffers",
    "RunConfig": "lifelong.experiment",
    "run_experiment": "lifelong.experiment",
    "Stream": "lifelong.core.stream",
    "Task": "lifelong.core.stream",
    "build_model": "lifelong.models",
    **{
        name: "lifelong.core.metrics"
        for name in (
            "average_accuracy",
            "average_incremental_accuracy",
            "backward_transfer",
            "compute_forgetting_rate",
            "forgetting",
            "forgetting_rate",
            "forward_transfer",
            "summarize",
        )
    },
}

__all__ = [
    "BENCHMARKS",
    "EWC",
    "REGISTRY",
    "Batch",
    "FitResult",
    "Learner",
    "LifelongError",
    "ReplayBuffer",
    "RunConfig",
    "Strategy",
    "Stream",
    "Task",
    "average_accuracy",
    "average_incremental_accuracy",
    "backward_transfer",
    "build_benchmark",
    "build_model",
    "build_strategies",
    "compute_forgetting_rate",
    "forgetting",
    "forgetting_rate",
    "forward_transfer",
    "run_experiment",
    "summarize",
]

__getattr__ = lazy_getattr(__name__, _WHERE)
