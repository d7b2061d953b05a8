"""Training on the union of every task seen so far: the upper bound of what a method can keep."""

from __future__ import annotations

from typing import TYPE_CHECKING

from lifelong.core.strategy import Strategy
from lifelong.core.stream import concat_datasets, with_task_ids

if TYPE_CHECKING:
    from lifelong.core.learner import Learner
    from lifelong.core.stream import Task


class Joint(Strategy):
    """Trains on the union of all tasks seen so far (the upper bound; stores every sample).

    After the last task the model has been trained on the union of the whole stream, so its final
    row is the joint-training score; the earlier rows keep the matrix and its metrics defined. It
    reads the earlier tasks from the stream, so it has no state of its own to checkpoint.
    """

    name = "joint"
    supports = frozenset({"classifier"})
    exclusive = frozenset({"train_data"})

    def before_task(self, learner: Learner, task: Task) -> None:
        assert learner.stream is not None
        seen = learner.stream.tasks[: task.index + 1]
        learner.train_data = concat_datasets([with_task_ids(t.train, t.index) for t in seen])
