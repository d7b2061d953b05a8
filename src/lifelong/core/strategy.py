"""The strategy hooks: everything a continual-learning method needs from the one training loop.

A strategy never runs its own loop. The Learner calls these hooks in order (see DESIGN.md), so one
strategy serves the native loop, the Hugging Face Trainer and distributed runs alike. Every hook is
optional; the defaults do nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch

if TYPE_CHECKING:
    from lifelong.core.learner import Learner
    from lifelong.core.stream import Task

# Logits of classes a sample may not take (task-incremental masking): a large finite value, not
# -inf, so softmax-based penalties (KL) stay finite.
MASKED_LOGIT = -1e4


@dataclass
class Batch:
    """One training batch: inputs, labels, and the task each sample came from (for masking)."""

    x: torch.Tensor
    y: torch.Tensor
    task_ids: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)

    def cat(self, other: Batch) -> Batch:
        """This batch followed by ``other`` (how replay mixes old samples in)."""
        return Batch(
            torch.cat([self.x, other.x]),
            torch.cat([self.y, other.y]),
            torch.cat([self.task_ids, other.task_ids]),
        )


class Strategy:
    """Base class: override only the hooks the method needs.

    ``name`` is the registry name. ``exclusive`` lists what only one strategy in a composition may
    own (``"train_data"`` for strategies that replace the task's training set, ``"gradients"`` for
    those that rewrite gradients); two strategies that claim the same thing are refused together.
    ``aliases`` maps option names users type (``lambda``) to constructor arguments (``lambda_ewc``).
    """

    name: ClassVar[str] = "strategy"
    exclusive: ClassVar[frozenset[str]] = frozenset()
    aliases: ClassVar[dict[str, str]] = {}

    def before_task(self, learner: Learner, task: Task) -> None:
        """Called before training a task; may replace ``learner.train_data``."""

    def train_batch(self, learner: Learner, batch: Batch) -> Batch:
        """May add replayed samples to the batch."""
        return batch

    def penalty(self, learner: Learner, batch: Batch, outputs: torch.Tensor) -> torch.Tensor | float:
        """A term added to the task loss (EWC, distillation, ...)."""
        return 0.0

    def after_backward(self, learner: Learner) -> None:
        """May edit gradients before the optimizer step (gradient projection, ...)."""

    def after_task(self, learner: Learner, task: Task) -> None:
        """Called after training a task (Fisher, buffer update, snapshot, ...)."""

    def state_dict(self) -> dict[str, Any]:
        """Tensors plus JSON-able values only, so checkpoints need no pickle."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned."""

    def __repr__(self) -> str:
        return self.name
