"""Averaged Gradient Episodic Memory (Chaudhry et al. 2019, arXiv 1812.00420).

An episodic memory (a `ReplayBuffer`, filled at the end of each task) keeps samples of past tasks.
After every backward pass the gradient on a random memory sample, ``g_ref``, is computed; if the new
gradient ``g`` points against it (``g . g_ref < 0``, so the step would raise the loss on past tasks),
``g`` is projected onto the plane orthogonal to ``g_ref``: ``g - (g . g_ref / g_ref . g_ref) g_ref``.
Otherwise ``g`` is kept. Unlike replay, memory samples never enter the training loss.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from lifelong.core.distributed import all_reduce_sum, group_size, local_share
from lifelong.core.strategy import Strategy
from lifelong.core.stream import with_task_ids
from lifelong.errors import LifelongError
from lifelong.strategies.buffers import Policy, ReplayBuffer

if TYPE_CHECKING:
    from lifelong.core.learner import Learner
    from lifelong.core.stream import Task


class AGEM(Strategy):
    """A-GEM: projects each gradient so it never points against a past-task memory's gradient."""

    name = "agem"
    supports = frozenset({"classifier"})
    exclusive = frozenset({"gradients"})

    def __init__(self, memory_size: int = 500, sample_size: int = 256, policy: Policy = "reservoir") -> None:
        if sample_size < 1:
            raise LifelongError(f"agem sample_size must be at least 1, got {sample_size}")
        self.sample_size = sample_size
        # reservoir: uniform over every past sample, so each task keeps an equal share in expectation.
        self.memory = ReplayBuffer(local_share(memory_size), policy)  # per process, as in replay

    def after_backward(self, learner: Learner) -> None:
        if len(self.memory) == 0:
            return  # first task: no past to protect
        ref = self.memory.sample(self.sample_size, learner.generator).to(learner.device)
        params = [p for p in learner.model.parameters() if p.requires_grad]
        # Augmented as training batches are (as Mammoth's A-GEM does), where the run augments.
        ref_loss = learner.criterion(learner.forward(learner.augmented(ref.x), ref.task_ids), ref.y)
        # autograd.grad, not backward: the current gradients in .grad must stay untouched.
        ref_grads = torch.autograd.grad(ref_loss, params, allow_unused=True)
        g, g_ref = _flatten([p.grad for p in params], params), _flatten(ref_grads, params)
        # Every process projects onto the same reference: the mean over all processes' memories
        # (the gradients in .grad are already averaged by DDP).
        g_ref = all_reduce_sum(g_ref) / group_size()
        # Branch-free, so no host sync: the coefficient is 0 (g kept exactly) when g . g_ref >= 0.
        coef = (g @ g_ref).clamp(max=0) / (g_ref @ g_ref).clamp_min(1e-12)
        g = g - coef * g_ref
        for p, ref_grad, chunk in zip(params, ref_grads, g.split([p.numel() for p in params]), strict=True):
            if p.grad is not None:
                p.grad.copy_(chunk.view_as(p))
            elif ref_grad is not None:  # unused by the batch's loss, but the projection moves it
                p.grad = chunk.view_as(p).clone()

    def after_task(self, learner: Learner, task: Task) -> None:
        # The task's own samples (not learner.train_data, which another strategy may have extended).
        data = with_task_ids(task.train, task.index)
        for batch in learner.batches(data, shuffle=False, batch_size=learner.eval_batch_size):
            self.memory.add(batch, generator=learner.generator)

    def state_dict(self) -> dict[str, Any]:
        return self.memory.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.memory.load_state_dict(state)


def _flatten(grads: Sequence[torch.Tensor | None], params: Sequence[torch.Tensor]) -> torch.Tensor:
    """One vector of all gradients; a parameter without one contributes zeros."""
    return torch.cat(
        [(torch.zeros_like(p) if g is None else g).reshape(-1) for g, p in zip(grads, params, strict=True)]
    )
