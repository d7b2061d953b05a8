"""What every command records after each task, through the same code: a line of ``metrics.jsonl``, the
same scores in TensorBoard, and the task's checkpoint (only the newest complete one is kept)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from lifelong.core.checkpoint import save_checkpoint
from lifelong.runs.folder import RunFolder, keep_only


class TaskLog:
    """One strategy's record of scores, task by task."""

    def __init__(
        self,
        folder: RunFolder,
        strategy: str,
        name: str,
        *,
        tensorboard: bool = False,
        average: str = "average_accuracy",
    ) -> None:
        self.folder, self.strategy, self.average = folder, strategy, average
        self.writer = folder.tensorboard(name) if tensorboard else None

    def task_done(
        self,
        task_names: Sequence[str],
        matrix: Sequence[Sequence[float | None]],
        watch: Mapping[str, float | None] | None = None,
    ) -> None:
        """Record the newest row of ``matrix`` (the scores on every task after the last one trained),
        and the watch sets' scores, by name, if any."""
        done, row = len(matrix), list(matrix[-1])
        line: dict[str, Any] = {"strategy": self.strategy, "after_task": done - 1, "scores": row}
        self.folder.log_metrics({**line, "watch": dict(watch)} if watch else line)
        if self.writer is None:
            return
        named = [("score/" + n, v) for n, v in zip(task_names, row, strict=True)]
        for tag, score in named + [("watch/" + n, v) for n, v in (watch or {}).items()]:
            if score is not None:
                self.writer.add_scalar(tag, score, global_step=done - 1)
        seen = [s for s in row[:done] if s is not None]
        if seen:
            self.writer.add_scalar(self.average, sum(seen) / len(seen), global_step=done - 1)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def commit_task(
    strategy_dir: Path,
    task: int,
    tensors: dict[str, torch.Tensor],
    state: dict[str, Any],
    files: Callable[[Path], None] | None = None,
) -> Path:
    """Write task ``task``'s checkpoint whole (or not at all), then drop the older ones.

    ``files`` writes what the checkpoint holds besides tensors and state (see `save_checkpoint`)."""
    folder = strategy_dir / f"task-{task}"
    save_checkpoint(folder, tensors, state, files)
    keep_only(strategy_dir, folder.name)
    return folder
