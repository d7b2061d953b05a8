"""Importance of a causal LM's weights, measured one sequence at a time.

`sequence_importance` is the loop: one gradient per packed block of a measure the strategy chooses
(the square of a batch gradient is not a mean of squares), averaged over sequences drawn at random
and split across processes. EWC's measure (`lifelong.strategies.ewc.lm_nll`) makes it the diagonal
Fisher, `causal_lm_fisher`; MAS's makes it output sensitivity. Strategies reach it through their
loop's ``importance`` (`ContinualTrainer.importance`, or `OutsideTrainer` outside any training).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lifelong.core.distributed import group_rank, group_size, sum_over_processes
from lifelong.core.strategy import SequenceMeasure
from lifelong.errors import LifelongError
from lifelong.llm.data import PackedCorpus, as_blocks
from lifelong.llm.instruct import IGNORE
from lifelong.strategies.anchors import Tensors, eval_mode, select_parameters
from lifelong.strategies.ewc import lm_nll

# Sequences a measurement uses when the strategy sets no ``samples`` cap: each one costs a forward and
# a backward pass of its own, so "all of them", the classic default, would cost an epoch at batch 1.
FISHER_SEQUENCES = 256


def is_peft_model(model: nn.Module) -> bool:
    peft = sys.modules.get("peft")  # a PEFT model cannot exist unless peft was imported
    return peft is not None and isinstance(model, peft.PeftModel)


def sequence_importance(
    model: nn.Module,
    data: Any,
    measure: SequenceMeasure,
    power: int = 2,
    samples: int | None = FISHER_SEQUENCES,
    trainable_only: bool = True,
    seed: int = 0,
    what: str = "the importance",
) -> Tensors:
    """Mean over sequences of ``|d measure(logits, next-token labels) / d theta|^power`` (power 2 or 1).

    ``data`` holds packed blocks (tensor, Dataset or PackedCorpus' held-out part); ``samples``
    sequences are drawn at random (all of them when ``None`` or fewer exist). A Dataset with
    ``labels`` gives the measure those (-100 where training puts no loss: instruction prompts),
    otherwise the text's own next tokens; sequences with no label are skipped. ``measure`` also gets
    a generator seeded from ``seed`` on the model's device. With a PEFT model only the adapter
    weights are measured, as only they train.
    """
    available = len(data.heldout) if isinstance(data, PackedCorpus) else len(data)
    if available == 0:
        raise LifelongError(f"{what} needs at least one sequence; the data given was empty")
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
            if not bool((targets != IGNORE).any()):
                continue
            logits = model(input_ids=blocks[row : row + 1].to(device), use_cache=False).logits[0, :-1].float()
            grads = torch.autograd.grad(measure(logits, targets, draw), tensors, allow_unused=True)
            for acc, grad in zip(total, grads, strict=True):
                if grad is not None:
                    acc.add_(grad.detach().square() if power == 2 else grad.detach().abs())
            counted += 1
    summed, count = sum_over_processes(dict(zip(names, total, strict=True)), counted)
    if count == 0:
        raise LifelongError(f"{what} found no position with a label in the sequences drawn")
    return {name: acc / count for name, acc in summed.items()}


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

    ``empirical`` uses the text's own next tokens (or the Dataset's labels: the positions training
    puts loss on); ``sampled`` draws each next token from the model's distribution (the true
    Fisher's expectation, estimated with one sample per position). See `sequence_importance`.
    """
    return sequence_importance(
        model, data, lm_nll(kind), 2, samples, trainable_only, seed, what="the Fisher information"
    )


@dataclass
class OutsideTrainer:
    """The causal-LM hooks' view of a model outside any training loop (`lifelong.core.strategy.LMTrainer`):
    what `Strategy.lm_protect` needs to measure importance on data the model learned before."""

    model: nn.Module
    seed: int = 0
    samples: int | None = FISHER_SEQUENCES

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
        return sequence_importance(
            self.model, data, measure, power, samples or self.samples, trainable_only, self.seed, what
        )

    def note(self, key: str, value: torch.Tensor) -> None:
        """Nothing is logged outside training."""
