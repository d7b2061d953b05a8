"""Synaptic Intelligence (Zenke, Poole & Ganguli 2017).

While a task trains, each parameter's share of the drop in loss is integrated along its path:
``omega_i += -g_i * delta_theta_i`` for every optimizer step. At the end of the task its importance
grows by ``omega_i / (Delta_i^2 + xi)`` (``Delta_i``: how far it moved over the whole task), and later
tasks pay ``c * sum Omega (theta - theta*)^2``. No extra passes over data, no stored samples.

A causal LM under `ContinualTrainer` integrates the same way, once per optimizer step, over the step's
whole gradient (accumulated over micro-batches, and clipped, as the step used it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from lifelong.errors import LifelongError
from lifelong.strategies.anchors import SummedImportance, select_parameters, snapshot

if TYPE_CHECKING:
    from lifelong.core.learner import Learner
    from lifelong.core.strategy import LMTrainer
    from lifelong.core.stream import Task


class SI(SummedImportance):
    """Synaptic Intelligence: c * sum Omega (theta - theta*)^2, Omega from each weight's loss path integral."""

    name = "si"

    def __init__(self, c: float = 20.0, xi: float = 0.1, trainable_only: bool = True) -> None:
        if not c >= 0:
            raise LifelongError(f"si c must be >= 0, got {c}; try c=20")
        if not xi > 0:
            raise LifelongError(f"si xi must be > 0 (it keeps the importance finite), got {xi}; try xi=0.1")
        super().__init__()
        self.c, self.xi, self.trainable_only = c, xi, trainable_only
        # Within a task: the tracked parameters, their values at its start and after the last step,
        # the gradient that drove the last step, and the running path integral omega.
        self._names: list[str] = []
        self._params: list[torch.Tensor] = []
        self._start: list[torch.Tensor] = []
        self._prev: list[torch.Tensor] = []
        self._grad: list[torch.Tensor] = []
        self._omega: list[torch.Tensor] = []
        self._pending = False

    # ---- the Learner's hooks, and ContinualTrainer's (once per optimizer step there too) ----------

    def before_task(self, learner: Learner, task: Task) -> None:
        self._track(learner.model)
        super().before_task(learner, task)

    def lm_before_task(self, trainer: LMTrainer) -> None:
        self._track(trainer.model)
        super().lm_before_task(trainer)

    def after_backward(self, learner: Learner) -> None:
        self._credit()

    def lm_after_backward(self, trainer: LMTrainer) -> None:
        self._credit()

    def after_task(self, learner: Learner, task: Task) -> None:
        self._consolidate(learner.model)

    def lm_after_task(self, trainer: LMTrainer, data: Any) -> None:
        if self._params:  # a task trained with SI tracking its path (not one trained before it came)
            self._consolidate(trainer.model)

    @property
    def strength(self) -> float:
        return self.c

    # ---- the path integral --------------------------------------------------------------------------

    def _track(self, model: nn.Module) -> None:
        params = select_parameters(model, self.trainable_only)
        self._names, self._params = list(params), list(params.values())
        self._start = [p.detach().clone() for p in self._params]
        self._prev = [p.detach().clone() for p in self._params]
        self._grad = [torch.zeros_like(p) for p in self._params]
        self._omega = [torch.zeros_like(p) for p in self._params]
        self._pending = False

    def _credit(self) -> None:
        # The parameters' step only exists after optimizer.step(), so the previous step is credited
        # now, and this step's gradient is kept for the next call (or for the end of the task).
        self._integrate()
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self._params]
        torch._foreach_copy_(self._grad, grads)
        self._pending = True

    @torch.no_grad()
    def _integrate(self) -> None:
        if not self._pending:
            return
        torch._foreach_sub_(self._prev, self._params)  # now -delta_theta of the last step
        torch._foreach_addcmul_(self._omega, self._grad, self._prev)  # omega += -g * delta_theta
        torch._foreach_copy_(self._prev, self._params)
        self._pending = False

    @torch.no_grad()
    def _consolidate(self, model: nn.Module) -> None:
        self._integrate()
        for n, p, start, omega in zip(self._names, self._params, self._start, self._omega, strict=True):
            # omega < 0 (steps that raised the loss: momentum, noise) would push weights *away* from
            # the anchor; such weights are simply unimportant.
            gain = (omega / ((p - start).square() + self.xi)).clamp_min(0)
            self.importance[n] = self.importance[n] + gain if n in self.importance else gain
        self.anchor = snapshot(dict(zip(self._names, self._params, strict=True)))
        self.tasks += 1
        self._names, self._params = [], []
        self._start = self._prev = self._grad = self._omega = []
        self._penalty.set(self.importance, self.anchor, scale=self.c, model=model)
