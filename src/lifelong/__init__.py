"""lifelong: continual learning for PyTorch and Hugging Face models.

Learn task after task without forgetting, and measure how much was forgotten::

    from lifelong import Learner, build_benchmark, build_model, build_strategies, summarize

    stream = build_benchmark("split-digits")
    model = build_model("mlp", stream.input_shape, stream.num_classes)
    result = Learner(model, build_strategies("naive")).fit(stream)
    print(summarize(result.matrix, result.task_names))
"""

from lifelong.benchmarks import BENCHMARKS, build_benchmark
from lifelong.config import RunConfig
from lifelong.errors import LifelongError
from lifelong.experiment import run_experiment
from lifelong.learner import FitResult, Learner
from lifelong.metrics import (
    average_accuracy,
    average_incremental_accuracy,
    backward_transfer,
    compute_forgetting_rate,
    forgetting,
    forgetting_rate,
    forward_transfer,
    summarize,
)
from lifelong.models import build_model
from lifelong.strategies import REGISTRY, Strategy, build_strategies
from lifelong.stream import Stream, Task

__version__ = "0.1.0"

__all__ = [
    "BENCHMARKS",
    "REGISTRY",
    "FitResult",
    "Learner",
    "LifelongError",
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
