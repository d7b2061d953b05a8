"""The teacher's next-token distribution, kept once per example: LwF's ``cache=topk`` for causal LMs.

When the same examples come back every epoch, the frozen teacher gives the same logits each time, so
the first time an example is seen its teacher distribution is kept and every later epoch of the task
reads it instead of running the teacher. All V logits per token would cost V floats a position; as
DER keeps logits, a few are kept: per distilled position, the teacher's k most likely tokens (int32)
with their log-probabilities at the distillation temperature (float16), the log-mass of all the other
tokens (the rest) and its entropy, and ``samples`` tokens drawn from the teacher's distribution over
the rest (int32).

The KL splits exactly into the top-k terms, known, and the rest's: ``sum p log p`` over the rest is
known from its mass and entropy, and ``-sum p log q`` over it is estimated by the drawn tokens
(``p_rest`` times the mean of ``-log q`` over them). The estimate is unbiased, its gradient too:
``(q - p) / T`` in expectation, every token of the vocabulary included; the draws are made once,
when the entry is filled, with torch's RNG (which the Trainer seeds). With ``samples=0`` the rest is
one lumped outcome instead (the KL of the k + 1 outcomes: a lower bound, short by the teacher's rest
mass times the KL inside the rest, and blind to how the student spreads its own rest). That is what
DER-style top-k keeps, and on tiny-llama at T=2 it lost most of the KL and let forgetting double
(README, "LLM continual pre-training"); renormalised top-k would be blind to the rest's mass as well.
k >= V keeps everything: the exact KL.

Every step of a cached task uses this form, the step that fills an entry included, so the loss of an
example does not depend on whether its entry was there yet. Entries are keyed by the example's
content (its tokens, attention, positions and which positions are distilled; `fingerprints`), not by
its place in the batch, so shuffling, other batch widths or padding cannot mismatch them, and two
datasets concatenated cannot collide the way two counters from 0 would. The entries stay on the
logits' device, up to ``limit_bytes``; past that, further examples are recomputed each step (still
in this form, with fresh draws), and one warning says so.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple, cast

import torch
import torch.nn.functional as F

# The smallest rest mass resolved: float32 cannot tell 1 - (top-k mass) apart from 0 below ~1e-7.
_REST_FLOOR = 1e-7


class Targets(NamedTuple):
    """The teacher's kept distribution at ``P`` positions (see the module's docstring)."""

    log_p: torch.Tensor  # [P, k] log-probabilities of the top k tokens (all V when k >= V)
    ids: torch.Tensor  # [P, k + samples] the top k tokens, then the tokens drawn from the rest
    rest: torch.Tensor  # [P, 2] log-mass and entropy of the rest; [P, 0] when nothing is left out

    def to(self, dtype: torch.dtype) -> Targets:
        """Values in ``dtype``, token ids in int32: as stored (copies, outside any inference mode)."""
        return Targets(
            self.log_p.to(dtype, copy=True),
            self.ids.to(torch.int32, copy=True),
            self.rest.to(dtype, copy=True),
        )

    def rows(self, start: int, stop: int) -> Targets:
        return Targets(*(t[start:stop].clone() for t in self))

    @staticmethod
    def cat(parts: list[Targets]) -> Targets:
        return Targets(*(torch.cat(column) for column in zip(*parts, strict=True)))

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self)


def next_token_logits(logits: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    """The next-token logits of ``logits`` ``[B, L, V]`` at the ``keep`` positions (bool ``[B, L - 1]``:
    the positions that predict a distilled token), ``[P, V]`` row-major; all of them when None, as
    the ``[B, L - 1, V]`` view (no copy)."""
    shifted = logits[:, :-1]
    return shifted if keep is None else shifted[keep]


def distilled_rows(logits: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    """`next_token_logits` as ``[P, V]`` rows (a copy when ``keep`` is None)."""
    rows = next_token_logits(logits, keep)
    return rows.reshape(-1, rows.shape[-1])


def rest_log_mass(top: torch.Tensor) -> torch.Tensor:
    """``log(1 - sum(exp(top)))`` per row of top-k log-probabilities ``[P, k]``, as ``[P, 1]``.

    From the top k alone (``log(-expm1(a))``), not from a second pass over the vocabulary: the
    masked log-sum-exp costs as much again as the whole top-k KL. Floored at `_REST_FLOOR`, where
    float32 loses it (no gradient flows through the floor, and the top-k terms still do).
    """
    inside = top.logsumexp(-1, keepdim=True).clamp(max=-_REST_FLOOR)
    return torch.log(-torch.expm1(inside))


def topk_targets(
    logits: torch.Tensor, k: int, samples: int, temperature: float, *, overwrite: bool = False
) -> Targets:
    """What is kept of the teacher's ``logits`` (``[P, V]`` or ``[B, L, V]``) at ``temperature``, a
    row per position: the top ``k`` tokens, the rest's mass and entropy, and ``samples`` tokens drawn
    from the rest (torch's default RNG). A strided view (the shifted ``[B, L - 1, V]``) is read
    without a copy; with ``overwrite`` float32 logits are the caller's to spend, scaled in place."""
    if overwrite and logits.dtype == torch.float32:
        shifted = logits.div_(temperature)
    else:
        shifted = logits.float() / temperature
    shifted.sub_(shifted.amax(-1, keepdim=True))  # log-probabilities up to each row's log-partition
    shifted.clamp_(min=torch.finfo(shifted.dtype).min)  # a masked token's -inf would make 0 * -inf below
    rest = shifted.exp()  # unnormalised probabilities: every use below divides by the partition
    partition = rest.sum(-1, keepdim=True)
    log_partition = partition.log()
    vocab = shifted.shape[-1]
    if k >= vocab:
        log_p = shifted.sub_(log_partition).reshape(-1, vocab)
        ids = torch.arange(vocab, device=log_p.device).expand_as(log_p)
        return Targets(log_p, ids, log_p.new_zeros(log_p.shape[0], 0))
    top, ids = largest(shifted, k)  # the order among the k does not matter
    # The rest with the top k zeroed: summed, not 1 - (top-k mass), so exact however small;
    # multinomial draws from it unnormalised. Its sum of p log p, shifted: sum(e s) / Z - mass log Z.
    rest.scatter_(-1, ids, 0.0)
    total = rest.sum(-1, keepdim=True)
    fraction = total / partition
    mass = fraction.clamp_min(torch.finfo(rest.dtype).tiny)
    p_log_p = shifted.mul_(rest).sum(-1, keepdim=True) / partition - fraction * log_partition
    entropy = mass.log() - p_log_p / mass
    top, ids, rest, total = (t.flatten(0, -2) for t in (top - log_partition, ids, rest, total))
    if samples:  # a row with no rest left (underflow) draws anything: its weight, the mass, is 0
        rest[:, 0] += total[:, 0] == 0
        ids = torch.cat([ids, torch.multinomial(rest, samples, replacement=True)], dim=-1)
    return Targets(top, ids, torch.cat([mass.log(), entropy], dim=-1).flatten(0, -2))


def largest(rows: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``rows.topk(k, sorted=False)`` over the last dimension of ``[..., V]``, in two rounds on a CPU.

    Cut each row into ``c`` slices and take the maximum of every column of them (``V / c`` strided
    groups): the k largest entries all lie in the k groups of largest maximum, since those maxima
    are already k entries at least as large as any other group's. So a top-k over the ``V / c``
    maxima, then over the ``c k`` entries of the groups chosen, gives the same values (equal ones
    may be picked by other ids), and on tiny-llama's V=2048 at k=32 takes half the time of one over
    V: torch's CPU top-k costs about k per entry scanned. A GPU's own top-k is used as it is.
    """
    vocab = rows.shape[-1]
    slices = 1 << max(0, round(math.log2(max(vocab / k, 1)) / 2))  # balances the two rounds' sizes
    if rows.device.type != "cpu" or slices < 4 or vocab % slices or vocab // slices < 2 * k:
        return rows.topk(k, dim=-1, sorted=False)
    groups = vocab // slices
    table = rows.unflatten(-1, (slices, groups))  # a view, strided rows included
    _, chosen = table.amax(-2).topk(k, dim=-1, sorted=False)  # [..., k] groups
    candidates = table.gather(-1, chosen.unsqueeze(-2).expand(*table.shape[:-1], k)).flatten(-2)
    values, at = candidates.topk(k, dim=-1, sorted=False)
    return values, chosen.gather(-1, at % k) + at.div(k, rounding_mode="floor") * groups


def kept_distillation(
    logits: torch.Tensor, keep: torch.Tensor | None, targets: Targets, temperature: float
) -> torch.Tensor:
    """Mean per-position KL(teacher || student) from the kept ``targets`` (`topk_targets`): exact
    for the top k, the rest's part estimated by its drawn tokens (lumped when none were drawn).

    ``logits``: the student's ``[B, L, V]``; ``keep`` as in `distilled_rows`, at whose positions
    ``targets`` were taken. The KL is taken in float32 at least.
    """
    k = targets.log_p.shape[-1]
    if targets.rest.shape[-1] and targets.ids.shape[-1] == k:
        return _lumped(distilled_rows(logits, keep), targets, temperature)
    log_p = targets.log_p.float()
    p_top = log_p.exp()
    weights, constant = p_top, (p_top * log_p).sum()  # weights: the teacher's mass at each kept id
    if targets.rest.shape[-1]:  # the rest's mass, shared by its draws; its sum p log p is known
        log_mass, entropy = targets.rest.float().unbind(-1)
        drawn = targets.ids.shape[-1] - k
        weights = torch.cat([weights, (log_mass.exp() / drawn).unsqueeze(-1).expand(-1, drawn)], dim=-1)
        constant = constant + (log_mass.exp() * (log_mass - entropy)).sum()
    ids = targets.ids.long()
    if keep is None:  # every position but the last: no copy of the logits, the last one weighs 0
        batch, length, _ = logits.shape
        ids, weights = (F.pad(t.view(batch, length - 1, -1), (0, 0, 0, 1)) for t in (ids, weights))
        rows = logits  # as they are: a view here would keep autograd from adding gradients in place
    else:
        rows = distilled_rows(logits, keep)
    count = len(log_p)
    cross = cast(torch.Tensor, _CrossEntropy.apply(rows, ids, weights, temperature))
    return (constant + cross) / count


class _CrossEntropy(torch.autograd.Function):
    """``-sum(w * log_softmax(rows / T)[ids])``, its gradient written out: ``(W q - w at ids) / T``
    per row, with q the student's softmax and W the row's total weight. Through autograd, slicing,
    log-softmax and gathering would each write a ``[rows, V]`` tensor more, forward and backward:
    half again the time of the whole term on tiny-llama. The forward keeps q (in the rows' dtype) in
    place of the rows, so the backward is one pass over it."""

    @staticmethod
    def forward(
        ctx: Any, rows: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor, temperature: float
    ) -> torch.Tensor:
        wide = rows if rows.element_size() >= 4 else rows.float()
        top = wide.amax(-1, keepdim=True)
        q = (wide - top).div_(temperature).exp_()
        partition = q.sum(-1, keepdim=True)
        lse = (top / temperature + partition.log()).squeeze(-1)
        ctx.save_for_backward(q.div_(partition).to(rows.dtype), ids, weights)
        ctx.temperature = temperature
        return (weights.sum(-1) * lse).sum() - (weights * wide.gather(-1, ids)).sum() / temperature

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        q, ids, weights = ctx.saved_tensors
        scale = grad / ctx.temperature
        # In place: a fresh [rows, V] tensor costs more than the pass itself (first-touch page
        # faults). The saved q is spent; autograd's version check refuses a second backward.
        result = q if q.element_size() >= 4 else q.float()
        result.mul_(weights.sum(-1, keepdim=True) * scale).scatter_add_(-1, ids, weights * -scale)
        return result.to(q.dtype), None, None, None


def _lumped(rows: torch.Tensor, targets: Targets, temperature: float) -> torch.Tensor:
    """The KL of k + 1 outcomes, the top k and the rest as one (``samples=0``), through autograd."""
    wide = rows if rows.element_size() >= 4 else rows.float()
    log_q = F.log_softmax(wide / temperature, dim=-1)
    log_p, log_mass = targets.log_p.to(log_q.dtype), targets.rest[:, :1].to(log_q.dtype)
    top_q = log_q.gather(-1, targets.ids.long())
    kl = (log_p.exp() * (log_p - top_q)).sum() + (log_mass.exp() * (log_mass - rest_log_mass(top_q))).sum()
    return kl / rows.shape[0]


# ---- keys ---------------------------------------------------------------------------------------


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _shift_right(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical shift of int64 values (torch shifts them arithmetically, copying the sign bit)."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def _mix(x: torch.Tensor) -> torch.Tensor:
    """MurmurHash3's 64-bit finaliser, in wrapping int64 arithmetic: every bit of the input moves about
    half of the output's, so sums of mixed values behave like sums of random 64-bit numbers."""
    x = x ^ _shift_right(x, 33)
    x = x * _signed(0xFF51AFD7ED558CCD)
    x = x ^ _shift_right(x, 33)
    x = x * _signed(0xC4CEB9FE1A85EC53)
    return x ^ _shift_right(x, 33)


def fingerprints(inputs: dict[str, torch.Tensor], keep: torch.Tensor | None) -> list[tuple[int, int]]:
    """(64-bit hash, distilled positions) per row of a batch: what decides a row's teacher targets.

    ``inputs``: the rows' ``input_ids`` (and ``attention_mask``, ``position_ids`` when given);
    ``keep`` as in `distilled_rows`. Each position's code (token, distilled or not, position id)
    is mixed with its place and the row's mixed codes summed modulo 2^64 (int64 arithmetic wraps),
    so two different rows collide about as often as two random 64-bit ids would, and right-padding
    adds nothing to the sum (pads code as 0): a row hashes the same in any batch. One device sync.
    """
    tokens = inputs["input_ids"]
    code = tokens.long() * 2 + 1
    code[:, :-1] += 1 if keep is None else keep
    if "position_ids" in inputs:
        code += inputs["position_ids"].long() << 34  # tokens and their flags take the low 34 bits
    mixed = _mix(code ^ _mix(torch.arange(code.shape[1], device=code.device)))  # code and place
    if "attention_mask" in inputs:
        mixed *= inputs["attention_mask"].long()
    hashes = mixed.sum(dim=1)
    counts = torch.full_like(hashes, code.shape[1] - 1) if keep is None else keep.sum(dim=1)
    pairs = torch.stack([hashes, counts]).tolist()
    return list(zip(pairs[0], pairs[1], strict=True))


# ---- the cache ------------------------------------------------------------------------------------


class TopKCache:
    """The teacher's kept targets per example, for one task (see the module's docstring)."""

    def __init__(
        self, k: int, samples: int, temperature: float, limit_bytes: int, dtype: torch.dtype = torch.float16
    ) -> None:
        self.k, self.samples, self.temperature = k, samples, temperature
        self.limit_bytes, self.dtype = limit_bytes, dtype
        self.entries: dict[tuple[int, int], Targets] = {}
        self.bytes = 0
        self.full = False
        self.teacher_calls = 0  # how many batches needed the teacher (what the cache saves, counted)

    def targets(
        self, inputs: dict[str, torch.Tensor], keep: torch.Tensor | None, teacher: Callable[[], torch.Tensor]
    ) -> Targets:
        """The kept targets at the positions `distilled_rows` picks with ``keep``, row-major;
        ``inputs`` as `fingerprints` takes them; ``teacher()`` gives the rows' logits ``[B, L, V]``,
        called only when some row has no entry yet: a tensor of its own, which is overwritten."""
        keys = fingerprints(inputs, keep)
        found = [self.entries.get(key) for key in keys]
        if all(entry is not None for entry in found):
            return Targets.cat([entry for entry in found if entry is not None])
        self.teacher_calls += 1
        logits = teacher()
        with torch.inference_mode():
            rows = next_token_logits(logits, keep)
            kept = topk_targets(rows, self.k, self.samples, self.temperature, overwrite=True)
        # Rounded as stored, outside inference mode (the KL saves them for its backward): a row's
        # targets are the same tensors whether they were computed this step or read back.
        kept = kept.to(self.dtype)
        self._store(keys, kept)
        return kept

    def _store(self, keys: list[tuple[int, int]], kept: Targets) -> None:
        per_position = kept.nbytes() // max(len(kept.log_p), 1)
        start = 0
        for key in keys:
            count = key[1]
            size = count * per_position
            if key not in self.entries and self.bytes + size <= self.limit_bytes:
                self.entries[key] = kept.rows(start, start + count)
                self.bytes += size
            elif key not in self.entries and not self.full:
                self.full = True
                warnings.warn(
                    f"lwf cache holds {self.bytes / 2**20:.0f} MB, its limit; further examples run the "
                    "teacher every step (raise cache_mb, lower k or samples, or use cache=none)",
                    stacklevel=2,
                )
            start += count
