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
from lifelong.strategies.sumsq import SquaredGradients

# Sequences a measurement uses when the strategy sets no ``samples`` cap: each one costs a forward and
# a backward pass of its own, so "all of them", the classic default, would cost an epoch at batch 1.
FISHER_SEQUENCES = 256
# Tokens measured by one batched forward and backward pass (whole sequences, at least one): the pass
# holds every linear layer's inputs and output gradients for them, about twice a training step's
# activations at that many tokens.
FISHER_TOKENS = 2048


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
    chunk_tokens: int = FISHER_TOKENS,
) -> Tensors:
    """Mean over sequences of ``|d measure(logits, next-token labels) / d theta|^power`` (power 2 or 1).

    ``data`` holds packed blocks (tensor, Dataset or PackedCorpus' held-out part); ``samples``
    sequences are drawn at random (all of them when ``None`` or fewer exist). A Dataset with
    ``labels`` gives the measure those (-100 where training puts no loss: instruction prompts),
    otherwise the text's own next tokens; sequences with no label are skipped. ``measure`` also gets
    a generator seeded from ``seed`` on the model's device. With a PEFT model only the adapter
    weights are measured, as only they train. Squares take one batched pass per ``chunk_tokens``
    tokens of whole sequences (`_batched_squares`); absolute values, one pass per sequence.
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
    # Several processes split the sequences and sum their parts; one process takes them all.
    rows = [
        row
        for row in range(group_rank(), len(blocks), group_size())
        if bool((labels[row, 1:] != IGNORE).any())
    ]
    with eval_mode(model), torch.enable_grad():
        if power == 2:
            chunk = max(1, chunk_tokens // blocks.shape[1])
            total = _batched_squares(model, names, blocks, labels, rows, measure, draw, chunk)
        else:
            total = _one_by_one(model, names, blocks, labels, rows, measure, draw, power)
    counted = len(rows)
    summed, count = sum_over_processes(total, counted)
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


def _batched_squares(
    model: nn.Module,
    names: list[str],
    blocks: torch.Tensor,
    labels: torch.Tensor,
    rows: list[int],
    measure: SequenceMeasure,
    draw: torch.Generator,
    chunk_size: int,
) -> Tensors:
    """Sums of squared per-sequence gradients, ``chunk_size`` sequences a pass (`strategies.sumsq`,
    with every weight it cannot see through a layer replayed module by module); what it still leaves,
    sequence by sequence. ``measure`` meets the sequences in the order the loop would, so a sampled
    measure draws the same tokens."""
    device = next(model.parameters()).device
    squares = SquaredGradients(model, names, replay=True)
    total: Tensors = {}
    for start in range(0, len(rows), chunk_size):
        part = rows[start : start + chunk_size]
        ids, targets = blocks[part].to(device), labels[part, 1:].to(device)

        def losses(ids: torch.Tensor = ids, targets: torch.Tensor = targets) -> torch.Tensor:
            logits = model(input_ids=ids, use_cache=False).logits[:, :-1].float()
            return torch.stack(
                [measure(one, target, draw) for one, target in zip(logits, targets, strict=True)]
            )

        before = draw.get_state()
        sums, rest = squares(losses)
        if rest:  # a layer the forward used twice, say: the loop for what remains, on the same draws
            again = torch.Generator(device=draw.device)
            again.set_state(before)
            sums |= _one_by_one(model, rest, blocks, labels, part, measure, again, 2)
        for name, value in sums.items():
            total[name] = total[name].add_(value) if name in total else value
    params = dict(model.named_parameters())
    return {name: total.get(name, torch.zeros_like(params[name])) for name in names}


def _one_by_one(
    model: nn.Module,
    names: list[str],
    blocks: torch.Tensor,
    labels: torch.Tensor,
    rows: list[int],
    measure: SequenceMeasure,
    draw: torch.Generator,
    power: int,
) -> Tensors:
    """Sums of ``|gradient|^power`` over sequences, one forward and backward pass each."""
    params = dict(model.named_parameters())
    tensors = [params[n] for n in names]
    device = tensors[0].device
    total = [torch.zeros_like(p) for p in tensors]
    for row in rows:
        targets = labels[row, 1:].to(device)
        logits = model(input_ids=blocks[row : row + 1].to(device), use_cache=False).logits[0, :-1].float()
        grads = torch.autograd.grad(measure(logits, targets, draw), tensors, allow_unused=True)
        for acc, grad in zip(total, grads, strict=True):
            if grad is not None:
                acc.add_(grad.detach().square() if power == 2 else grad.detach().abs())
    return dict(zip(names, total, strict=True))


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
