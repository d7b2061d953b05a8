"""Learning without Forgetting (Li & Hoiem 2016), in the seed's form.

The model as it was before the current task, frozen, is the teacher: on every batch its softened
outputs (temperature T) are matched by the current model through a KL divergence. The seed's loss is
``alpha * T^2 * KL(old || new) + (1 - alpha) * task_loss``; the Learner adds penalties to the task
loss, so `penalty` returns ``alpha * T^2 * KL - alpha * task_loss`` and the total is the seed's mix.

Which logits are distilled depends on the scenario: class-incremental, only the classes of earlier
tasks (the new classes have nothing to keep); task-incremental, each earlier task's head as its own
softmax; domain-incremental, every logit.

A causal LM (`ContinualTrainer`) distills every next-token distribution over the vocabulary, the same
KL averaged per token, at the positions whose label is not -100; the teacher is the model as it was
when the task began (only its trainable tensors when adapters train on a frozen base: see
`FrozenTeacher`). The mix is the seed's, ``(1 - alpha) * LM loss + alpha * T^2 * KL``. Rows of soft
examples carry no label and are learned by the KL alone, at the positions their distill mask
marks; those are apart from the labelled ones, so the mix there is ``LM loss + alpha / (1 - alpha) *
T^2 * KL``: the seed's ratio, at plain fine-tuning's step size.

The teacher runs once per step by default (``cache=none``: the exact KL). When the same examples
come back every epoch, ``cache=topk`` runs it once per example per task and keeps, per position, its
``k`` most likely next tokens and ``samples`` tokens drawn from the rest, up to ``cache_mb`` MB
(`lifelong.strategies.teacher_cache`: the KL from those, unbiased); the classifier form has no cache.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from lifelong.core.strategy import IGNORE_INDEX, MASKED_LOGIT, Batch, Strategy
from lifelong.errors import LifelongError
from lifelong.strategies.teacher import FrozenTeacher, forward_inputs, frozen_copy
from lifelong.strategies.teacher_cache import TopKCache, distilled_rows, kept_distillation

if TYPE_CHECKING:
    from lifelong.core.learner import Learner
    from lifelong.core.strategy import LMBatch, LMTrainer
    from lifelong.core.stream import Task

_PREFIX = "teacher."
Cache = Literal["none", "topk"]


class LwF(Strategy):
    """Learning without Forgetting: the frozen previous model's softened outputs teach the current one."""

    name = "lwf"
    supports = frozenset({"classifier", "causal-lm"})

    def __init__(
        self,
        alpha: float = 0.5,
        temperature: float = 2.0,
        cache: Cache = "none",
        k: int = 32,
        samples: int = 32,
        cache_mb: int = 1024,
    ) -> None:
        if not 0.0 <= alpha <= 1.0:
            raise LifelongError(f"lwf alpha is a mix weight in [0, 1], got {alpha}; try alpha=0.5")
        if not temperature > 0:
            raise LifelongError(f"lwf temperature must be positive, got {temperature}; try temperature=2")
        if cache not in ("none", "topk"):
            raise LifelongError(f"lwf cache is '{cache}'; use one of: none, topk")
        for name, value, least, usual in (
            ("k", k, 1, 32),
            ("samples", samples, 0, 32),
            ("cache_mb", cache_mb, 1, 1024),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise LifelongError(
                    f"lwf {name} must be a whole number of at least {least}, got {value!r}; try {usual}"
                )
        self.alpha, self.temperature = alpha, temperature
        self.cache, self.k, self.samples, self.cache_mb = cache, k, samples, cache_mb
        self.whole_parameters = alpha > 0  # the teacher is a copy of the weights
        self.teacher: nn.Module | None = None
        self.heads: torch.Tensor | None = None  # bool [H, C]: the logits each distilled softmax covers
        self._columns_of: torch.Tensor | None = None  # the one-row `heads` that `_column_index` lists
        self._column_index = torch.empty(0, dtype=torch.long)
        self._pending: dict[str, torch.Tensor] | None = None  # teacher weights loaded, not yet rebuilt
        self.lm_teacher: FrozenTeacher | None = None  # the causal-LM form's, for the task in training
        self.lm_cache: TopKCache | None = None  # its kept targets per example (cache=topk)

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

    @classmethod
    def token_distillation(
        cls, student: torch.Tensor, teacher: torch.Tensor, positions: torch.Tensor | None, temperature: float
    ) -> tuple[torch.Tensor, int]:
        """(mean per-token KL at ``temperature``, tokens) of a causal LM's logits ``[B, L, V]``, over the
        next-token positions marked in ``positions`` (bool, aligned as the labels: the token predicted),
        all of them when None: `distillation_loss` with each position as a sample."""
        keep = cls._keep(positions)
        flat_new, flat_old = distilled_rows(student, keep), distilled_rows(teacher, keep)
        count = flat_new.shape[0]
        if count == 0:
            return student.sum() * 0.0, 0
        return cls.distillation_loss(flat_new, flat_old, None, temperature), count

    # ---- hooks -------------------------------------------------------------------------------------

    def before_task(self, learner: Learner, task: Task) -> None:
        if self.cache != "none":
            raise LifelongError("lwf cache=topk is for language models (ContinualTrainer); drop it here")
        self.teacher, self._pending, self.heads = None, None, None
        if task.index == 0 or self.alpha == 0:
            return  # nothing learned yet: the first task trains on the plain task loss
        self.teacher = frozen_copy(learner.model)
        self.heads = self._old_heads(learner, task)

    def penalty(self, learner: Learner, batch: Batch, outputs: torch.Tensor) -> torch.Tensor | float:
        if self.alpha == 0:
            return 0.0
        teacher = self._teacher(learner)
        if teacher is None:
            return 0.0
        with torch.inference_mode():  # the one extra forward LwF costs; a copy of its own, so safe
            old = teacher(batch.x)
        # Unmasked: in the task-incremental scenario the old heads are what must be distilled.
        new = learner.logits if learner.logits is not None else outputs
        heads = self.heads
        if heads is not None and len(heads) == 1:  # one softmax: its columns, not two masked copies
            columns = self._columns(heads)
            new, old, heads = new.index_select(1, columns), old.index_select(1, columns), None
        kd = self.distillation_loss(new, old, heads, self.temperature)
        # alpha*T^2*KL - alpha*task_loss: added to the Learner's task loss this is the seed's mix.
        task_loss = learner.task_loss  # the Learner's own, not computed twice
        if task_loss is None:  # called outside the Learner's loop
            task_loss = learner.criterion(outputs, batch.y)
        return self.alpha * (self.temperature**2 * kd - task_loss)

    # ---- the causal-LM hooks ----------------------------------------------------------------------

    def lm_before_task(self, trainer: LMTrainer) -> None:
        # Every task, the first included: a given model already knows something worth keeping.
        self.lm_teacher = FrozenTeacher(trainer.model) if self.alpha > 0 else None
        self.lm_cache = None
        if self.lm_teacher is not None and self.cache == "topk":
            self.lm_cache = TopKCache(self.k, self.samples, self.temperature, self.cache_mb * 2**20)

    def lm_penalty(self, trainer: LMTrainer, batch: LMBatch, outputs: Any) -> torch.Tensor | float:
        if self.lm_teacher is None:
            return 0.0
        soft = batch.distill_mask
        if soft is not None and self.alpha >= 1:
            raise LifelongError("with soft examples lwf alpha must be below 1 (1 learns no label); try 0.5")
        batch.distilled = True
        # With a distill mask the teacher is asked only on the rows it marks (e.g. the soft ones).
        rows = None if soft is None else soft[:, 1:].any(dim=1).nonzero().squeeze(1)
        if rows is not None and len(rows) == 0:
            return 0.0
        if soft is None or rows is None:
            labels = batch.labels
            student, positions = outputs.logits, None if labels is None else labels != IGNORE_INDEX
        else:
            student, positions = outputs.logits[rows], soft[rows]
        kd_mean, count = self._lm_distillation(trainer, batch.inputs, rows, student, positions)
        kd = kd_mean * count * batch.per_token  # back to a sum, then the LM loss's own normalisation
        trainer.note("distill_kl", kd_mean)
        if soft is None:
            return self.alpha * self.temperature**2 * kd  # the seed's mix, with `lm_loss_weight`
        # Distilled positions marked apart from the labels: the LM loss keeps plain fine-tuning's step
        # size (the seed's mix would shrink it by 1 - alpha) and the KL keeps the seed's ratio.
        return self.alpha / (1 - self.alpha) * self.temperature**2 * kd

    def lm_loss_weight(self, trainer: LMTrainer, batch: LMBatch) -> float:
        return 1 - self.alpha if self.lm_teacher is not None and batch.distill_mask is None else 1.0

    def lm_after_task(self, trainer: LMTrainer, data: Any) -> None:
        self.lm_teacher, self.lm_cache = None, None  # frees the copy; the next task snapshots anew

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
    def _keep(positions: torch.Tensor | None) -> torch.Tensor | None:
        """The next-token positions to distill, None for all (e.g. packed blocks: no copy of the logits)."""
        return None if positions is None or bool(positions[:, 1:].all()) else positions[:, 1:]

    def _lm_distillation(
        self,
        trainer: LMTrainer,
        inputs: dict[str, Any],
        rows: torch.Tensor | None,
        student: torch.Tensor,
        positions: torch.Tensor | None,
    ) -> tuple[torch.Tensor, int]:
        """(mean per-token KL, tokens) against the teacher, run now or read from the top-k cache."""
        teacher = self.lm_teacher
        assert teacher is not None

        def logits() -> torch.Tensor:
            return teacher.logits(trainer.model, inputs, rows)

        if self.lm_cache is None:
            return self.token_distillation(student, logits(), positions, self.temperature)
        keep = self._keep(positions)
        count = student.shape[0] * (student.shape[1] - 1) if keep is None else int(keep.sum())
        if count == 0:
            return student.sum() * 0.0, 0
        targets = self.lm_cache.targets(forward_inputs(inputs, rows), keep, logits)
        return kept_distillation(student, keep, targets, self.temperature), count

    def _teacher(self, learner: Learner) -> nn.Module | None:
        if self.teacher is None and self._pending is not None:
            teacher = frozen_copy(learner.model)
            teacher.load_state_dict(self._pending)
            self.teacher, self._pending = teacher, None
        if self.heads is not None and self.heads.device != learner.device:
            self.heads = self.heads.to(learner.device)
        return self.teacher

    def _columns(self, heads: torch.Tensor) -> torch.Tensor:
        """The logits one distilled softmax covers, found once per mask (a device sync on a GPU)."""
        if self._columns_of is not heads:
            self._columns_of, self._column_index = heads, heads[0].nonzero().squeeze(1)
        return self._column_index

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
