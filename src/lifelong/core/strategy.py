"""The strategy hooks: everything a continual-learning method needs from the loops that train with it.

A strategy never runs its own loop. The Learner calls the classic hooks in order (see DESIGN.md);
`ContinualTrainer` (``lifelong.llm``) calls the ``lm_`` hooks, the same method's causal-LM form. So
one strategy object serves the native loop, the Hugging Face Trainer and distributed runs alike.
Every hook is optional; the defaults do nothing. What a strategy may read of its loop is declared
where the loop is: `Learner` for the classic hooks, `LMTrainer` here for the causal-LM ones.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import torch

if TYPE_CHECKING:
    from lifelong.core.learner import Learner
    from lifelong.core.stream import Task

# Logits of classes a sample may not take (task-incremental masking): a large finite value, not
# -inf, so softmax-based penalties (KL) stay finite.
MASKED_LOGIT = -1e4
# The label of a position that carries no loss: PyTorch's cross-entropy default, and Hugging Face's.
IGNORE_INDEX = -100


@dataclass
class Batch:
    """One training batch: inputs, labels, and the task each sample came from (for masking)."""

    x: torch.Tensor
    y: torch.Tensor
    task_ids: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)

    def cat(self, other: Batch) -> Batch:
        """This batch followed by ``other`` (how replay mixes old samples in)."""
        return Batch(
            torch.cat([self.x, other.x]),
            torch.cat([self.y, other.y]),
            torch.cat([self.task_ids, other.task_ids]),
        )


# (logits [T, V] in float32, next-token labels [T] with IGNORE_INDEX where no loss, a generator) ->
# one scalar per sequence; `LMTrainer.importance` averages a power of its gradient over sequences.
SequenceMeasure = Callable[[torch.Tensor, torch.Tensor, torch.Generator], torch.Tensor]


@dataclass
class LMBatch:
    """One causal-LM micro-batch, as `ContinualTrainer` hands it to `Strategy.lm_penalty`.

    ``inputs`` are what the model was called with (``input_ids``, ``attention_mask``, ``labels``, ...);
    ``labels`` the next-token labels (``IGNORE_INDEX``: no loss there), or None. ``distill_mask``
    (bool, aligned as the labels) marks the positions of soft examples, learned from a teacher
    instead of a label; a strategy that learns them sets ``distilled`` (the trainer refuses a batch
    of soft rows no strategy learned).

    The two scales put a term on the LM loss's own footing, however the Trainer normalises it:
    ``per_token`` turns a *sum over tokens* into the LM loss's normalisation (one over this
    micro-batch's labelled tokens, or over the whole accumulated batch's when the model normalises
    by ``num_items_in_batch``), and ``per_step`` is this micro-batch's share of a term meant once per
    optimizer step (a quadratic penalty on the weights): with gradient accumulation the update then
    does not depend on how a batch is cut.
    """

    inputs: dict[str, Any]
    labels: torch.Tensor | None
    distill_mask: torch.Tensor | None = None
    per_token: torch.Tensor | float = 1.0
    per_step: float = 1.0
    distilled: bool = False


class LMTrainer(Protocol):
    """What the causal-LM hooks may use of the loop that drives them: `ContinualTrainer`, or outside
    any training `lifelong.llm.fisher.OutsideTrainer` (for `Strategy.lm_protect`)."""

    @property
    def model(self) -> Any:
        """The model being trained, unwrapped (a PEFT model when adapters train)."""

    def importance(
        self,
        data: Any,
        measure: SequenceMeasure,
        *,
        power: int = 2,
        samples: int | None = None,
        trainable_only: bool = True,
        what: str = "the importance",
    ) -> dict[str, torch.Tensor]:
        """Mean over sequences of ``data`` of ``|d measure / d theta|^power`` for the trainable (or all)
        parameters; ``samples`` caps the sequences (drawn at random; the loop's default when None)."""
        ...

    def note(self, key: str, value: torch.Tensor) -> None:
        """Log the running mean of ``value`` under ``key`` with the training loss."""


class Strategy:
    """Base class: override only the hooks the method needs.

    ``name`` is the registry name. ``exclusive`` lists what only one strategy in a composition may
    own (``"train_data"`` for strategies that replace the task's training set, ``"gradients"`` for
    those that rewrite gradients); two strategies that claim the same thing are refused together.
    ``aliases`` maps option names users type (``lambda``) to constructor arguments (``lambda_ewc``).
    ``supports`` says what the strategy runs on: ``"classifier"`` (the Learner's hooks) and/or
    ``"causal-lm"`` (the ``lm_`` hooks, driven by `ContinualTrainer`); a loop refuses the others.
    ``in_default_run``: whether ``lifelong run`` with no ``--strategy`` compares it.
    ``whole_parameters``: the strategy keeps copies of the weights (anchors, a teacher), so it cannot
    run where each process holds only a shard of them (FSDP, DeepSpeed ZeRO-3).
    ``lm_task_data``: its `lm_after_task` measures the task's own data (EWC's Fisher), so a causal-LM
    loop prepares that data for it (and need not for others).
    """

    name: ClassVar[str] = "strategy"
    exclusive: ClassVar[frozenset[str]] = frozenset()
    aliases: ClassVar[dict[str, str]] = {}
    supports: ClassVar[frozenset[str]] = frozenset({"classifier"})
    in_default_run: ClassVar[bool] = True
    whole_parameters: bool = False
    lm_task_data: ClassVar[bool] = False

    # ---- the Learner's hooks (classifiers) -----------------------------------------------------------

    def before_task(self, learner: Learner, task: Task) -> None:
        """Called before training a task; may replace ``learner.train_data``."""

    def train_batch(self, learner: Learner, batch: Batch) -> Batch:
        """May add replayed samples to the batch."""
        return batch

    def penalty(self, learner: Learner, batch: Batch, outputs: torch.Tensor) -> torch.Tensor | float:
        """A term added to the task loss (EWC, distillation, ...)."""
        return 0.0

    def after_backward(self, learner: Learner) -> None:
        """May edit gradients before the optimizer step (gradient projection, ...)."""

    def after_task(self, learner: Learner, task: Task) -> None:
        """Called after training a task (Fisher, buffer update, snapshot, ...)."""

    def restore_model(self, learner: Learner) -> None:
        """On resume, after `load_state_dict` and before the checkpoint's model weights load: a
        strategy that wraps the model (lora) rebuilds the wrapper, so those weights fit."""

    # ---- ContinualTrainer's hooks (causal LMs) -------------------------------------------------------

    def lm_before_task(self, trainer: LMTrainer) -> None:
        """Called before training a task (one ``train()``): bind anchors, snapshot a teacher, ..."""

    def lm_penalty(self, trainer: LMTrainer, batch: LMBatch, outputs: Any) -> torch.Tensor | float:
        """A term added to the LM loss of one micro-batch (``outputs.logits``: the model's logits).

        Put it on the LM loss's footing with the batch's scales: a sum over tokens times
        ``batch.per_token``, a once-per-step term times ``batch.per_step`` (see `LMBatch`).
        """
        return 0.0

    def lm_loss_weight(self, trainer: LMTrainer, batch: LMBatch) -> float:
        """The factor on the LM loss itself, asked after `lm_penalty` (LwF's mix weighs it 1 - alpha);
        the factors of all strategies multiply."""
        return 1.0

    def lm_after_backward(self, trainer: LMTrainer) -> None:
        """Once per optimizer step, when the step's gradients are complete (accumulated, clipped) and
        before the step: may read or edit them (SI's path integral)."""

    def lm_after_task(self, trainer: LMTrainer, data: Any) -> None:
        """Called after training a task; ``data`` is the task's own data (packed blocks or a Dataset),
        e.g. what EWC measures its Fisher on, or None when the loop has none."""

    def lm_protect(self, trainer: LMTrainer, data: Any) -> None:
        """The model already learned ``data`` outside this loop (a first task trained without the
        strategy, or what a given model was trained on): protect it as `lm_after_task` would, unless
        the strategy already protects something. Default: nothing to do."""

    # ---- state ----------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Tensors plus JSON-able values only, so checkpoints need no pickle."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned."""

    def __repr__(self) -> str:
        return self.name


def overriders(strategies: Sequence[Strategy], hook: str) -> list[Strategy]:
    """The strategies whose ``hook`` is their own (by class or set on the object), in order: a loop
    calls only these, the base class's hooks doing nothing."""
    default = getattr(Strategy, hook)
    return [s for s in strategies if getattr(type(s), hook) is not default or hook in vars(s)]
