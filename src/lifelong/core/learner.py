"""The one training loop. Every strategy plugs into it through the hooks of `lifelong.core.strategy`.

Read `Learner.fit` and `Learner.train_task` top to bottom: that is the whole algorithm.
In-memory `TensorDataset`s take a fast path (the task moves to the device once, batches are index
slices of a random permutation); any other dataset goes through a `DataLoader`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from lifelong.core.checkpoint import flatten_state, unflatten_state
from lifelong.core.distributed import Processes, all_reduce_sum
from lifelong.core.distributed import resolve_device as resolve_device
from lifelong.core.state import load_strategies, restore_rng, rng_state, strategies_state
from lifelong.core.strategy import MASKED_LOGIT, Batch, Strategy, overriders
from lifelong.core.stream import DeviceCopy, versions_of, with_task_ids
from lifelong.errors import LifelongError

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

    from lifelong.core.stream import Stream, Task

OptimizerName = Literal["sgd", "adam", "adamw"]
OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "sgd": torch.optim.SGD,
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
}


@dataclass
class FitResult:
    """What `Learner.fit` measured: ``matrix[i][j]`` is the score on task j after training task i."""

    task_names: list[str]
    matrix: list[list[float]] = field(default_factory=list)
    initial_scores: list[float] = field(default_factory=list)
    train_seconds: float = 0.0
    eval_seconds: float = 0.0

    def __post_init__(self) -> None:
        # A result read back from a checkpoint is only as sound as the file: check its kinds.
        rows = self.matrix if isinstance(self.matrix, list) else [None]
        if not all(isinstance(row, list) and all(map(_is_score, row)) for row in rows) or not (
            isinstance(self.initial_scores, list) and all(map(_is_score, self.initial_scores))
        ):
            raise TypeError("the scores must be lists of numbers")
        if not (isinstance(self.task_names, list) and all(isinstance(n, str) for n in self.task_names)):
            raise TypeError("the task names must be a list of strings")


def takes_task_ids(model: nn.Module) -> bool:
    """Whether ``model``'s forward takes each sample's task id (``takes_task_ids = True`` on its class
    or on it). Read without `nn.Module.__getattr__`, whose miss raises and catches an exception: on a
    small model that cost as much as a layer, on every evaluation batch."""
    if type(model).__getattr__ is not nn.Module.__getattr__:  # a wrapper that forwards (torch.compile)
        return bool(getattr(model, "takes_task_ids", False))
    value = model.__dict__.get("takes_task_ids", getattr(type(model), "takes_task_ids", False))
    return value if isinstance(value, bool) else bool(getattr(model, "takes_task_ids", False))


def _is_score(value: object) -> bool:
    return value is None or (isinstance(value, int | float) and not isinstance(value, bool))


class Learner:
    """Trains one model on a stream of tasks, applying strategies through their hooks.

    Strategies read what they need from the learner: ``model``, ``device``, ``task``,
    ``train_data`` (replaceable in ``before_task``), ``optimizer``, ``generator`` (the run's RNG,
    so results repeat for a seed), ``forward``, ``criterion``, ``logits`` (the current
    training batch's logits before task-incremental masking), ``task_loss`` (its loss before
    any penalty), ``raw_inputs`` (its inputs before augmentation) and ``augmented`` (to augment
    replayed samples as training batches are).
    """

    def __init__(
        self,
        model: nn.Module,
        strategies: Sequence[Strategy] = (),
        *,
        epochs: int = 10,
        batch_size: int = 32,
        lr: float = 1e-3,
        optimizer: OptimizerName = "adam",
        device: str | torch.device = "auto",
        seed: int = 0,
        eval_batch_size: int = 1024,
        progress: Progress | None = None,
        precision: str = "no",
        processes: Processes | None = None,
        augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
    ) -> None:
        if epochs < 1:
            raise LifelongError(f"epochs must be at least 1, got {epochs}")
        if batch_size < 1:
            raise LifelongError(f"batch size must be at least 1, got {batch_size}")
        if not lr > 0:
            raise LifelongError(f"learning rate must be positive, got {lr}")
        if optimizer not in OPTIMIZERS:
            raise LifelongError(f"unknown optimizer '{optimizer}'; choose one of: {', '.join(OPTIMIZERS)}")
        self.processes = processes or Processes(device, precision)
        self.device = self.processes.device
        self.model = model.to(self.device)
        self.strategies = list(strategies)
        self.epochs, self.batch_size, self.lr = epochs, batch_size, lr
        self.optimizer_name = optimizer
        self.eval_batch_size = eval_batch_size
        self.generator = torch.Generator().manual_seed(seed)
        # Every process must draw the same batch order while strategies draw unequally (buffers of
        # different shards), so several processes order batches with a generator of their own.
        self.order_generator = (
            self.generator if self.processes.world == 1 else torch.Generator().manual_seed(seed)
        )
        # Applied to each training batch after replay mixed it, so old and new samples (and a
        # teacher's view of them) are augmented alike; drawn from `generator`, so runs repeat.
        self.augment = augment
        self.raw_inputs: torch.Tensor | None = None  # this training batch's inputs before augmentation
        self.progress = progress
        self.stream: Stream | None = None
        self.task: Task | None = None
        self.train_data: Dataset = TensorDataset(torch.empty(0))
        self.optimizer: torch.optim.Optimizer | None = None
        self._class_mask: torch.Tensor | None = None
        self._moved: DeviceCopy | None = None  # the dataset `batches` read last
        self.logits: torch.Tensor | None = None  # this training batch's logits before masking
        self.task_loss: torch.Tensor | None = None  # this training batch's loss before penalties

    # ---- the loop -------------------------------------------------------------------------------

    def fit(
        self,
        stream: Stream,
        *,
        start_task: int = 0,
        result: FitResult | None = None,
        on_task_end: Callable[[Learner, FitResult], None] | None = None,
    ) -> FitResult:
        """Train every task in order and evaluate every task after each one.

        ``start_task`` and ``result`` let a resumed run continue where a checkpoint left off.
        """
        if stream.normalize is not None and not any(
            getattr(m, "reads_pixels", False) for m in self.model.modules()
        ):
            raise LifelongError(
                f"{stream.name} holds uint8 pixels, and this model has no input layer that reads them; "
                "build it with build_model(..., normalize=stream.normalize) (a model of your own that reads "
                "uint8 itself says so with a module attribute reads_pixels = True)"
            )
        self.stream = stream
        self._class_mask = stream.class_mask().to(self.device) if stream.scenario == "task" else None
        result = result or FitResult([t.name for t in stream])
        if not result.initial_scores:  # the random-init baseline of forward transfer
            result.initial_scores = self._first_evaluation(stream)
        bar = (
            self.progress.add_task("tasks", total=len(stream), completed=start_task)
            if self.progress
            else None
        )
        for task in stream.tasks[start_task:]:
            started = time.perf_counter()
            self.train_task(task)
            result.train_seconds += time.perf_counter() - started
            started = time.perf_counter()
            result.matrix.append(self.evaluate_all())
            result.eval_seconds += time.perf_counter() - started
            if on_task_end is not None:
                on_task_end(self, result)
            if self.progress and bar is not None:
                self.progress.advance(bar)
        if self.progress and bar is not None:
            self.progress.remove_task(bar)
        return result

    def train_task(self, task: Task) -> None:
        self.task = task
        self.train_data = with_task_ids(task.train, task.index)
        for strategy in self.strategies:
            strategy.before_task(self, task)
        # `trained` is the module the training forward goes through: the model itself, or its
        # DDP / mixed-precision wrapper; strategies keep working on the plain `self.model`.
        trained, self.optimizer = self.processes.prepare(self.model, self.make_optimizer())
        self.model.train()
        epochs_bar = self._bar(f"{task.name} epochs", self.epochs)
        try:
            for epoch in range(self.epochs):
                self.train_epoch(trained, task, epoch)
                self._advance(epochs_bar)
        finally:
            self.processes.release(trained)
        self._done(epochs_bar)
        for strategy in self.strategies:
            strategy.after_task(self, task)

    def train_epoch(self, trained: nn.Module, task: Task, epoch: int) -> None:
        assert self.optimizer is not None
        # Only the hooks a strategy defines are called: at this scale the loop's Python is its cost.
        mixers, penalties, editors = (
            overriders(self.strategies, hook) for hook in ("train_batch", "penalty", "after_backward")
        )
        takes_ids = takes_task_ids(self.model)
        batch_bar = self._bar("batches", self._num_batches(self.train_data))
        loss = None
        for batch in self.batches(self.train_data):
            for strategy in mixers:
                batch = strategy.train_batch(self, batch)
            self.raw_inputs = batch.x
            if self.augment is not None:
                batch = Batch(self.augmented(batch.x), batch.y, batch.task_ids)
            with self.processes.autocast():
                # The unmasked logits stay readable: distillation needs the other tasks' heads too.
                self.logits = trained(batch.x, batch.task_ids) if takes_ids else trained(batch.x)
                outputs = self.mask(self.logits, batch.task_ids)
                loss = self.task_loss = self.criterion(outputs, batch.y)
                for strategy in penalties:
                    extra = strategy.penalty(self, batch, outputs)
                    if isinstance(extra, torch.Tensor):  # a plain 0.0 would only add an autograd node
                        loss = loss + extra
            self.optimizer.zero_grad(set_to_none=True)
            self.processes.backward(loss)
            for strategy in editors:
                strategy.after_backward(self)
            self.optimizer.step()
            self.task_loss = self.raw_inputs = None  # a penalty outside this loop must not see stale ones
            self._advance(batch_bar)
        # One check per epoch, of its last step: a per-step check would force a device sync on every
        # batch, and a step whose loss was NaN left NaN weights behind, so every later loss is NaN too.
        # (A step that leaves the weights alone, one that fp16 loss scaling skips, is no divergence.)
        # Summed over processes, so all of them stop together.
        last_loss = 0.0 if loss is None else all_reduce_sum(loss.detach().float()).item()
        if not math.isfinite(last_loss):
            raise LifelongError(
                f"loss became {last_loss} in task '{task.name}', epoch {epoch + 1}; "
                "lower the learning rate (--lr) or the strategy's penalty strength"
            )
        self._done(batch_bar)

    # ---- pieces strategies use --------------------------------------------------------------------

    def augmented(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` as training batches see it: augmented when the run augments (replayed samples too)."""
        return x if self.augment is None else self.augment(x, self.generator)

    def forward(self, x: torch.Tensor, task_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Logits; in the task-incremental scenario, masked to each sample's own task classes."""
        return self.mask(self.model_logits(x, task_ids), task_ids)

    def model_logits(
        self, x: torch.Tensor, task_ids: torch.Tensor | None = None, module: nn.Module | None = None
    ) -> torch.Tensor:
        """The model's raw logits (through ``module``, the model's training wrapper, when given).
        A model with ``takes_task_ids = True`` (a multi-head network, per-task adapters) is also
        given each sample's task id."""
        module = module or self.model
        if takes_task_ids(self.model):
            logits: torch.Tensor = module(x, task_ids)
        else:
            logits = module(x)
        return logits

    def mask(self, logits: torch.Tensor, task_ids: torch.Tensor | None) -> torch.Tensor:
        if self._class_mask is not None and task_ids is not None:
            logits = logits.masked_fill(~self._class_mask[task_ids], MASKED_LOGIT)
        return logits

    def criterion(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(outputs, targets)

    def make_optimizer(self) -> torch.optim.Optimizer:
        """A fresh optimizer per task, over whatever is trainable now (adapters may change it)."""
        params = [p for p in self.model.parameters() if p.requires_grad]
        if not params:
            raise LifelongError("the model has no trainable parameters; unfreeze some or add an adapter")
        return OPTIMIZERS[self.optimizer_name](params, lr=self.lr)

    def batches(
        self, data: Dataset, *, shuffle: bool = True, batch_size: int | None = None
    ) -> Iterator[Batch]:
        """Batches of ``batch_size`` samples in all (this process's share of each, in a multi-process run)."""
        size = batch_size or self.batch_size
        n = len(data)  # type: ignore[arg-type]
        if not isinstance(data, TensorDataset):
            shares = self._shares(n, size, shuffle, torch.device("cpu"))
            for item in DataLoader(data, batch_sampler=[share.tolist() for share in shares if len(share)]):
                x, y, *rest = (v.to(self.device, non_blocking=True) for v in item)
                default_id = self.task.index if self.task is not None else 0
                yield Batch(x, y, rest[0] if rest else torch.full_like(y, default_id))
            return
        moved = self._on_device_once(data)
        x, y, *rest = moved.tensors
        t = rest[0] if rest else torch.zeros_like(y)
        if not shuffle and self.processes.world == 1:  # slices are views: no copy
            for s in range(0, n, size):
                yield Batch(x[s : s + size], y[s : s + size], t[s : s + size])
            return
        one_task = moved.one_task
        full = t[:size]
        for idx in self._shares(n, size, shuffle, self.device):
            m = idx.shape[0]  # not len(): Tensor.__len__ is a Python call, and this is every step
            if m:
                yield Batch(x[idx], y[idx], (full if m == size else t[:m]) if one_task else t[idx])

    def _on_device_once(self, data: TensorDataset) -> DeviceCopy:
        versions = versions_of(data)
        moved = self._moved
        if moved is None or moved.data is not data or moved.versions != versions:
            self._moved = moved = DeviceCopy(data, versions, [self._on_device(t) for t in data.tensors])
        return moved

    def _shares(self, n: int, size: int, shuffle: bool, device: torch.device) -> list[torch.Tensor]:
        """Sample indices (on ``device``) of each batch of ``size``: this process's share of each, all
        made at once (views of one permutation; a generator's resume per step costs more)."""
        order = torch.randperm(n, generator=self.order_generator) if shuffle else torch.arange(n)
        order = order if order.device == device else order.to(device, non_blocking=True)
        world = self.processes.world
        starts: Sequence[int] = range(0, n, size)
        if shuffle and world > 1:
            # A global batch too small to give every process a sample is dropped by all of them
            # alike: a process with nothing to back-propagate would leave the others waiting.
            starts = [s for s in starts if min(size, n - s) >= world]
        if world == 1:
            return [order[s : s + size] for s in starts]
        return [self.processes.share(order[s : s + size]) for s in starts]

    def _on_device(self, tensor: torch.Tensor) -> torch.Tensor:
        """The tensor on the learner's device (itself if already there: a no-op `.to` still dispatches)."""
        return tensor if tensor.device == self.device else tensor.to(self.device, non_blocking=True)

    # ---- evaluation -------------------------------------------------------------------------------

    def evaluate(self, task: Task) -> float:
        """Accuracy on the task's test set (task-incremental: among the task's own classes)."""
        return self.evaluate_tasks([task])[0]

    @torch.inference_mode()
    def evaluate_tasks(self, tasks: Sequence[Task]) -> list[float]:
        """Accuracy on each task's test set, the model in eval mode once for all of them."""
        was_training = self.model.training
        self.model.eval()
        try:
            counts = [self._count_correct(task) for task in tasks]
        finally:
            self.model.train(was_training)
        # Each process scored its share of the test sets; the sums make one score for the whole of each.
        # On the device: NCCL reduces only GPU tensors.
        summed = all_reduce_sum(torch.tensor(counts, dtype=torch.float64, device=self.device)).tolist()
        return [correct / max(total, 1) for correct, total in summed]

    def _count_correct(self, task: Task) -> tuple[int, int]:
        """(correct, total) predictions on this process's share of the task's test set."""
        correct = total = 0
        # Task ids only where a class mask or the model reads them (`forward` gets None otherwise):
        # the scoring of a small model is mostly calls.
        ids = self._class_mask is not None or takes_task_ids(self.model)
        data = with_task_ids(task.test, task.index) if ids else task.test
        for batch in self.batches(data, shuffle=False, batch_size=self.eval_batch_size):
            if ids and not isinstance(task.test, TensorDataset):
                batch.task_ids.fill_(task.index)
            predictions = self.forward(batch.x, batch.task_ids if ids else None).argmax(dim=1)
            correct += int((predictions == batch.y).sum())
            total += len(batch)
        return correct, total

    def _first_evaluation(self, stream: Stream) -> list[float]:
        """`evaluate_all`, where a model that does not fit the data fails first: say so in one line."""
        try:
            return self.evaluate_all()
        except (RuntimeError, TypeError, ValueError) as err:
            x = stream.tasks[0].test[0][0]
            raised = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise LifelongError(
                f"the model does not fit the inputs of '{stream.name}' (one sample: shape "
                f"{tuple(x.shape)}, {x.dtype}): {raised}; use a model made for them, e.g. "
                f"--model {stream.default_model}"
            ) from None

    def evaluate_all(self) -> list[float]:
        if self.stream is None:
            raise LifelongError("evaluate_all needs a stream; call fit(stream) first")
        return self.evaluate_tasks(self.stream.tasks)

    # ---- checkpoint state -------------------------------------------------------------------------

    def checkpoint_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Model weights, every strategy's state and every RNG, as (tensors, JSON) for a checkpoint. No
        optimizer: each task starts a fresh one (`make_optimizer`), so a resume at a task boundary needs none."""
        tensors: dict[str, torch.Tensor] = {}
        generators = {"generator": self.generator}
        if self.order_generator is not self.generator:
            generators["order_generator"] = self.order_generator
        tree = {
            "model": flatten_state(self.model.state_dict(), "model", tensors),
            **strategies_state(self.strategies, tensors),
            **rng_state(tensors, generators),
        }
        return tensors, tree

    def restore_state(
        self, tensors: dict[str, torch.Tensor], tree: dict[str, Any], stream: Stream | None = None
    ) -> None:
        """Undo `checkpoint_state`; ``stream`` is the run's (a strategy that wraps the model needs it)."""
        self.stream = stream or self.stream
        load_strategies(self.strategies, tree, tensors)
        for strategy in self.strategies:  # one that wraps the model (lora) rebuilds the wrapper first
            strategy.restore_model(self)
        self.model.load_state_dict(unflatten_state(tree["model"], tensors))
        restore_rng(tree, tensors, {"generator": self.generator, "order_generator": self.order_generator})

    # ---- progress bars (no-ops without a Rich Progress) ---------------------------------------------

    def _num_batches(self, data: Dataset) -> int:
        return -(-len(data) // self.batch_size)  # type: ignore[arg-type]

    def _bar(self, label: str, total: int) -> TaskID | None:
        return self.progress.add_task(label, total=total) if self.progress else None

    def _advance(self, bar: TaskID | None) -> None:
        if self.progress and bar is not None:
            self.progress.advance(bar)

    def _done(self, bar: TaskID | None) -> None:
        if self.progress and bar is not None:
            self.progress.remove_task(bar)
