"""Watch the old domains while training a new one (the seed's "evaluate regularly").

`ForgettingCallback` measures perplexity on every domain it is given (the earlier ones) when a task
starts, every ``every`` optimizer steps, and when the task ends. The numbers go through the
Trainer's own ``log``, so TensorBoard, W&B, MLflow or whatever ``report_to`` names receive them as
``perplexity/<domain>`` with no extra setup. With ``stop_ratio`` it stops the task early once an old
domain's perplexity exceeds ``stop_ratio`` times its value at the start of the task.

``ContinualTrainer`` attaches it by itself; with a plain ``transformers.Trainer`` use
``ForgettingCallback(...).attach(trainer)`` (a callback alone cannot reach ``Trainer.log``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from lifelong.errors import LifelongError
from lifelong.llm.data import as_blocks
from lifelong.llm.perplexity import perplexity

if TYPE_CHECKING:
    from torch import nn
    from transformers import Trainer, TrainerControl, TrainerState, TrainingArguments


@dataclass
class EarlyStop:
    """Why a task stopped early: which domain, how far its perplexity rose, at which step."""

    domain: str
    ratio: float
    step: int


class ForgettingCallback(TrainerCallback):
    """Perplexity on earlier domains every ``every`` steps and at task end, logged via ``Trainer.log``."""

    def __init__(
        self,
        domains: Mapping[str, Any],
        every: int | None = None,
        stop_ratio: float | None = None,
        batch_size: int = 16,
        max_blocks: int | None = None,
        prefix: str = "perplexity/",
    ) -> None:
        if every is not None and every < 1:
            raise LifelongError(f"evaluate-every must be a positive number of steps, got {every}")
        if stop_ratio is not None and not stop_ratio > 1:
            raise LifelongError(
                f"stop ratio must be above 1 (stop when perplexity rises past ratio x its start), got {stop_ratio}; try 1.5"
            )
        # Blocks are read once here, not on every evaluation.
        self.domains = {name: as_blocks(data) for name, data in domains.items()}
        self.every, self.stop_ratio = every, stop_ratio
        self.batch_size, self.max_blocks, self.prefix = batch_size, max_blocks, prefix
        self.trainer: Trainer | None = None
        self.baseline: dict[str, float] = {}
        self.latest: dict[str, float] = {}
        self.history: list[dict[str, Any]] = []  # {"step": s, "<domain>": perplexity, ...}
        self.stopped: EarlyStop | None = None

    def attach(self, trainer: Trainer) -> ForgettingCallback:
        """Add this callback to ``trainer`` and log through it."""
        if self not in trainer.callback_handler.callbacks:
            trainer.add_callback(self)
        self.trainer = trainer
        return self

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        return {
            name: perplexity(model, blocks, self.batch_size, self.max_blocks)
            for name, blocks in self.domains.items()
        }

    # ---- events ------------------------------------------------------------------------------------

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self.trainer is None:
            raise LifelongError(
                "ForgettingCallback is not attached to a trainer; use ForgettingCallback(...).attach(trainer)"
            )
        self.stopped = None
        self.baseline = self.evaluate(kwargs["model"]) if self.domains else {}
        self.latest = dict(self.baseline)
        self._record(state, self.baseline)

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self.every and self.domains and state.global_step % self.every == 0:
            self._measure(state, control, kwargs["model"])

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if not self.domains:
            return
        if self.history and self.history[-1]["step"] == state.global_step and len(self.history) > 1:
            return  # the last step was just measured
        self._measure(state, control, kwargs["model"])

    # ---- pieces ------------------------------------------------------------------------------------

    def _measure(self, state: TrainerState, control: TrainerControl, model: nn.Module) -> None:
        self.latest = self.evaluate(model)
        self._record(state, self.latest)
        if self.stop_ratio is None or self.stopped is not None:
            return
        for name, value in self.latest.items():
            ratio = value / self.baseline[name]
            if ratio > self.stop_ratio:
                self.stopped = EarlyStop(name, ratio, state.global_step)
                control.should_training_stop = True
                break

    def _record(self, state: TrainerState, values: dict[str, float]) -> None:
        self.history.append({"step": state.global_step, **values})
        if self.trainer is not None:
            self.trainer.log({f"{self.prefix}{name}": value for name, value in values.items()})


def quiet_logs(trainer: Trainer, progress: bool) -> None:
    """No log dicts on the terminal (the scores are in the results): the Trainer's progress bar alone
    when ``progress``, else nothing (``TrainingArguments(disable_tqdm=...)`` hides the bar itself)."""
    trainer.remove_callback(PrinterCallback)  # it prints every log dict to stdout
    if progress:
        trainer.remove_callback(ProgressCallback)
        trainer.add_callback(_BarOnly())


class _BarOnly(ProgressCallback):
    """The Trainer's progress bar without the log dicts it writes under it."""

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
        return None
