"""DER++ (Buzzega et al. 2020, "Dark Experience for General Continual Learning", arXiv 2004.07211).

Replay that remembers the model's own outputs: the buffer stores each sample's logits as they were
when it was trained on, and the current model is pulled back towards them (dark knowledge), plus
plain cross-entropy on a second draw of stored labels. Follows Mammoth's ``models/derpp.py``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from lifelong.core.distributed import local_share
from lifelong.core.strategy import Batch, Strategy
from lifelong.errors import LifelongError
from lifelong.strategies.buffers import ReplayBuffer

if TYPE_CHECKING:
    from lifelong.core.learner import Learner


class DERPP(Strategy):
    """Dark Experience Replay++: match stored logits (alpha) and labels (beta) of a reservoir buffer."""

    name = "der++"
    supports = frozenset({"classifier"})

    def __init__(
        self, alpha: float = 0.5, beta: float = 2.0, buffer_size: int = 200, minibatch_size: int = 32
    ) -> None:
        if alpha < 0 or beta < 0 or minibatch_size < 1:
            raise LifelongError("der++ needs alpha >= 0, beta >= 0 and minibatch_size >= 1")
        self.alpha, self.beta, self.minibatch_size = alpha, beta, minibatch_size
        self.buffer = ReplayBuffer(local_share(buffer_size), "reservoir")  # per process, as in replay

    def penalty(self, learner: Learner, batch: Batch, outputs: torch.Tensor) -> torch.Tensor | float:
        loss: torch.Tensor | float = 0.0
        if len(self.buffer):
            # Two draws, as in the paper: one for the logits term, one for the labels term. They
            # are the two halves of one random draw, so one forward pass serves both.
            old = self.buffer.sample(2 * self.minibatch_size, learner.generator)
            # As in Mammoth: stored inputs are raw, and augmented afresh each time they are replayed.
            logits, k = learner.forward(learner.augmented(old.x), old.task_ids), (len(old) + 1) // 2
            loss = self.alpha * F.mse_loss(logits[:k], old.extras["logits"][:k])
            if k < len(old):
                loss = loss + self.beta * learner.criterion(logits[k:], old.y[k:])
        # Stream-wise reservoir: no task boundaries needed, and the stored logits are the ones the
        # model produced while learning the sample, the knowledge worth keeping.
        raw_x = learner.raw_inputs
        raw = batch if raw_x is None or raw_x is batch.x else Batch(raw_x, batch.y, batch.task_ids)
        self.buffer.add(raw, generator=learner.generator, logits=outputs.detach())
        return loss

    def state_dict(self) -> dict[str, Any]:
        return self.buffer.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.buffer.load_state_dict(state)
