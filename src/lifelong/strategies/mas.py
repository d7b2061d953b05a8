"""Memory Aware Synapses (Aljundi et al. 2018).

A parameter matters to a task when the network's output moves with it: after each task,
``Omega_i += mean over samples of |d ||f(x)||_2^2 / d theta_i|`` (per-sample gradients, no labels
needed), and later tasks pay ``lambda * sum Omega (theta - theta*)^2``. Absolute values, not squares:
the layer hooks that give EWC its squared gradients from one backward pass do not apply, so every
per-sample gradient comes from ``torch.func`` (vmap over grad).

For a causal LM the output is the logit vector at every position: a sequence's ``||f(x)||^2`` is the
mean over the positions training puts loss on of each one's squared logit norm (a mean, as the LM
loss is, so lambda does not depend on the block length), one gradient per sequence.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from lifelong.core.distributed import sum_over_processes
from lifelong.core.strategy import IGNORE_INDEX
from lifelong.errors import LifelongError
from lifelong.strategies.anchors import (
    Forward,
    SummedImportance,
    Tensors,
    add_into,
    eval_mode,
    per_sample_sum,
    samples_of,
    select_parameters,
    snapshot,
    task_batches,
)

if TYPE_CHECKING:
    from lifelong.core.learner import Learner
    from lifelong.core.strategy import LMTrainer
    from lifelong.core.stream import Task


def _squared_norm(logits: torch.Tensor) -> torch.Tensor:
    return logits.square().sum()


def _squared_norms(logits: torch.Tensor) -> torch.Tensor:
    """Each row's squared output norm: the measure of `per_sample_sum`, one value per sample."""
    return logits.square().flatten(1).sum(1)


def lm_output_norm(logits: torch.Tensor, targets: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """MAS's measure for one sequence of a causal LM: the mean squared logit norm over its labelled
    positions (``logits`` [T, V], ``targets`` [T]; the generator is unused)."""
    keep = targets != IGNORE_INDEX
    return _squared_norm(logits[keep]) / keep.sum()


class MAS(SummedImportance):
    """Memory Aware Synapses: lambda * sum Omega (theta - theta*)^2, Omega = mean |d||f(x)||^2/d theta|."""

    name = "mas"
    aliases: ClassVar[dict[str, str]] = {"lambda": "lambda_mas"}
    lm_task_data = True

    def __init__(
        self,
        model: nn.Module | None = None,
        lambda_mas: float = 0.1,
        chunk_size: int = 64,
        samples: int | None = None,
        trainable_only: bool = True,
    ) -> None:
        if not lambda_mas >= 0:
            raise LifelongError(f"mas lambda must be >= 0, got {lambda_mas}; try lambda=0.1")
        if chunk_size < 1 or (samples is not None and samples < 1):
            raise LifelongError("mas chunk_size and samples must be positive; try chunk_size=64")
        super().__init__(model)
        self.lambda_mas, self.chunk_size, self.samples = lambda_mas, chunk_size, samples
        self.trainable_only = trainable_only

    @property
    def strength(self) -> float:
        return self.lambda_mas

    def after_task(self, learner: Learner, task: Task) -> None:
        data = task_batches(learner, self.chunk_size, shuffle=self.samples is not None)
        self.compute_importance(data, forward=learner.forward)

    def lm_after_task(self, trainer: LMTrainer, data: Any) -> None:
        if data is None:
            raise LifelongError("MAS needs the task's data to measure importance; pass train_dataset")
        new = trainer.importance(
            data,
            lm_output_norm,
            power=1,
            samples=self.samples,
            trainable_only=self.trainable_only,
            what="MAS importance",
        )
        self.model = trainer.model
        self._accumulate(new, trainer.model)

    def compute_importance(
        self, batches: Iterable[Sequence[torch.Tensor] | torch.Tensor], forward: Forward | None = None
    ) -> Tensors:
        """This task's importance from x or (x, ...) batches (labels unused); accumulate it, re-anchor."""
        if self.model is None:
            raise LifelongError(
                "MAS has no model; create it as MAS(model, ...) or train it through a Learner"
            )
        model = self.model
        params = select_parameters(model, self.trainable_only)
        total: Tensors = {}
        seen = 0
        with eval_mode(model):
            for x, _, t in samples_of(
                batches, next(model.parameters()).device, self.chunk_size, self.samples
            ):
                part = per_sample_sum(
                    model, forward, list(params), _squared_norms, 1, x, t, chunk_size=self.chunk_size
                )
                add_into(total, part)
                seen += len(x)
        total, seen = sum_over_processes(total, seen)
        if seen == 0:
            raise LifelongError("MAS importance needs at least one sample; the data given was empty")
        new = {n: v / seen for n, v in total.items()}
        self._accumulate(new, model)
        return new

    def _accumulate(self, new: Tensors, model: nn.Module) -> None:
        """A task's importance joins the earlier ones'; the anchor moves to the current weights."""
        params = dict(model.named_parameters())
        self.importance = add_into(self.importance, new)
        self.anchor = snapshot({n: params[n] for n in self.importance})
        self.tasks += 1
        self._penalty.set(self.importance, self.anchor, scale=self.lambda_mas, model=model)

    def mas_loss(self) -> torch.Tensor:
        """The penalty for a user's own loop (zero before the first `compute_importance`)."""
        if self.model is None or not self._penalty:
            return torch.zeros(())
        if not self._penalty.bound:
            self._penalty.bind(self.model)
        return self._penalty()
