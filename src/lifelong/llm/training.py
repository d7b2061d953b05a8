"""What `lifelong pretrain` and `lifelong finetune` share about training one task: the settings, the
learning rate a model gets by default, the device, the `TrainingArguments`, and the importance EWC
needs for what a model knew before the run.

Learning rates: 1e-5 by default for real models (the seed's "small learning rate when continuing");
the from-scratch ``tiny-llama`` demo uses `TINY_LR`, since a random model learns nothing at 1e-5.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch

from lifelong.core.distributed import check_precision
from lifelong.core.settings import check_least
from lifelong.errors import LifelongError
from lifelong.llm.fisher import OutsideTrainer
from lifelong.llm.models import is_tiny_llama
from lifelong.llm.schedules import SCHEDULES
from lifelong.strategies import Strategy

if TYPE_CHECKING:
    from transformers import PreTrainedModel

DEFAULT_LR = 1e-5
TINY_LR = 2e-3


@dataclass
class TrainSettings:
    """How each task trains; the defaults are the seed's (1 epoch, batch 4, warmup 10%, LR 1e-5)."""

    block_size: int = 128
    batch_size: int = 4
    epochs: float = 1.0
    # A from-scratch model's first domain is its pretraining: it may need more passes than later tasks.
    first_epochs: float | None = None
    learning_rate: float | None = None  # None: DEFAULT_LR, or TINY_LR for the from-scratch tiny-llama
    schedule: str = "rewarm-cosine"
    warmup_ratio: float = 0.1
    min_lr_ratio: float = 0.1
    gradient_accumulation_steps: int = 1
    weight_decay: float = 0.0
    seed: int = 0
    device: str = "auto"
    precision: str = "no"  # mixed precision of training: no, bf16, or fp16 (a CUDA GPU only)
    eval_batch_size: int = 16
    eval_blocks: int | None = None  # cap on held-out blocks per domain (None: all)
    eval_every: int | None = None  # ForgettingCallback: old-domain perplexity every N steps
    stop_ratio: float | None = None  # ForgettingCallback: stop a task when an old domain rises past this
    report_to: str | list[str] = "none"

    def validate(self) -> None:
        check_least(vars(self), block_size=2, batch_size=1, gradient_accumulation_steps=1)
        check_least(vars(self), strictly=True, epochs=0, first_epochs=0)
        if self.learning_rate is not None and not self.learning_rate > 0:
            raise LifelongError(f"learning rate must be positive, got {self.learning_rate}; try 1e-5")
        if self.schedule not in SCHEDULES:
            raise LifelongError(f"unknown LR schedule '{self.schedule}'; use one of: {', '.join(SCHEDULES)}")
        if not 0 <= self.warmup_ratio < 1:
            raise LifelongError(f"warmup ratio must be in [0, 1), got {self.warmup_ratio}; try 0.1")
        if self.device not in ("auto", "cpu", "cuda"):
            raise LifelongError(f"device must be auto, cpu or cuda, got '{self.device}'")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise LifelongError("device cuda was asked for but no CUDA GPU is available; use --device cpu")
        check_precision(self.precision)
        if self.precision == "fp16" and use_cpu(self.device):
            raise LifelongError("precision fp16 needs a CUDA GPU (a CPU has no fp16 autocast); try bf16")
        if self.precision == "bf16" and not use_cpu(self.device) and not torch.cuda.is_bf16_supported():
            raise LifelongError("this GPU has no bf16 arithmetic (it came with Ampere); use --precision fp16")
        check_report_to(self.report_to)


def check_report_to(report_to: str | list[str]) -> None:
    """Refuse a logging integration the Trainer does not know or cannot find installed, before training."""
    from transformers.integrations import get_available_reporting_integrations
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

    names = report_to.split(",") if isinstance(report_to, str) else list(report_to)
    for name in (n.strip() for n in names):
        if name in ("none", "all"):
            continue
        if name not in INTEGRATION_TO_CALLBACK:
            raise LifelongError(
                f"unknown --report-to '{name}'; use none, all or one of: {', '.join(INTEGRATION_TO_CALLBACK)}"
            )
        if name not in get_available_reporting_integrations():
            raise LifelongError(f"--report-to {name} needs its package installed; pip install {name}")


Settings = TypeVar("Settings", bound=TrainSettings)


def resolved(settings: Settings, model: Any, default_lr: float = DEFAULT_LR) -> Settings:
    """Checked settings with the learning rate filled in for this model (a copy: the caller's stays).

    ``default_lr`` applies to a real model; the from-scratch tiny-llama gets `TINY_LR`."""
    settings.validate()
    if settings.learning_rate is not None:
        return settings
    tiny = isinstance(model, str | Path) and is_tiny_llama(model)
    return dataclasses.replace(settings, learning_rate=TINY_LR if tiny else default_lr)


def use_cpu(device: str) -> bool:
    return device == "cpu" or not torch.cuda.is_available()


def device_of(settings: TrainSettings) -> str:
    return "cpu" if use_cpu(settings.device) else "cuda"


def training_args(settings: TrainSettings, output_dir: Path, progress: bool) -> Any:
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=settings.batch_size,
        per_device_eval_batch_size=settings.eval_batch_size,
        gradient_accumulation_steps=settings.gradient_accumulation_steps,
        num_train_epochs=settings.epochs,
        learning_rate=settings.learning_rate or DEFAULT_LR,
        warmup_steps=settings.warmup_ratio,  # below 1 it is a share of the steps (transformers 5)
        weight_decay=settings.weight_decay,
        lr_scheduler_type="constant",  # replaced by ContinualTrainer's own schedule
        logging_steps=50,
        save_strategy="no",  # each task is saved whole, with its tokenizer, by us
        eval_strategy="no",
        report_to=settings.report_to,
        use_cpu=use_cpu(settings.device),
        bf16=settings.precision == "bf16",  # autocast around the forward; the weights stay float32
        fp16=settings.precision == "fp16",
        seed=settings.seed,
        data_seed=settings.seed,
        disable_tqdm=not progress,
        dataloader_num_workers=0,
    )


def ensure_old_importance(
    strategies: Sequence[Strategy], model: PreTrainedModel, old: Any, seed: int
) -> None:
    """Strategies that protect nothing yet protect the ``old`` data (blocks or a Dataset; None: nothing
    is old), which the model already learned: `Strategy.lm_protect` (EWC: its Fisher under the model)."""
    for strategy in strategies:
        strategy.lm_protect(OutsideTrainer(model, seed), old)


def drop_if_empty(folder: Path) -> None:
    """The Trainers' output_dirs hold nothing unless report_to wrote logs there; then they go."""
    if folder.is_dir() and not any(p.is_file() for p in folder.rglob("*")):
        shutil.rmtree(folder)
