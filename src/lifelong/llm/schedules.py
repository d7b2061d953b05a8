"""Learning-rate schedules for continual pre-training, as ``LambdaLR`` multipliers of the max LR.

- ``rewarm-cosine`` (Gupta et al. 2023, "How to (re)warm your model?", arXiv 2308.04014): every new
  task re-warms linearly from 0 to the max LR, then decays along a cosine to ``min_lr_ratio`` of it.
- ``infinite`` (Ibrahim et al. 2024, "Simple and Scalable Strategies to Continually Pre-train LLMs",
  arXiv 2403.08763): linear warmup, a long constant phase at the max LR, and a final anneal (linear
  to ``min_lr_ratio``) over the last ``anneal_ratio`` of the steps. The constant phase does not
  depend on how long training will last, so a later task can start from it without re-warming much.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal, get_args

import torch

from lifelong.errors import LifelongError

ScheduleName = Literal["rewarm-cosine", "infinite", "constant"]
SCHEDULES: tuple[str, ...] = get_args(ScheduleName)


def lr_lambda(
    schedule: str,
    total_steps: int,
    warmup_steps: int,
    min_lr_ratio: float = 0.1,
    anneal_ratio: float = 0.1,
) -> Callable[[int], float]:
    """The multiplier of the max LR at each optimizer step ``0 .. total_steps - 1``."""
    if schedule not in SCHEDULES:
        raise LifelongError(f"unknown LR schedule '{schedule}'; use one of: {', '.join(SCHEDULES)}")
    if not 0 <= min_lr_ratio <= 1:
        raise LifelongError(f"min_lr_ratio must be in [0, 1], got {min_lr_ratio}; try 0.1")
    if not 0 <= anneal_ratio <= 1:
        raise LifelongError(f"anneal_ratio must be in [0, 1], got {anneal_ratio}; try 0.1")
    total = max(1, int(total_steps))
    warmup = min(max(0, int(warmup_steps)), total)

    def warm(step: int) -> float:
        # (step + 1): the first step already trains at a small LR instead of wasting itself at 0.
        return (step + 1) / warmup

    if schedule == "constant":
        return lambda step: warm(step) if step < warmup else 1.0

    if schedule == "rewarm-cosine":

        def cosine(step: int) -> float:
            if step < warmup:
                return warm(step)
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

        return cosine

    anneal = max(1, round(total * anneal_ratio)) if anneal_ratio > 0 else 0
    anneal_start = max(warmup, total - anneal)

    def infinite(step: int) -> float:
        if step < warmup:
            return warm(step)
        if step < anneal_start:
            return 1.0
        progress = min(1.0, (step - anneal_start + 1) / max(1, total - anneal_start))
        return 1.0 - (1 - min_lr_ratio) * progress

    return infinite


def make_scheduler(
    optimizer: torch.optim.Optimizer,
    schedule: str,
    total_steps: int,
    warmup_steps: int,
    min_lr_ratio: float = 0.1,
    anneal_ratio: float = 0.1,
) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(schedule, total_steps, warmup_steps, min_lr_ratio, anneal_ratio)
    )
