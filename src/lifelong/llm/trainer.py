"""`ContinualTrainer`: the Hugging Face ``Trainer`` with the project's strategies in its loss.

Each ``train()`` (or `ContinualTrainer.train_task`) call is one task. The strategies are the same
objects as on the classic side, driven through their causal-LM hooks (`Strategy.lm_before_task`,
``lm_penalty``, ``lm_loss_weight``, ``lm_after_backward``, ``lm_after_task``): the trainer knows no
strategy by type, and a strategy declares ``"causal-lm"`` in its ``supports`` to run here.

- `EWC <lifelong.strategies.EWC>`, `MAS <lifelong.strategies.MAS>`: after a task, importance per
  sequence on the task's own data (`lifelong.llm.fisher`); later tasks add the quadratic penalty of
  the classic side.
- `SI <lifelong.strategies.SI>`: the path integral over every optimizer step's gradient.
- `LwF <lifelong.strategies.LwF>` (alias ``distill``): the model as it was when the task began is
  the teacher; the seed's mix of the LM loss and the per-token KL. Soft examples
  (`lifelong.llm.instruct.Example`) are learned from it alone, at their ``distill_mask`` positions.
- ``naive`` adds nothing. Replay is not a loss term here: it is token-share data mixing
  (`lifelong.llm.data.mix_by_token_share`, ``continual_pretrain(replay_ratio=...)``).

With a PEFT model only the adapter weights train, so the penalties cover them alone, and the
distillation teacher shares the frozen base (only the adapter tensors are kept).

Penalties follow the Trainer's own loss scaling (`lifelong.core.strategy.LMBatch`): with gradient
accumulation (and ``num_items_in_batch``) a per-token term is normalised by the same token count as
the LM loss, and a per-step term is split across the accumulated micro-batches, so the update does
not depend on how a batch is cut. With no strategy, ``compute_loss`` is the Trainer's own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn
from transformers import Trainer, TrainerCallback

from lifelong.core.spec import Spec
from lifelong.core.strategy import LMBatch, SequenceMeasure
from lifelong.errors import LifelongError
from lifelong.llm.callbacks import ForgettingCallback
from lifelong.llm.fisher import FISHER_SEQUENCES, sequence_importance
from lifelong.llm.instruct import DISTILL_MASK
from lifelong.llm.schedules import SCHEDULES, make_scheduler
from lifelong.strategies import (
    ALIASES,
    EWC,
    REGISTRY,
    LwF,
    Replay,
    Strategy,
    build_strategies,
    build_strategy,
)
from lifelong.strategies.anchors import Tensors

if TYPE_CHECKING:
    from transformers.trainer_utils import TrainOutput


def lm_strategy_names() -> list[str]:
    """The registry's strategies with a causal-LM form, aliases in brackets: ``lwf (distill)``."""
    names = []
    for name, cls in REGISTRY.items():
        if "causal-lm" in cls.supports:
            aliases = [alias for alias, target in ALIASES.items() if target == name]
            names.append(f"{name} ({', '.join(aliases)})" if aliases else name)
    return names


def build_lm_strategies(specs: Sequence[Spec], also: Sequence[str]) -> list[Strategy]:
    """The strategies of ``specs``, checked for a causal-LM form; an unknown name is refused with the
    names a language model takes (``also``: the command's own, such as replay), not all the registry's."""
    for spec in specs:
        if ALIASES.get(spec.name, spec.name) not in REGISTRY:
            known = ", ".join([*also, *lm_strategy_names()])
            raise LifelongError(f"unknown strategy '{spec.name}'; choose one of: {known}")
    return llm_strategies([build_strategy(spec) for spec in specs])


def llm_strategies(strategies: str | Sequence[Strategy] | None) -> list[Strategy]:
    """The strategies as objects, refusing those with no causal-LM form (one line each)."""
    if strategies is None:
        return []
    items = build_strategies(strategies) if isinstance(strategies, str) else list(strategies)
    for item in items:
        if isinstance(item, Replay):
            raise LifelongError(
                "replay for language models is token-share data mixing, not a loss term; "
                "pass replay_ratio to continual_pretrain (or --replay-ratio) instead"
            )
        if "causal-lm" not in item.supports:
            raise LifelongError(
                f"strategy '{item.name}' has no causal-LM form yet; use {', '.join(lm_strategy_names())} or replay"
            )
        if isinstance(item, EWC) and item.fisher == "exact":
            raise LifelongError(
                "ewc fisher=exact needs one gradient per vocabulary entry per token for a language model; "
                "use fisher=empirical or fisher=sampled"
            )
    if sum(isinstance(s, LwF) for s in items) > 1:
        raise LifelongError("give distillation (lwf) once; two teachers of the same model add nothing")
    return items


class _StepHooks(TrainerCallback):
    """Calls every strategy's `lm_after_backward` once per optimizer step, when its gradients are complete."""

    def __init__(self, trainer: ContinualTrainer) -> None:
        self.trainer = trainer

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        for strategy in self.trainer.strategies:
            strategy.lm_after_backward(self.trainer)


# ---- the trainer --------------------------------------------------------------------------------------


