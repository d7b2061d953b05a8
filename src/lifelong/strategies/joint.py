"""Training on the union of every task seen so far: the upper bound of what a method can keep."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch.utils.data import Dataset

from lifelong.strategies.base import Strategy
from lifelong.stream import concat_datasets

if TYPE_CHECKING:
    from lifelong.learner import Learner
    from lifelong.stream import Task


class Joint(Strategy):
    """Trains on the union of all tasks seen so far (the upper bound; stores every sample).

    After the last task the model has been trained on the union of the whole stream, so its final
    row is the joint-training score; the earlier rows keep the matrix and its metrics defined.
    """

    name = "joint"
    exclusive = frozenset({"train_data"})

    def __init__(self) -> None:
        self.seen: list[Dataset] = []

    def before_task(self, learner: Learner, task: Task) -> None:
        self.seen.append(learner.train_data)
        learner.train_data = concat_datasets(self.seen)

    def state_dict(self) -> dict[str, Any]:
        # The seen data are the stream's own tasks; a resumed run rebuilds them from the stream.
        return {"tasks_seen": len(self.seen)}
