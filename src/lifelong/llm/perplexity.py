"""Perplexity: ``exp`` of the mean next-token negative log-likelihood over held-out blocks.

The mean is over tokens, not over batches or blocks, so a corpus's perplexity does not depend on
the evaluation batch size. Every next token of a block counts (instruction data's answer-only loss
is `lifelong.llm.answers.answer_loss`). Lower is better;
`lifelong.core.metrics.summarize(..., higher_is_better=False)` reads it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lifelong.core.distributed import all_reduce_sum, group_rank, group_size
from lifelong.core.metrics import bootstrap_se
from lifelong.errors import LifelongError
from lifelong.llm.data import PackedCorpus, as_blocks


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def token_nll(
    model: nn.Module,
    data: Any,
    batch_size: int = 16,
    max_blocks: int | None = None,
    per_block: list[float] | None = None,
) -> tuple[float, int]:
    """(sum of next-token NLL, number of predicted tokens) of ``model`` on ``data``'s blocks.

    ``data`` is a ``[n, block]`` tensor of token ids, a `PackedCorpus` (its held-out part is used)
    or a ``datasets.Dataset`` with ``input_ids``. ``max_blocks`` evaluates the first blocks only.
    Under a process group every process must call it: each evaluates its share of the batches and
    all of them get the sum. ``per_block``, if given, gets each block's mean token NLL (of this
    process's share).
    """
    blocks = as_blocks(data, None if max_blocks is None else torch.arange(min(max_blocks, _count(data))))
    if len(blocks) == 0:
        raise LifelongError("no blocks to evaluate perplexity on; give more text or a smaller block size")
    # The bare model: a DDP wrapper's forward would sync buffers, and the shares may differ by a batch.
    model = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    device = _device(model)
    was_training = model.training
    model.eval()
    sums = torch.zeros(2, dtype=torch.float64, device=device)  # NLL, tokens
    try:
        for start in range(group_rank() * batch_size, len(blocks), group_size() * batch_size):
            ids = blocks[start : start + batch_size].to(device)
            logits = model(input_ids=ids, use_cache=False).logits[:, :-1]
            targets = ids[:, 1:]
            # float32 softmax even under bf16 weights: the NLL of rare tokens is where precision goes.
            flat = logits.reshape(-1, logits.shape[-1]).float()
            if per_block is None:
                sums[0] += F.cross_entropy(flat, targets.reshape(-1), reduction="sum").double()
            else:
                nll = F.cross_entropy(flat, targets.reshape(-1), reduction="none").view(targets.shape)
                sums[0] += nll.sum().double()
                per_block += nll.mean(dim=1).tolist()
            sums[1] += targets.numel()
    finally:
        model.train(was_training)
    all_reduce_sum(sums)
    return float(sums[0]), int(sums[1])


def _count(data: Any) -> int:
    return len(data.heldout) if isinstance(data, PackedCorpus) else len(data)


def perplexity(model: nn.Module, data: Any, batch_size: int = 16, max_blocks: int | None = None) -> float:
    """``exp(mean token NLL)`` of ``model`` on ``data`` (see `token_nll` for what ``data`` may be)."""
    return from_nll(*token_nll(model, data, batch_size, max_blocks))


def from_nll(total: float, count: int) -> float:
    """Perplexity from a summed NLL over ``count`` tokens; a `LifelongError` when it is not finite."""
    mean = total / count
    if not math.isfinite(mean):
        raise LifelongError(
            "the model's loss is NaN or infinite on the evaluation text (training diverged); lower the learning rate"
        )
    return math.exp(min(mean, 700.0))  # exp(700) is near float's limit; a larger NLL is no longer informative


def perplexity_and_se(
    model: nn.Module, data: Any, batch_size: int = 16, max_blocks: int | None = None
) -> tuple[float, float, int]:
    """(perplexity, its standard error, blocks): the mean NLL's bootstrap error over blocks (fixed seed),
    carried through ``exp`` to first order (the delta method: ``se(exp m) = exp(m) se(m)``)."""
    blocks: list[float] = []
    value = from_nll(*token_nll(model, data, batch_size, max_blocks, per_block=blocks))
    return value, value * bootstrap_se(blocks), len(blocks)


def perplexities(
    model: nn.Module, domains: Mapping[str, Any], batch_size: int = 16, max_blocks: int | None = None
) -> dict[str, float]:
    """Perplexity on each named domain, in the mapping's order."""
    return {name: perplexity(model, data, batch_size, max_blocks) for name, data in domains.items()}