class ContinualTrainer(Trainer):
    """``transformers.Trainer`` whose loss adds the strategies' penalties; one ``train()`` = one task.

    Extra arguments: ``strategies`` (objects or a spec such as ``"ewc:lambda=100+lwf:alpha=0.5"``),
    ``lr_schedule`` (``rewarm-cosine``, ``infinite`` or ``constant``; default: the Trainer's own
    ``lr_scheduler_type``), ``min_lr_ratio`` and ``anneal_ratio`` for those schedules, and
    ``fisher_samples`` (sequences per importance measurement, EWC's Fisher or MAS's, when the
    strategy sets no ``samples``). Every task gets a fresh optimizer and schedule (unless you passed
    ``optimizers``).
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
        self.fisher_dataset: Any = None  # the task's own data, for importance; default: train_dataset
        self._penalty_sums: dict[str, tuple[torch.Tensor, int]] = {}
        self._refuse_sharded_parameters()
        for callback in self.callback_handler.callbacks:
            if isinstance(callback, ForgettingCallback):
                callback.attach(self)
        self.add_callback(_StepHooks(self))

    def _refuse_sharded_parameters(self) -> None:
        """Anchors (EWC) and teachers (LwF) need whole parameters on every process; FSDP and
        DeepSpeed ZeRO-3 hold only a shard of each."""
        plugin = getattr(self.accelerator.state, "deepspeed_plugin", None)
        zero3 = self.is_deepspeed_enabled and plugin is not None and plugin.zero_stage == 3
        whole = [s.name for s in self.strategies if s.whole_parameters]
        if (self.is_fsdp_enabled or zero3) and whole:
            raise LifelongError(
                f"{' and '.join(whole)} need{'s' if len(whole) == 1 else ''} whole parameters on every "
                "process, and FSDP / DeepSpeed ZeRO-3 shard them; use DDP or ZeRO stage 1-2, or replay alone"
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

        ``fisher_dataset`` is the task's own data, which EWC and MAS measure importance on afterwards,
        e.g. only the new corpus when ``train_dataset`` mixes replayed blocks in (default:
        ``train_dataset``).
        """
        if train_dataset is not None:
            self.train_dataset = train_dataset
        self.fisher_dataset = fisher_dataset
        return self.train(**train_kwargs)

    def train(self, *args: Any, **kwargs: Any) -> TrainOutput:
        self.before_task()
        output = super().train(*args, **kwargs)
        self._unprepare()
        self.after_task(self.fisher_dataset if self.fisher_dataset is not None else self.train_dataset)
        self.fisher_dataset = None
        return output

    def _unprepare(self) -> None:
        """Undo what preparing for training did to the model, so that importance, evaluation, saving and
        the next task see it as it was: mixed precision wrapped its forward in autocast (the Fisher
        then compared bf16 outputs with float32 ones), and a model marked prepared is handed back
        as it is by the next preparation (this trainer's or the next task's), with no autocast."""
        model = self._model()
        self.accelerator.unwrap_model(model, keep_fp32_wrapper=False)  # the module inside any wrapper
        original = model.__dict__.pop("_original_forward", None)  # an FSDP wrapper's own, from task 2 on
        if original is not None:
            model.forward = original
        model.__dict__.pop("_is_accelerate_prepared", None)
        self.model_wrapped = model  # a multi-process wrapper is made again for the next task

    def before_task(self) -> None:
        """The strategies' `lm_before_task` (bind anchors, snapshot a teacher), and a fresh optimizer."""
        for strategy in self.strategies:
            strategy.lm_before_task(self)
        if self._own_optimizer and self.task_index > 0:
            self.optimizer, self.lr_scheduler = None, None

    def after_task(self, data: Any) -> None:
        """The strategies' `lm_after_task` on the task's own ``data`` (EWC's Fisher, ...)."""
        for strategy in self.strategies:
            strategy.lm_after_task(self, data)
        self.task_index += 1

    def importance(
        self,
        data: Any,
        measure: SequenceMeasure,
        *,
        power: int = 2,
        samples: int | None = None,
        trainable_only: bool = True,
        what: str = "the importance",
    ) -> Tensors:
        """`lifelong.llm.fisher.sequence_importance` of the model, for a strategy's `lm_after_task`:
        ``samples`` sequences (``fisher_samples`` when None), drawn with a seed of this task's own."""
        return sequence_importance(
            self._model(),
            data,
            measure,
            power,
            samples or self.fisher_samples,
            trainable_only,
            seed=self.args.seed + self.task_index,
            what=what,
        )

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
        distill = inputs.pop(DISTILL_MASK, None)
        if distill is not None and num_items_in_batch is not None:
            # Soft rows carry no label: a batch of soft rows alone must give a zero LM loss, not 0/0.
            num_items_in_batch = torch.clamp(torch.as_tensor(num_items_in_batch), min=1)
        if not self.strategies and distill is None:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        labels = inputs.get("labels")  # read first: the Trainer may pop it
        loss, outputs = cast(
            tuple[torch.Tensor, Any],
            super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch),
        )
        per_token, per_step = self._loss_scales(labels, num_items_in_batch)
        batch = LMBatch(inputs, labels, distill, per_token, per_step)
        terms = [strategy.lm_penalty(self, batch, outputs) for strategy in self.strategies]
        if distill is not None and not batch.distilled:
            raise LifelongError(
                "soft examples are learned from a distillation teacher; add lwf to the strategies"
            )
        weight = 1.0
        for strategy in self.strategies:
            weight *= strategy.lm_loss_weight(self, batch)
        if weight != 1.0:
            loss = weight * loss
        for term in terms:
            if isinstance(term, torch.Tensor):  # a plain 0.0 would only add an autograd node
                loss = loss + term
        return (loss, outputs) if return_outputs else loss

    def note(self, key: str, value: torch.Tensor) -> None:
        """Log the running mean of ``value`` (a penalty, a KL) under ``key`` with the training loss."""
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
