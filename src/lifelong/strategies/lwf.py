"""Learning without Forgetting (Li & Hoiem 2016), in the seed's form.

The model as it was before the current task, frozen, is the teacher: on every batch its softened
outputs (temperature T) are matched by the current model through a KL divergence. The seed's loss is
``alpha * T^2 * KL(old || new) + (1 - alpha) * task_loss``; the Learner adds penalties to the task
loss, so `penalty` returns ``alpha * T^2 * KL - alpha * task_loss`` and the total is the seed's mix.

Which logits are distilled depends on the scenario: class-incremental, only the classes of earlier
tasks (the new classes have nothing to keep); task-incremental, each earlier task's head as its own
softmax; domain-incremental, every logit.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from lifelong.core.strategy import MASKED_LOGIT, Batch, Strategy
from lifelong.errors import LifelongError

if TYPE_CHECKING:
    from lifelong.core.learner import Learner
    from lifelong.core.stream import Task

_PREFIX = "teacher."


class LwF(Strategy):
    """Learning without Forgetting: the frozen previous model's softened outputs teach the current one."""

    name = "lwf"

    def __init__(self, alpha: float = 0.5, temperature: float = 2.0) -> None:
        if not 0.0 <= alpha <= 1.0:
            raise LifelongError(f"lwf alpha is a mix weight in [0, 1], got {alpha}; try alpha=0.5")
        if not temperature > 0:
            raise LifelongError(f"lwf temperature must be positive, got {temperature}; try temperature=2")
        self.alpha, self.temperature = alpha, temperature
        self.teacher: nn.Module | None = None
        self.heads: torch.Tensor | None = None  # bool [H, C]: the logits each distilled softmax covers
        self._pending: dict[str, torch.Tensor] | None = None  # teacher weights loaded, not yet rebuilt

    # ---- the loss, usable from any training loop ---------------------------------------------------

    @staticmethod
    def distillation_loss(
        new_logits: torch.Tensor,
        old_logits: torch.Tensor,
        mask: torch.Tensor | None = None,
        temperature: float = 2.0,
    ) -> torch.Tensor:
        """KL(softmax(old/T) || softmax(new/T)), summed over heads and averaged over samples.

        ``mask`` (bool) picks the distilled logits: ``[C]`` for one softmax over those classes,
        ``[H, C]`` for one softmax per row (a multi-head model's old heads); None distills them all.
        """
        if mask is not None:
            heads = ~mask.view(-1, mask.shape[-1])  # [H, C], True where left out
            new_logits = new_logits.unsqueeze(1).masked_fill(heads, MASKED_LOGIT)
            old_logits = old_logits.unsqueeze(1).masked_fill(heads, MASKED_LOGIT)
        log_q = F.log_softmax(new_logits / temperature, dim=-1)
        log_p = F.log_softmax(old_logits.detach() / temperature, dim=-1)
        return F.kl_div(log_q, log_p, reduction="sum", log_target=True) / new_logits.shape[0]

    def loss(
        self,
        new_logits: torch.Tensor,
        old_logits: torch.Tensor,
        targets: torch.Tensor,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The seed's ``compute_loss``: alpha * T^2 * KL + (1 - alpha) * cross-entropy."""
        kd = self.distillation_loss(new_logits, old_logits, mask, self.temperature)
        ce = F.cross_entropy(new_logits, targets)
        return self.alpha * self.temperature**2 * kd + (1 - self.alpha) * ce

    # ---- hooks -------------------------------------------------------------------------------------

    def before_task(self, learner: Learner, task: Task) -> None:
        self.teacher, self._pending, self.heads = None, None, None
        if task.index == 0 or self.alpha == 0:
            return  # nothing learned yet: the first task trains on the plain task loss
        self.teacher = self._snapshot(learner.model)
        self.heads = self._old_heads(learner, task)

    def penalty(self, learner: Learner, batch: Batch, outputs: torch.Tensor) -> torch.Tensor | float:
        if self.alpha == 0:
            return 0.0
        teacher = self._teacher(learner)
        if teacher is None:
            return 0.0
        with torch.no_grad():  # the one extra forward LwF costs
            old = teacher(batch.x)
        # Unmasked: in the task-incremental scenario the old heads are what must be distilled.
        new = learner.logits if learner.logits is not None else outputs
        kd = self.distillation_loss(new, old, self.heads, self.temperature)
        # alpha*T^2*KL - alpha*task_loss: added to the Learner's task loss this is the seed's mix.
        task_loss = getattr(learner, "task_loss", None)  # the Learner's own, not computed twice
        if task_loss is None:
            task_loss = learner.criterion(outputs, batch.y)
        return self.alpha * (self.temperature**2 * kd - task_loss)

    def state_dict(self) -> dict[str, Any]:
        weights = self._pending if self.teacher is None else self.teacher.state_dict()
        state: dict[str, Any] = {"has_teacher": weights is not None}
        for key, value in (weights or {}).items():
            state[_PREFIX + key] = value.detach().clone()
        if self.heads is not None:
            state["heads"] = self.heads.cpu()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # No model here to copy: keep the tensors and rebuild the teacher on first use (`_teacher`).
        self.teacher = None
        self._pending = (
            {k[len(_PREFIX) :]: v for k, v in state.items() if k.startswith(_PREFIX)}
            if state.get("has_teacher")
            else None
        )
        self.heads = state.get("heads")

    # ---- pieces ------------------------------------------------------------------------------------

    @staticmethod
    def _snapshot(model: nn.Module) -> nn.Module:
        teacher = copy.deepcopy(model).eval()
        teacher.requires_grad_(False)
        return teacher

    def _teacher(self, learner: Learner) -> nn.Module | None:
        if self.teacher is None and self._pending is not None:
            teacher = self._snapshot(learner.model)
            teacher.load_state_dict(self._pending)
            self.teacher, self._pending = teacher, None
        if self.heads is not None and self.heads.device != learner.device:
            self.heads = self.heads.to(learner.device)
        return self.teacher

    @staticmethod
    def _old_heads(learner: Learner, task: Task) -> torch.Tensor | None:
        """Bool ``[H, C]`` of the logits to distill, or None for all of them (domain-incremental)."""
        stream = learner.stream
        if stream is None or stream.scenario == "domain":
            return None
        earlier = stream.class_mask()[: task.index]  # [tasks before this one, C]
        if stream.scenario == "class":
            earlier = earlier.any(dim=0, keepdim=True)  # one softmax over every class seen before
            if bool(earlier.all()):
                return None
        return earlier.to(learner.device)
