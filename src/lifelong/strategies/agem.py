"""Averaged Gradient Episodic Memory (Chaudhry et al. 2019, arXiv 1812.00420).

A small episodic memory keeps samples of past tasks. After every backward pass the gradient on a
random memory sample, ``g_ref``, is computed; if the new gradient ``g`` points against it
(``g . g_ref < 0``, so the step would raise the loss on past tasks), ``g`` is projected onto the
plane orthogonal to ``g_ref``: ``g - (g . g_ref / g_ref . g_ref) g_ref``. Otherwise ``g`` is kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import torch

from lifelong.errors import LifelongError
from lifelong.strategies.base import Strategy
from lifelong.stream import with_task_ids

if TYPE_CHECKING:
    from lifelong.learner import Learner
    from lifelong.stream import Task

MemoryPolicy = Literal["per-task", "reservoir"]
_FIELDS = ("x", "y", "task_ids", "keys")


class _Memory(NamedTuple):
    """Stored samples, each with a uniform random key: keeping the k smallest keys of any set is a
    uniform random k-subset of it, so both policies are a top-k (reservoir sampling without a loop)."""

    x: torch.Tensor
    y: torch.Tensor
    task_ids: torch.Tensor
    keys: torch.Tensor

    def select(self, index: torch.Tensor) -> _Memory:
        return _Memory(*(field[index] for field in self))

    def cat(self, other: _Memory) -> _Memory:
        return _Memory(*(torch.cat(pair) for pair in zip(self, other, strict=True)))

    def smallest(self, k: int) -> _Memory:
        return self.select(self.keys.topk(min(k, len(self.keys)), largest=False).indices)

    def to(self, device: torch.device) -> _Memory:
        return _Memory(*(field.to(device) for field in self))


class AGEM(Strategy):
    """A-GEM: projects each gradient so it never points against a past-task memory's gradient."""

    name = "agem"
    exclusive = frozenset({"gradients"})

    def __init__(
        self, memory_size: int = 500, sample_size: int = 256, policy: MemoryPolicy = "per-task"
    ) -> None:
        if memory_size < 1 or sample_size < 1:
            raise LifelongError(
                f"agem needs memory_size >= 1 and sample_size >= 1, got {memory_size} and {sample_size}"
            )
        if policy not in ("per-task", "reservoir"):
            raise LifelongError(f"agem policy is '{policy}'; use one of: per-task, reservoir")
        self.memory_size, self.sample_size, self.policy = memory_size, sample_size, policy
        self.memory: _Memory | None = None

    def before_task(self, learner: Learner, task: Task) -> None:
        if self.memory is not None:  # a loaded state may sit on another device
            self.memory = self.memory.to(learner.device)

    def after_backward(self, learner: Learner) -> None:
        if self.memory is None:
            return  # first task: no past to protect
        n = len(self.memory.y)
        index = torch.randperm(n, generator=learner.generator)[: self.sample_size].to(learner.device)
        ref = self.memory.select(index)
        params = [p for p in learner.model.parameters() if p.requires_grad]
        ref_loss = learner.criterion(learner.forward(ref.x, ref.task_ids), ref.y)
        # autograd.grad, not backward: the current gradients in .grad must stay untouched.
        ref_grads = torch.autograd.grad(ref_loss, params, allow_unused=True)
        g, g_ref = _flatten([p.grad for p in params], params), _flatten(ref_grads, params)
        # Branch-free, so no host sync: the coefficient is 0 (g kept exactly) when g . g_ref >= 0.
        coef = (g @ g_ref).clamp(max=0) / (g_ref @ g_ref).clamp_min(1e-12)
        g = g - coef * g_ref
        for p, ref_grad, chunk in zip(params, ref_grads, g.split([p.numel() for p in params]), strict=True):
            if p.grad is not None:
                p.grad.copy_(chunk.view_as(p))
            elif ref_grad is not None:  # unused by the batch's loss, but the projection moves it
                p.grad = chunk.view_as(p).clone()

    def after_task(self, learner: Learner, task: Task) -> None:
        old = self.memory
        if old is None:
            self.memory = self._sample(learner, task, self.memory_size)
        elif self.policy == "reservoir":  # uniform over every sample seen so far
            self.memory = old.cat(self._sample(learner, task, self.memory_size)).smallest(self.memory_size)
        else:  # per-task: an equal quota for every task seen; earlier tasks give up slots to the new one
            tasks = old.task_ids.unique().tolist()
            quota = max(self.memory_size // (len(tasks) + 1), 1)
            memory = self._sample(learner, task, quota)
            for t in tasks:
                memory = old.select((old.task_ids == t).nonzero().squeeze(1)).smallest(quota).cat(memory)
            self.memory = memory

    def state_dict(self) -> dict[str, Any]:
        if self.memory is None:
            return {"memory_len": 0}
        state: dict[str, Any] = {f"memory.{k}": v for k, v in zip(_FIELDS, self.memory, strict=True)}
        state["memory_len"] = len(self.memory.y)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        has = state.get("memory_len", 0) > 0
        self.memory = _Memory(*(state[f"memory.{k}"] for k in _FIELDS)) if has else None

    def _sample(self, learner: Learner, task: Task, k: int) -> _Memory:
        """A uniform random ``k`` samples of the task's own training set, streamed in batches."""
        chosen: _Memory | None = None
        for batch in learner.batches(
            with_task_ids(task.train, task.index), shuffle=False, batch_size=learner.eval_batch_size
        ):
            keys = torch.rand(len(batch), generator=learner.generator).to(learner.device)
            part = _Memory(batch.x.detach(), batch.y, batch.task_ids, keys)
            chosen = part.smallest(k) if chosen is None else chosen.cat(part).smallest(k)
        assert chosen is not None  # a Task is never empty
        return chosen


def _flatten(grads: Sequence[torch.Tensor | None], params: Sequence[torch.Tensor]) -> torch.Tensor:
    """One vector of all gradients; a parameter without one contributes zeros."""
    return torch.cat(
        [(torch.zeros_like(p) if g is None else g).reshape(-1) for g, p in zip(grads, params, strict=True)]
    )
