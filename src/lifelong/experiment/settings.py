"""A run's settings: command-line flags and YAML keys are the same names, validated in one place."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lifelong.core.distributed import check_precision
from lifelong.core.learner import OPTIMIZERS
from lifelong.core.settings import EPOCHS_MAX, CommonSettings, check_types, setting
from lifelong.core.stream import SCENARIOS
from lifelong.errors import LifelongError
from lifelong.runs.settings_file import compositions_from_file, load_settings_file, make_settings


@dataclass
class RunConfig(CommonSettings):
    """Everything `lifelong run` needs; ``strategies`` holds one composition string per strategy run.

    Each field is also a flag of `lifelong run` and a key of its YAML config (``strategy`` or
    ``strategies``), with the help line declared here (``out``, ``overwrite``, ``seed`` and ``device``
    in `CommonSettings`, shared with the other commands that train).
    """

    benchmark: str = setting(
        "split-digits", "Built-in stream, e.g. split-digits or 'permuted-digits:tasks=10'."
    )
    strategies: list[str] = setting(
        None,
        "Strategy to run (repeatable); 'a+b' composes; 'replay:buffer_size=200'.  \\[default: all]",
        "--strategy",
        "-s",
        factory=list,
        from_file=compositions_from_file,
    )
    model: str | None = setting(None, "Model: mlp, cnn1d, with options 'mlp:hidden=512'.")
    epochs: int = setting(10, "Epochs per task.", limits=(None, EPOCHS_MAX))
    batch_size: int = setting(32, "Batch size.")
    lr: float = setting(1e-3, "Learning rate (the schedule's peak).")
    optimizer: str = setting("adam", "sgd, adam or adamw.")
    scenario: str | None = setting(None, "class, task or domain (incremental).")
    data: str | None = setting(
        None,
        "Your data: a CSV/JSONL/Parquet file or folder of them, a folder of image class folders, "
        "a save_to_disk folder or hf:NAME[:CONFIG].",
    )
    data_root: str | None = setting(
        None, "Where a built-in image stream's files are (or go, with --download)."
    )
    download: bool = setting(False, "Let a built-in image stream download missing files.", "--download")
    augment: bool = setting(False, "Augment training images (random crop and flip).", "--augment")
    image_size: int | None = setting(None, "Resize the images of an image-folder --data to N x N.")
    label_column: str = setting("label", "Label column of --data.")
    text_column: str | None = setting(None, "Text column of a Hugging Face --data (else the features).")
    task_column: str | None = setting(None, "Column of --data that names each row's task.")
    classes_per_task: int | None = setting(None, "Split --data into tasks of this many classes.")
    test_size: float = setting(0.3, "Held-out share of each task.")
    tensorboard: bool = setting(False, "Also log every evaluation to TensorBoard.", "--tensorboard")
    precision: str = setting("no", "Mixed precision: no, bf16 or fp16.")

    def validate(self) -> RunConfig:
        check_types(self)
        if self.epochs < 1:
            raise LifelongError(f"epochs must be a positive integer, got {self.epochs}; try --epochs 5")
        if self.batch_size < 1:
            raise LifelongError(
                f"batch size must be a positive integer, got {self.batch_size}; try --batch-size 32"
            )
        if not self.lr > 0:
            raise LifelongError(f"learning rate must be positive, got {self.lr}; try --lr 0.001")
        if self.optimizer not in OPTIMIZERS:
            raise LifelongError(
                f"unknown optimizer '{self.optimizer}'; choose one of: {', '.join(OPTIMIZERS)}"
            )
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise LifelongError(f"unknown device '{self.device}'; choose one of: auto, cpu, cuda")
        check_precision(self.precision)
        if self.scenario is not None and self.scenario not in SCENARIOS:
            raise LifelongError(f"unknown scenario '{self.scenario}'; choose one of: {', '.join(SCENARIOS)}")
        if not 0 < self.test_size < 1:
            raise LifelongError(
                f"test size must be between 0 and 1, got {self.test_size}; try --test-size 0.3"
            )
        if self.data and (self.data_root or self.download):
            raise LifelongError(
                "--data-root and --download are for the built-in image streams (--benchmark split-mnist ...); "
                "--data names your files itself, so drop them"
            )
        if self.image_size is not None and not self.data:
            raise LifelongError(
                "--image-size resizes the images of --data (class folders or a Hugging Face image dataset); drop it"
            )
        if self.image_size is not None and self.image_size < 1:
            raise LifelongError(
                f"image size must be at least 1 pixel, got {self.image_size}; try --image-size 32"
            )
        if self.classes_per_task is not None and self.classes_per_task < 1:
            raise LifelongError(f"classes per task must be at least 1, got {self.classes_per_task}")
        return self

    @property
    def stream_name(self) -> str:
        return Path(self.data).stem if self.data else self.benchmark.partition(":")[0]

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def load_yaml_config(path: Path) -> dict[str, Any]:
    """Read a YAML config of `lifelong run`: its keys are `RunConfig`'s (``strategy`` may be a list)."""
    return load_settings_file(path, RunConfig)


def make_config(file_values: dict[str, Any], flag_values: dict[str, Any]) -> RunConfig:
    """Defaults, then the YAML file, then flags given on the command line (None means not given)."""
    return make_settings(RunConfig, file_values, flag_values)
