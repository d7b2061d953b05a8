"""What EWC, SI and MAS share: per-sample gradients, parameter anchors, and one quadratic penalty.

All three keep the model near where earlier tasks left it, weighted by how much each parameter
mattered: ``penalty = scale * sum_i w_i (theta_i - c_i)^2 (+ const)``. They differ only in the
importance ``w`` (Fisher, path integral, output sensitivity), so that part is theirs and the rest
lives here, once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from lifelong.core.strategy import Strategy
from lifelong.errors import LifelongError
from lifelong.strategies.sumsq import SquaredGradients

if TYPE_CHECKING:
    from lifelong.core.learner import Learner
    from lifelong.core.strategy import Batch, LMBatch, LMTrainer
    from lifelong.core.stream import Task

Forward = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x, task_ids) -> logits
Tensors = dict[str, torch.Tensor]


def select_parameters(model: nn.Module, trainable_only: bool) -> dict[str, nn.Parameter]:
    params = {n: p for n, p in model.named_parameters() if p.requires_grad or not trainable_only}
    if not params:
        raise LifelongError("the model has no trainable parameters to protect; unfreeze some")
    return params


def snapshot(params: Mapping[str, torch.Tensor]) -> Tensors:
    """Detached copies: the anchor theta* that later tasks are pulled back to."""
    return {n: p.detach().clone() for n, p in params.items()}


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Importance is measured without dropout noise (and BatchNorm on running stats, which vmap needs)."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def task_batches(learner: Learner, batch_size: int, shuffle: bool) -> Iterator[tuple[torch.Tensor, ...]]:
    """The current task's training data as (x, y, task_ids) batches, through the Learner's fast path."""
    for b in learner.batches(learner.train_data, shuffle=shuffle, batch_size=batch_size):
        yield b.x, b.y, b.task_ids


def samples_of(
    batches: Iterable[Sequence[torch.Tensor] | torch.Tensor],
    device: torch.device,
    chunk_size: int,
    limit: int | None = None,
    need_labels: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(x, y, task_ids) on ``device``, ``chunk_size`` rows at a time, from x, (x,), (x, y) or
    (x, y, task_ids) batches of any size; ``limit`` samples at most. Missing labels and ids are 0."""
    seen = 0
    for batch in batches:
        x, *rest = (v.to(device) for v in ([batch] if isinstance(batch, torch.Tensor) else batch))
        if need_labels and not rest:
            raise LifelongError("this estimate needs labels; give it (x, y) batches, not inputs alone")
        y = rest[0] if rest else torch.zeros(len(x), dtype=torch.long, device=device)
        t = rest[1] if len(rest) > 1 else torch.zeros_like(y)
        if limit is not None:
            x, y, t = x[: limit - seen], y[: limit - seen], t[: limit - seen]
        seen += len(y)
        yield from zip(x.split(chunk_size), y.split(chunk_size), t.split(chunk_size), strict=True)
        if limit is not None and seen >= limit:
            return


class _Call(nn.Module):
    """Lets `functional_call` swap the model's parameters under any forward, e.g. the Learner's masked one."""

    def __init__(self, model: nn.Module, forward: Forward | None) -> None:
        super().__init__()
        self.model = model
        self.call = forward

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.call(x, t) if self.call is not None else self.model(x)


def per_sample_sum(
    model: nn.Module,
    forward: Forward | None,
    names: Sequence[str],
    measure: Callable[..., torch.Tensor],
    power: int,
    x: torch.Tensor,
    t: torch.Tensor,
    *extras: torch.Tensor,
    weight: torch.Tensor | None = None,
    chunk_size: int = 64,
    squares: SquaredGradients | None = None,
) -> Tensors:
    """``sum_n weight_n * |d measure(f(x_n), extras_n) / d theta|^power`` for the named parameters.

    ``measure`` maps a batch of logits (and of each extra) to one value per row, [N]; rows must not
    depend on one another. With ``squares`` (`SquaredGradients` of the same model and names, built
    once by the caller) and ``power`` 2, the layers it covers are measured by one batched backward
    pass per chunk of ``chunk_size`` rows; everything else (``power`` 1, other layers, no ``squares``)
    by per-sample gradients, ``vmap(grad(...))`` over the chunk. Either way memory holds at most
    ``chunk_size`` gradient copies whatever the data size (the hooks, of one layer at a time).
    """
    squares = squares if power == 2 else None
    call = _Call(model, forward)
    total: Tensors = {}
    for start in range(0, len(x), chunk_size):
        part = slice(start, start + chunk_size)
        w = torch.ones(len(x[part]), device=x.device) if weight is None else weight[part]
        chunk = _chunk_sum(
            call, names, squares, measure, power, x[part], t[part], [e[part] for e in extras], w
        )
        for n, v in chunk.items():  # each chunk's sums are new tensors: the first is the total
            total[n] = total[n].add_(v) if n in total else v
    params = dict(model.named_parameters())
    return {n: total[n] if n in total else torch.zeros_like(params[n]) for n in names}


