"""`ContinualTrainer`: the Hugging Face ``Trainer`` with the project's strategies in its loss.

Each ``train()`` (or `ContinualTrainer.train_task`) call is one task. The strategies are the same
objects as on the classic side, driven for causal LMs:

- `EWC <lifelong.strategies.EWC>`: after a task, the diagonal Fisher of the trainable parameters
  from the causal-LM loss *per sequence* (one gradient per packed block: the square of a batch
  gradient is not a mean of squares), ``empirical`` (the text's own next tokens) or ``sampled``
  (next tokens drawn from the model). Later tasks add EWC's quadratic penalty, the very object
  the classic side uses (``EWC.consolidate`` / ``EWC.ewc_loss``).
- `LwF <lifelong.strategies.LwF>` (alias ``distill``): the model as it was when the task began,
  frozen, is the teacher. KL(teacher || student) at temperature T over the vocabulary, only at
  positions whose next-token label is not -100, averaged per token, mixed the seed's way:
  ``alpha * T^2 * KL + (1 - alpha) * LM loss``. The per-token KL is ``LwF.distillation_loss``.
  Rows of soft examples (`lifelong.llm.instruct.Example`) carry no label and are learned by the
  distillation term alone, at the positions their ``distill_mask`` marks. With such a mask the
  distilled positions are apart from the labelled ones, so the loss is
  ``LM loss + alpha / (1 - alpha) * T^2 * KL``: the same ratio, at plain fine-tuning's step size.
- ``naive`` adds nothing. Replay is not a loss term here: it is token-share data mixing
  (`lifelong.llm.data.mix_by_token_share`, ``continual_pretrain(replay_ratio=...)``).

With a PEFT model only the adapter weights train, so the EWC penalty covers them alone, and the
distillation teacher shares the frozen base: only the adapter tensors are snapshotted, and swapped
in for the teacher's forward, instead of copying the whole model.

Penalties follow the Trainer's own loss scaling: with gradient accumulation (and
``num_items_in_batch``) the per-token KL is normalised by the same token count as the LM loss, and
EWC is split across the accumulated micro-batches, so the update does not depend on how a batch is
cut. With no active penalty, ``compute_loss`` is the Trainer's own.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Trainer

from lifelong.core.distributed import group_rank, group_size, sum_over_processes
from lifelong.errors import LifelongError
from lifelong.llm.callbacks import ForgettingCallback
from lifelong.llm.data import PackedCorpus, as_blocks
from lifelong.llm.instruct import DISTILL_MASK, IGNORE
from lifelong.llm.schedules import SCHEDULES, make_scheduler
from lifelong.strategies import EWC, LwF, Naive, Replay, Strategy, build_strategies
from lifelong.strategies.anchors import Tensors, eval_mode, select_parameters

if TYPE_CHECKING:
    from transformers.trainer_utils import TrainOutput

# Sequences the LLM Fisher uses when the EWC sets no ``samples`` cap: each one costs a forward and a
# backward pass of its own, so "all of them", the classic default, would cost an epoch at batch 1.
FISHER_SEQUENCES = 256
LLM_STRATEGIES = ("naive", "ewc", "lwf (distill)")


def is_peft_model(model: nn.Module) -> bool:
    peft = sys.modules.get("peft")  # a PEFT model cannot exist unless peft was imported
    return peft is not None and isinstance(model, peft.PeftModel)


def llm_strategies(strategies: str | Sequence[Strategy] | None) -> list[Strategy]:
    """The strategies as objects, refusing those with no causal-LM form."""
    if strategies is None:
        return []
    items = build_strategies(strategies) if isinstance(strategies, str) else list(strategies)
    for item in items:
        if isinstance(item, Replay):
            raise LifelongError(
                "replay for language models is token-share data mixing, not a loss term; "
                "pass replay_ratio to continual_pretrain (or --replay-ratio) instead"
            )
        if not isinstance(item, Naive | EWC | LwF):
            raise LifelongError(
                f"strategy '{item.name}' has no causal-LM form yet; use {', '.join(LLM_STRATEGIES)} or replay"
            )
        if isinstance(item, EWC) and item.fisher == "exact":
            raise LifelongError(
                "ewc fisher=exact needs one gradient per vocabulary entry per token for a language model; "
                "use fisher=empirical or fisher=sampled"
            )
    if sum(isinstance(s, LwF) for s in items) > 1:
        raise LifelongError("give distillation (lwf) once; two teachers of the same model add nothing")
    return items


# ---- the Fisher of a causal LM ------------------------------------------------------------------------


def causal_lm_fisher(
    model: nn.Module,
    data: Any,
    kind: str = "empirical",
    samples: int | None = FISHER_SEQUENCES,
    trainable_only: bool = True,
    seed: int = 0,
) -> Tensors:
    """Diagonal Fisher of ``model``: the mean over sequences of the squared gradient of each
    sequence's mean next-token NLL (the scale of the training loss, so EWC's lambda reads alike).

    ``data`` holds packed blocks (tensor, Dataset or PackedCorpus' held-out part); ``samples``
    sequences are drawn at random (all of them when ``None`` or fewer exist). ``empirical`` uses the
    text's own next tokens; ``sampled`` draws each next token from the model's distribution (the
    true Fisher's expectation, estimated with one sample per position). A Dataset with ``labels``
    counts only the positions training puts loss on (instruction data: the answers); sequences
    with none are skipped.
    """
    if kind not in ("empirical", "sampled"):
        raise LifelongError(f"LLM Fisher '{kind}' is unknown; use empirical or sampled")
    available = len(data.heldout) if isinstance(data, PackedCorpus) else len(data)
    if available == 0:
        raise LifelongError("the Fisher information needs at least one sequence; the data given was empty")
    if is_peft_model(model):
        trainable_only = True  # penalties cover the adapter weights only
    params = select_parameters(model, trainable_only)
    names, tensors = list(params), list(params.values())
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(available, generator=generator)
    chosen = order if samples is None else order[:samples]
    blocks = as_blocks(data, chosen)  # reads only the sampled rows
    labelled = hasattr(data, "column_names") and "labels" in data.column_names
    labels = as_blocks(data, chosen, "labels") if labelled else blocks
    device = tensors[0].device
    draw = torch.Generator(device=device).manual_seed(seed)
    total = [torch.zeros_like(p) for p in tensors]
    counted = 0
    with eval_mode(model), torch.enable_grad():
        # Several processes split the sequences and sum their parts; one process takes them all.
        for row in range(group_rank(), len(blocks), group_size()):
            targets = labels[row, 1:].to(device)
            keep = targets != IGNORE
            if not bool(keep.any()):
                continue
            logits = model(input_ids=blocks[row : row + 1].to(device), use_cache=False).logits[0, :-1].float()
            if kind == "sampled":
                with torch.no_grad():
                    drawn = torch.multinomial(logits.softmax(-1), 1, generator=draw).squeeze(1)
                targets = drawn.masked_fill(~keep, IGNORE)
            loss = F.cross_entropy(logits, targets, ignore_index=IGNORE)
            grads = torch.autograd.grad(loss, tensors, allow_unused=True)
            for acc, grad in zip(total, grads, strict=True):
                if grad is not None:
                    acc.add_(grad.detach().square())
            counted += 1
    summed, count = sum_over_processes(dict(zip(names, total, strict=True)), counted)
    if count == 0:
        raise LifelongError("the Fisher information found no position with a label in the sequences drawn")
    return {name: acc / count for name, acc in summed.items()}


# ---- the distillation teacher ---------------------------------------------------------------------


class _Teacher:
    """The model as it was when the task began, frozen.

    A model whose parameters all train is copied whole. One with frozen parameters (PEFT adapters on
    a frozen base) keeps only copies of the trainable tensors and swaps them in for the teacher's
    forward: a copy of the base would double the memory of exactly the part that never changes.
    """

    def __init__(self, model: nn.Module) -> None:
        trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
        self.partial = len(trainable) < sum(1 for _ in model.parameters())
        self.copy: nn.Module | None = None
        self.saved: list[torch.Tensor] = []
        self.params: list[torch.Tensor] = []
        if self.partial:
            self.params = list(trainable.values())
            self.saved = [p.detach().clone() for p in self.params]
        else:
            self.copy = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def logits(
        self, model: nn.Module, inputs: dict[str, Any], rows: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The teacher's logits on the batch, or on its ``rows`` only."""
        kwargs = {k: inputs[k] for k in ("input_ids", "attention_mask", "position_ids") if k in inputs}
        if rows is not None:
            kwargs = {k: v[rows] for k, v in kwargs.items()}
        if self.copy is not None:
            return cast(torch.Tensor, self.copy(**kwargs, use_cache=False).logits)
        # Swapped before the student's forward, so no autograd graph holds the tensors being overwritten.
        current = [p.detach().clone() for p in self.params]
        torch._foreach_copy_(self.params, self.saved)
        try:
            with eval_mode(model):
                return cast(torch.Tensor, model(**kwargs, use_cache=False).logits)
        finally:
            torch._foreach_copy_(self.params, current)


def distillation_terms(
    student: torch.Tensor, teacher: torch.Tensor, positions: torch.Tensor | None, temperature: float
) -> tuple[torch.Tensor, int]:
    """(mean per-token KL at ``temperature``, tokens) over the positions (bool, as the labels: the token
    predicted) marked in ``positions``; all of them when None."""
    new, old = student[:, :-1], teacher[:, :-1]
    if positions is None or bool(positions[:, 1:].all()):  # e.g. packed blocks: no copy of the logits
        flat_new, flat_old = new.reshape(-1, new.shape[-1]), old.reshape(-1, old.shape[-1])
    else:
        keep = positions[:, 1:]
        flat_new, flat_old = new[keep], old[keep]
    count = flat_new.shape[0]
    if count == 0:
        return student.sum() * 0.0, 0
    return LwF.distillation_loss(flat_new, flat_old, None, temperature), count


# ---- the trainer --------------------------------------------------------------------------------------


class ContinualTrainer(Trainer):
    """``transformers.Trainer`` whose loss adds the strategies' penalties; one ``train()`` = one task.

    Extra arguments: ``strategies`` (objects or a spec such as ``"ewc:lambda=100+lwf:alpha=0.5"``),
    ``lr_schedule`` (``rewarm-cosine``, ``infinite`` or ``constant``; default: the Trainer's own
    ``lr_scheduler_type``), ``min_lr_ratio`` and ``anneal_ratio`` for those schedules, and
    ``fisher_samples`` (sequences per EWC Fisher when the EWC sets no ``samples``). Every task gets
    a fresh optimizer and schedule (unless you passed ``optimizers``).
    """

    def __init__(
        self,
        *args: Any,
        strategies: str | Sequence[Strategy] | None = None,
        lr_schedule: str | None = None,
        min_lr_ratio: float = 0.1,
        anneal_ratio: float = 0.1,
        fisher_samples: int | None = FISHER_SEQUENCES,
        **kwargs: Any,
    ) -> None:
        if lr_schedule is not None and lr_schedule not in SCHEDULES:
            raise LifelongError(f"unknown LR schedule '{lr_schedule}'; use one of: {', '.join(SCHEDULES)}")
        self.strategies = llm_strategies(strategies)  # before super(): a bad spec fails before any setup
        self._own_optimizer = kwargs.get("optimizers", (None, None)) == (None, None)
        super().__init__(*args, **kwargs)
        self.lr_schedule, self.min_lr_ratio, self.anneal_ratio = lr_schedule, min_lr_ratio, anneal_ratio
        self.fisher_samples = fisher_samples
        self.task_index = 0
        self.fisher_dataset: Any = None  # the data EWC measures importance on; default: train_dataset
        self._ewcs = [s for s in self.strategies if isinstance(s, EWC)]
        self._lwf = next((s for s in self.strategies if isinstance(s, LwF) and s.alpha > 0), None)
        self._teacher: _Teacher | None = None
        self._penalty_sums: dict[str, tuple[torch.Tensor, int]] = {}
        self._refuse_sharded_parameters()
        for callback in self.callback_handler.callbacks:
            if isinstance(callback, ForgettingCallback):
                callback.attach(self)

    def _refuse_sharded_parameters(self) -> None:
        """EWC's anchors and LwF's teacher need whole parameters on every process; FSDP and
        DeepSpeed ZeRO-3 hold only a shard of each."""
        plugin = getattr(self.accelerator.state, "deepspeed_plugin", None)
        zero3 = self.is_deepspeed_enabled and plugin is not None and plugin.zero_stage == 3
        if (self.is_fsdp_enabled or zero3) and (self._ewcs or self._lwf is not None):
            raise LifelongError(
                "ewc and lwf need whole parameters on every process, and FSDP / DeepSpeed ZeRO-3 shard them; "
                "use DDP or ZeRO stage 1-2, or replay alone"
            )

    def add_callback(self, callback: Any) -> None:
        super().add_callback(callback)
        if isinstance(callback, ForgettingCallback):
            callback.trainer = self

    # ---- tasks ----------------------------------------------------------------------------------------

    def train_task(
        self, train_dataset: Any = None, fisher_dataset: Any = None, **train_kwargs: Any
    ) -> TrainOutput:
        """Train one task on ``train_dataset`` (default: the current one).

        ``fisher_dataset`` is the data EWC measures importance on afterwards, e.g. only the new
        corpus when ``train_dataset`` mixes replayed blocks in (default: ``train_dataset``).
        """
        if train_dataset is not None:
            self.train_dataset = train_dataset
        self.fisher_dataset = fisher_dataset
        return self.train(**train_kwargs)

    def train(self, *args: Any, **kwargs: Any) -> TrainOutput:
        self.before_task()
        output = super().train(*args, **kwargs)
        self.after_task(self.fisher_dataset if self.fisher_dataset is not None else self.train_dataset)
        self.fisher_dataset = None
        return output

    def before_task(self) -> None:
        """Point the penalties at the model, snapshot the teacher, and drop the last task's optimizer."""
        for ewc in self._ewcs:
            ewc.before_task(cast(Any, self), cast(Any, None))  # EWC reads only ``.model`` from its learner
        self._teacher = _Teacher(self._model()) if self._lwf is not None else None
        if self._own_optimizer and self.task_index > 0:
            self.optimizer, self.lr_scheduler = None, None

    def after_task(self, data: Any) -> None:
        """EWC: measure importance on ``data`` and anchor the current weights."""
        self._teacher = None  # frees the copy; the next task snapshots the model as it is then
        for ewc in self._ewcs:
            if data is None:
                raise LifelongError("EWC needs the task's data to measure importance; pass train_dataset")
            fisher = causal_lm_fisher(
                self._model(),
                data,
                kind=ewc.fisher,
                samples=ewc.samples or self.fisher_samples,
                trainable_only=ewc.trainable_only,
                seed=self.args.seed + self.task_index,
            )
            ewc.model = self.model
            ewc.consolidate(fisher)
        self.task_index += 1

    def _set_signature_columns_if_needed(self) -> None:
        # The Trainer drops dataset columns the model's forward does not take; the distill mask is ours.
        super()._set_signature_columns_if_needed()
        if self._signature_columns is not None and DISTILL_MASK not in self._signature_columns:
            self._signature_columns.append(DISTILL_MASK)

    def _model(self) -> nn.Module:
        if self.model is None:
            raise LifelongError("the trainer has no model; pass model=... to ContinualTrainer")
        return cast(nn.Module, self.model)

    # ---- the loss --------------------------------------------------------------------------------------

    def _loss_scales(
        self, labels: torch.Tensor | None, num_items_in_batch: torch.Tensor | int | None
    ) -> tuple[torch.Tensor | float, float]:
        """(factor turning a per-token *sum* into the LM loss's normalisation, factor for a per-step term).

        When the model normalised its loss by ``num_items_in_batch`` (tokens of the whole accumulated
        batch, maybe across devices), the Trainer does not divide by the accumulation steps, so a
        per-step penalty must be split across micro-batches here; otherwise the Trainer divides the
        whole loss, penalties included, and the LM loss is this micro-batch's mean.
        """
        steps = getattr(self, "current_gradient_accumulation_steps", self.args.gradient_accumulation_steps)
        by_items = (self.model_accepts_loss_kwargs or self.compute_loss_func is not None) and (
            num_items_in_batch is not None
        )
        scaled_for_ga = self.loss_is_scaled_for_ga if self.loss_is_scaled_for_ga is not None else by_items
        per_step = 1.0 / steps if scaled_for_ga else 1.0
        if by_items:
            assert num_items_in_batch is not None
            per_token: torch.Tensor | float = 1.0 / num_items_in_batch
            if self.args.average_tokens_across_devices:  # mirrors Trainer.compute_loss
                per_token = per_token * (
                    self.accelerator.num_processes // self.get_tp_size()
                    if self.args.n_gpu <= 1
                    else self.args.n_gpu
                )
            return per_token, per_step
        if labels is None:
            return 1.0, per_step
        return 1.0 / (labels[:, 1:] != -100).sum().clamp_min(1), per_step

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        ewcs = [e for e in self._ewcs if e.terms]
        distill = inputs.pop(DISTILL_MASK, None)
        labels = inputs.get("labels")
        if distill is not None:
            if self._teacher is None or self._lwf is None:
                raise LifelongError(
                    "soft examples are learned from a distillation teacher; add lwf to the strategies"
                )
            if self._lwf.alpha >= 1:
                raise LifelongError(
                    "with soft examples lwf alpha must be below 1 (1 learns no label); try 0.5"
                )
            if num_items_in_batch is not None:
                # Soft rows carry no label: a batch of soft rows alone must give a zero LM loss, not 0/0.
                num_items_in_batch = torch.clamp(torch.as_tensor(num_items_in_batch), min=1)
        if not ewcs and self._teacher is None:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        # With a distill mask the teacher is asked only on the rows it marks (e.g. the soft ones).
        rows = None if distill is None else distill[:, 1:].any(dim=1).nonzero().squeeze(1)
        # The teacher runs first: the PEFT teacher swaps weights, which must not happen under a graph.
        # The unwrapped model: under DDP a second forward through the wrapper would be counted twice.
        teacher = (
            self._teacher.logits(self._model(), inputs, rows)
            if self._teacher is not None and (rows is None or len(rows) > 0)
            else None
        )
        loss, outputs = cast(
            tuple[torch.Tensor, Any],
            super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch),
        )
        per_token, per_step = self._loss_scales(labels, num_items_in_batch)
        if teacher is not None and self._lwf is not None:
            alpha, temperature = self._lwf.alpha, self._lwf.temperature
            if distill is None:
                student, positions = outputs.logits, None if labels is None else labels != IGNORE
            else:
                student, positions = outputs.logits[rows], distill[rows]
            kd_mean, count = distillation_terms(student, teacher, positions, temperature)
            kd = kd_mean * count * per_token  # back to a sum, then the LM loss's own normalisation
            if distill is None:
                loss = (1 - alpha) * loss + alpha * temperature**2 * kd  # the seed's mix
            else:
                # Distilled positions marked apart from the labels: the LM loss keeps plain fine-tuning's
                # step size (the seed's mix would shrink it by 1 - alpha) and the KL keeps the seed's ratio.
                loss = loss + alpha / (1 - alpha) * temperature**2 * kd
            self._note("distill_kl", kd_mean)
        for ewc in ewcs:
            penalty = ewc.ewc_loss()
            loss = loss + penalty * per_step
            self._note("ewc_penalty", penalty)
        return (loss, outputs) if return_outputs else loss

    def _note(self, key: str, value: torch.Tensor) -> None:
        total, count = self._penalty_sums.get(key, (torch.zeros((), device=value.device), 0))
        self._penalty_sums[key] = (total + value.detach().float(), count + 1)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        # Penalties are summed on the device and read once per logging step: no sync on every step.
        if "loss" in logs and self._penalty_sums:
            for key, (total, count) in self._penalty_sums.items():
                logs[key] = float(total) / count
            self._penalty_sums = {}
        super().log(logs, start_time)

    # ---- the schedule ---------------------------------------------------------------------------------

    def create_scheduler(
        self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None
    ) -> torch.optim.lr_scheduler.LRScheduler:
        if self.lr_schedule is None:
            return super().create_scheduler(num_training_steps, optimizer)
        if self.lr_scheduler is None:
            optimizer = optimizer if optimizer is not None else self.optimizer
            if optimizer is None:
                raise LifelongError("the LR schedule needs the optimizer; create it before the scheduler")
            self.lr_scheduler = make_scheduler(
                optimizer,
                self.lr_schedule,
                num_training_steps,
                self.args.get_warmup_steps(num_training_steps),
                self.min_lr_ratio,
                self.anneal_ratio,
            )
            self._created_lr_scheduler = True
        return self.lr_scheduler