def _chunk_sum(
    call: _Call,
    names: Sequence[str],
    squares: SquaredGradients | None,
    measure: Callable[..., torch.Tensor],
    power: int,
    x: torch.Tensor,
    t: torch.Tensor,
    extras: Sequence[torch.Tensor],
    weight: torch.Tensor,
) -> Tensors:
    """One chunk: the layers `squares` covers through hooks, the other parameters through vmap."""
    sums: Tensors = {}
    rest = list(names)
    if squares is not None:
        sums, rest = squares(lambda: measure(call(x, t), *extras), weight)
    if rest:
        sums |= _vmap_sum(call, rest, measure, power, x, t, extras, weight)
    return sums


# Elements of per-sample gradients one vmap call holds (256 MiB of float32): a large parameter the
# hooks leave to vmap (a word embedding) goes a few rows at a time, not a whole chunk's worth.
VMAP_ELEMENTS = 1 << 26


def _vmap_sum(
    call: _Call,
    names: Sequence[str],
    measure: Callable[..., torch.Tensor],
    power: int,
    x: torch.Tensor,
    t: torch.Tensor,
    extras: Sequence[torch.Tensor],
    weight: torch.Tensor,
) -> Tensors:
    """One chunk's weighted sum of per-sample |gradient|^power, through `torch.func`, in parts whose
    per-sample gradients fit `VMAP_ELEMENTS` whatever the chunk."""
    wanted = set(names)
    params = {f"model.{n}": p.detach() for n, p in call.model.named_parameters() if n in wanted}

    def one(p: Tensors, xi: torch.Tensor, ti: torch.Tensor, *ei: torch.Tensor) -> torch.Tensor:
        logits = functional_call(call, p, (xi.unsqueeze(0), ti.unsqueeze(0)))
        return measure(logits, *(e.unsqueeze(0) for e in ei)).sum()  # the one row's value

    per_sample = vmap(grad(one), in_dims=(None, 0, 0, *(0 for _ in extras)))
    rows = max(1, VMAP_ELEMENTS // sum(p.numel() for p in params.values()))
    sums: Tensors = {}
    for start in range(0, len(x), rows):
        part = slice(start, start + rows)
        grads = per_sample(params, x[part], t[part], *(e[part] for e in extras))
        for n, g in grads.items():
            g = g.square_() if power == 2 else g.abs_()  # in place: the gradients are the big tensor
            # The (weighted) sum over the part as one matrix-vector product: a single read of the
            # gradients and no temporary (a sum over dim 0 is a slower, strided reduction).
            summed = (g.reshape(len(g), -1).t() @ weight[part].to(g.dtype)).view(g.shape[1:])
            key = n.removeprefix("model.")
            sums[key] = sums[key].add_(summed) if key in sums else summed
    return sums


def add_into(total: Tensors, part: Tensors) -> Tensors:
    for n, v in part.items():
        total[n] = total[n] + v if n in total else v
    return total


class _Quadratic(torch.autograd.Function):
    """``scale * sum ||sqrt(w) (p - c)||^2`` as one autograd node of a few `_foreach` calls.

    The plain expression costs five autograd ops per parameter tensor, each step; on a small model
    that rivals the model's own step. Here the forward is four calls whatever the parameter count,
    and the backward reuses the forward's buffer in place.
    """

    @staticmethod
    def forward(
        ctx: Any,
        roots: list[torch.Tensor],
        centers: list[torch.Tensor],
        scale: float,
        *params: torch.Tensor,
    ) -> torch.Tensor:
        scaled = torch._foreach_sub(list(params), centers)
        torch._foreach_mul_(scaled, roots)  # sqrt(w) (p - c)
        ctx.scaled, ctx.roots, ctx.scale = scaled, roots, scale
        return torch.stack(torch._foreach_norm(scaled)).square().sum() * scale

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        # Used once, so turned into 2 scale w (p - c) in place, and released from ctx: the engine may
        # then add the task loss's gradient into it in place instead of allocating a sum.
        grads, ctx.scaled = ctx.scaled, None
        torch._foreach_mul_(grads, ctx.roots)
        torch._foreach_mul_(grads, grad_out * (2.0 * ctx.scale))
        return (None, None, None, *grads)


_UNFIT = object()


class QuadraticPenalty:
    """``scale * sum_i w_i (theta_i - c_i)^2 + const`` over named parameters of one model.

    Names resolve to the model's parameters once (`bind`), so a training step is one autograd node
    over precomputed lists: no name lookups, no host syncs.

    Under plain SGD a weight with ``2 * lr * scale * w > 1`` overshoots its anchor on every step (and
    diverges past 2): per-sample importances at lambda ~ 1e3 get there. Given the optimizer, such
    weights are capped where one step lands exactly on the anchor, the strongest pull SGD can
    express. Adam and other adaptive optimizers normalise the step and get no cap.
    """

    def __init__(self) -> None:
        self.weight: Tensors = {}
        self.center: Tensors = {}
        self.scale = 1.0
        self.const = 0.0
        self._params: list[torch.Tensor] = []
        self._roots: list[torch.Tensor] = []  # sqrt(weight), what the step uses
        self._centers: list[torch.Tensor] = []
        self._optimizer: object = _UNFIT  # the optimizer the roots were fitted to (None: no cap)

    def __bool__(self) -> bool:
        return bool(self.weight)

    @property
    def bound(self) -> bool:
        return bool(self._params)

    def set(
        self,
        weight: Tensors,
        center: Tensors,
        scale: float,
        const: float = 0.0,
        model: nn.Module | None = None,
    ) -> None:
        self.weight, self.center, self.scale, self.const = weight, center, scale, const
        self._params = []
        if model is not None:
            self.bind(model)

    def bind(self, model: nn.Module) -> None:
        """Point the penalty at ``model``'s parameters, moving weights and centres to their device."""
        if not self.weight:
            return
        params = dict(model.named_parameters())
        missing = sorted(set(self.weight) - set(params))
        if missing:
            raise LifelongError(
                f"saved importance covers parameters the model lacks ({', '.join(missing[:3])}); "
                "load it into the same architecture it was computed on"
            )
        for n, p in params.items():  # in the strategy's own dicts: one copy, on the model's device
            if n in self.weight:
                self.weight[n] = self.weight[n].to(p.device, p.dtype)
                self.center[n] = self.center[n].to(p.device, p.dtype)
        self._params = [params[n] for n in self.weight]
        self._centers = [self.center[n] for n in self.weight]
        self._optimizer = _UNFIT

    def _fit_step(self, optimizer: torch.optim.Optimizer | None) -> None:
        self._optimizer = optimizer
        cap = None
        if isinstance(optimizer, torch.optim.SGD) and self.scale > 0:
            cap = 1 / (2 * self.scale * max(float(g["lr"]) for g in optimizer.param_groups))
        self._roots = [w.clamp(0, cap).sqrt() for w in self.weight.values()]

    def __call__(self, optimizer: torch.optim.Optimizer | None = None) -> torch.Tensor:
        if not self._params:
            raise LifelongError("the penalty has no model yet; compute importance or bind a model first")
        if optimizer is not self._optimizer:  # once per task: the Learner makes a fresh optimizer
            self._fit_step(optimizer)
        value: torch.Tensor = _Quadratic.apply(self._roots, self._centers, self.scale, *self._params)
        return value + self.const if self.const else value


def combine(terms: Sequence[tuple[Tensors, Tensors]]) -> tuple[Tensors, Tensors, float]:
    """One quadratic equal to ``sum_t sum_i w_ti (theta_i - c_ti)^2``: (sum w, weighted mean c, const).

    Classic EWC keeps one penalty per task; folding them into one keeps a step's cost flat in the
    number of tasks. Done in float64 because the constant is a difference of near-equal sums.
    """
    weight: Tensors = {}
    moment: Tensors = {}
    square = 0.0
    for w, c in terms:
        for n in w:
            w64, c64 = w[n].double(), c[n].double()
            weight[n] = weight[n] + w64 if n in weight else w64
            moment[n] = moment[n] + w64 * c64 if n in moment else w64 * c64
            square += float((w64 * c64 * c64).sum())
    center: Tensors = {}
    for n, total in weight.items():
        last = next(c[n] for _, c in reversed(terms) if n in c).double()
        center[n] = torch.where(total > 0, moment[n] / total.clamp_min(torch.finfo(total.dtype).tiny), last)
        square -= float((total * center[n] * center[n]).sum())
    dtype = {n: c[n].dtype for _, c in terms for n in c}
    return (
        {n: w.to(dtype[n]) for n, w in weight.items()},
        {n: c.to(dtype[n]) for n, c in center.items()},
        max(square, 0.0),
    )


def pack(prefix: str, tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Flat ``prefix.param_name -> tensor`` entries: what safetensors can hold as they are."""
    return {f"{prefix}.{n}": t.detach().cpu() for n, t in tensors.items()}


def unpack(state: Mapping[str, Any], prefix: str) -> Tensors:
    head = prefix + "."
    return {k[len(head) :]: v for k, v in state.items() if k.startswith(head) and isinstance(v, torch.Tensor)}


# ---- the strategies' shared part ---------------------------------------------------------------------


class Anchored(Strategy):
    """The hooks of a strategy whose whole penalty is one `QuadraticPenalty` (ewc, si, mas), in both
    loops: the classic one, and the causal-LM one, where the penalty is a once-per-step term."""

    supports = frozenset({"classifier", "causal-lm"})
    whole_parameters = True

    def __init__(self, model: nn.Module | None = None) -> None:
        self.model = model
        self._penalty = QuadraticPenalty()

    def before_task(self, learner: Learner, task: Task) -> None:
        self.model = learner.model
        self._penalty.bind(learner.model)

    def penalty(self, learner: Learner, batch: Batch, outputs: torch.Tensor) -> torch.Tensor | float:
        return self._penalty(learner.optimizer) if self._penalty else 0.0

    def lm_before_task(self, trainer: LMTrainer) -> None:
        self.model = trainer.model
        self._penalty.bind(trainer.model)

    def lm_penalty(self, trainer: LMTrainer, batch: LMBatch, outputs: Any) -> torch.Tensor | float:
        # No optimizer given, so no SGD cap: the Trainer's optimizer is wrapped (and usually adaptive).
        if not self._penalty:
            return 0.0
        if not self._penalty.bound:
            self._penalty.bind(trainer.model)
        value = self._penalty()
        trainer.note(f"{self.name}_penalty", value)
        return value * batch.per_step

    def lm_protect(self, trainer: LMTrainer, data: Any) -> None:
        if self.lm_task_data and not self._penalty and data is not None:
            self.lm_after_task(trainer, data)


class SummedImportance(Anchored):
    """An `Anchored` strategy whose importance adds up over tasks, anchored where the last task
    left the weights (si, mas); ``strength`` scales the penalty."""

    def __init__(self, model: nn.Module | None = None) -> None:
        super().__init__(model)
        self.importance: Tensors = {}
        self.anchor: Tensors = {}
        self.tasks = 0

    @property
    def strength(self) -> float:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {"tasks": self.tasks} | pack("importance", self.importance) | pack("anchor", self.anchor)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.tasks = int(state.get("tasks", 0))
        self.importance, self.anchor = unpack(state, "importance"), unpack(state, "anchor")
        self._penalty = QuadraticPenalty()
        if self.importance:
            self._penalty.set(self.importance, self.anchor, scale=self.strength, model=self.model)
