"""Sums over samples of squared per-sample gradients, from one batched forward and backward pass.

The gradient of sample i's loss with respect to a linear layer's weight is ``g_i x_iᵀ`` (``x_i`` the
layer's input, ``g_i`` the loss's gradient at its output), so

    sum_i w_i (g_i x_iᵀ)^2 = (w ∘ g ∘ g)ᵀ (x ∘ x)        (bias: sum_i w_i g_i^2)

is one matmul of what a forward hook saw and what one backward pass to the layer outputs gives: no
per-sample gradient is ever formed. Where a sample meets the weight at several positions (a
convolution, whose input is unfolded so that it becomes a matmul; a linear layer applied to every
token of a sequence) its gradient is a sum over them, ``G_i X_iᵀ``, whose square does not factor: it
is formed per sample, for one layer and one chunk at a time, and squared. BackPACK's SumGradSquared
computes the same; it is not used because it needs torchvision and rewires the model's modules.

What this covers: ``nn.Linear``, ``nn.Conv1d`` and ``nn.Conv2d`` (those exact types; convolutions
with one group, numeric padding and zero padding), each of their parameters entering the forward once,
through its own layer, with the batch in the layer input's first dimension and samples independent of
one another (as in eval mode). With ``replay``, any other module called once on one positional input
(a norm, an embedding, a layer whose weight another one shares) is measured too: its per-sample
gradient is the vector-Jacobian product of that module alone, run again on each sample's input with
that sample's output gradient; cheap next to the model where the module is (a norm's few weights), and
no dearer than a loop of backward passes where it is not. Whatever is not covered is handed back by
name, for the caller to measure another way (`lifelong.strategies.anchors.per_sample_sum` uses
`torch.func`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Container, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.graph import GradientEdge, get_gradient_edge

Tensors = dict[str, torch.Tensor]


@dataclass
class _Seen:
    """One layer's call in the recorded forward: its input, where its output enters the autograd
    graph, and their versions then (an in-place change after the call would make the input another
    than the layer saw, or a held output's gradient that of another tensor).

    The output is held by its gradient edge where it can be: the gradient there is the output's own
    even if it is changed in place later, and the edge does not keep the output alive (a network's
    activations are most of this pass's memory). An output that is a view of another tensor (a linear
    layer over tokens returns one) is held itself: an in-place change re-bases a view's history, which
    would leave its edge out of the graph.
    """

    inputs: torch.Tensor
    target: torch.Tensor | GradientEdge | None  # None: no tensor output in the graph, left to the caller
    versions: tuple[int, int]
    rows: int  # the output's first dimension
    first: torch.Tensor | None  # the output's first row, kept for a module that may be replayed
    alone: bool  # called with one positional tensor and nothing else: a call that can be replayed
    calls: int = 1

    @property
    def unchanged(self) -> bool:
        return (self.inputs._version, _version(self.target)) == self.versions


def _version(target: torch.Tensor | GradientEdge | None) -> int:
    return target._version if isinstance(target, torch.Tensor) else 0


def _fits(module: nn.Module) -> bool:
    if type(module) is nn.Linear:  # exact types: a subclass may compute something else in forward
        return True
    if type(module) in (nn.Conv1d, nn.Conv2d):
        conv: nn.Conv1d | nn.Conv2d = module  # type: ignore[assignment]
        return conv.groups == 1 and conv.padding_mode == "zeros" and not isinstance(conv.padding, str)
    return False


def covered_layers(model: nn.Module, names: Sequence[str]) -> dict[nn.Module, dict[str, str]]:
    """The layers this module can measure, each with its wanted parameters: ``{layer: {"weight":
    full name, "bias": full name}}``. A parameter that two modules hold (tied weights) is left out."""
    wanted = set(names)
    holders = Counter(id(p) for m in model.modules() for p in m.parameters(recurse=False))
    layers: dict[nn.Module, dict[str, str]] = {}
    for prefix, module in model.named_modules():
        if not _fits(module):
            continue
        own = {
            kind: full
            for kind, p in module.named_parameters(recurse=False)
            if (full := f"{prefix}.{kind}" if prefix else kind) in wanted and holders[id(p)] == 1
        }
        if own:
            layers[module] = own
    return layers


@contextmanager
def _recording(
    layers: Sequence[nn.Module], replayed: Container[nn.Module]
) -> Iterator[dict[nn.Module, _Seen]]:
    seen: dict[nn.Module, _Seen] = {}

    def hook(module: nn.Module, args: tuple[object, ...], kwargs: dict[str, object], output: object) -> None:
        if module in seen:
            seen[module].calls += 1
            return
        # detach() shares the version counter, so later in-place changes still show. An input given
        # by keyword is not seen: the empty stand-in fails `_batched`, leaving the layer to vmap.
        inputs = args[0].detach() if args and isinstance(args[0], torch.Tensor) else torch.empty(0)
        alone = len(args) == 1 and not kwargs
        target: torch.Tensor | GradientEdge | None = None
        rows, first = -1, None
        if isinstance(output, torch.Tensor) and output.requires_grad and output.dim() > 0:
            target = output if output._is_view() else get_gradient_edge(output)
            rows = len(output)
            first = output[:1].detach().clone() if module in replayed else None
        seen[module] = _Seen(inputs, target, (inputs._version, _version(target)), rows, first, alone)

    handles = [layer.register_forward_hook(hook, with_kwargs=True) for layer in layers]
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def _tracked(params: Sequence[nn.Parameter]) -> Iterator[None]:
    """Frozen parameters asked for (``trainable_only=False``) must be in the graph for a layer's
    output to have a gradient; they are frozen again afterwards."""
    frozen = [p for p in params if not p.requires_grad]
    for p in frozen:
        p.requires_grad_(True)
    try:
        yield
    finally:
        for p in frozen:
            p.requires_grad_(False)


def _batched(layer: nn.Module, seen: _Seen, n: int) -> bool:
    """Whether the layer saw the batch of ``n`` rows in its first dimension (a convolution may also
    be given a lone unbatched sample)."""
    if seen.target is None or seen.inputs.dim() < 2 or len(seen.inputs) != n or seen.rows != n:
        return False
    return not isinstance(layer, (nn.Conv1d, nn.Conv2d)) or seen.inputs.dim() == layer.weight.dim()


def _uses(root: torch.Tensor) -> Counter[int]:
    """How many edges of ``root``'s autograd graph enter each leaf tensor's gradient accumulator: one
    for a parameter used once in the forward (a layer called twice, or a weight also used outside its
    layer, has more, and its per-sample gradient is not what its layer's hook sees)."""
    uses: Counter[int] = Counter()
    if root.grad_fn is None:
        return uses
    stack, visited = [root.grad_fn], {root.grad_fn}
    while stack:
        for node, _ in stack.pop().next_functions:
            if node is None:
                continue
            if hasattr(node, "variable"):  # AccumulateGrad: a leaf
                uses[id(node.variable)] += 1
            elif node not in visited:
                visited.add(node)
                stack.append(node)
    return uses


def _windows(conv: nn.Conv1d | nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """[N, *kernel, C, *out]: the input patch each output position multiplies by the weight, as a
    strided view (`Tensor.unfold`), its features in (kernel offset, channel) order: the order whose
    copy reads the input in runs (`_layer_sums` puts the sums back in the weight's order). ``F.unfold``
    (im2col) loops over the batch on a CPU, which cost more than the rest of this module together on a
    small CNN.
    """
    assert not isinstance(conv.padding, str)  # `_fits` lets numeric padding through only
    spatial = x.dim() - 2
    pads = [p for p in reversed(conv.padding) for _ in range(2)]
    if any(pads):
        x = F.pad(x, pads)
    for dim, (k, stride, dilation) in enumerate(
        zip(conv.kernel_size, conv.stride, conv.dilation, strict=True)
    ):
        x = x.unfold(2 + dim, dilation * (k - 1) + 1, stride)
        if dilation > 1:
            x = x[..., ::dilation]
    return x.permute(0, *range(2 + spatial, 2 + 2 * spatial), 1, *range(2, 2 + spatial))


def _weight_sum(x: torch.Tensor, g: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``sum_i w_i (X_iᵀ G_i)^2`` for x [N, P, F], g [N, P, O]: [F, O], a new tensor."""
    if x.shape[1] == 1:  # an outer product per sample: its square is the outer product of squares
        return x[:, 0].square().t() @ (g[:, 0].square() * w[:, None])
    # This layer's gradients of these samples only, transposed: [N, F, O] multiplies fastest on a CPU
    # (MKL's batched gemm) for the layouts `_layer_sums` hands over.
    per_sample = torch.bmm(x.transpose(1, 2), g)
    # As a matrix-vector product into the total: one read of them and no temporary.
    return (per_sample.square_().flatten(1).t() @ w).view(x.shape[2], g.shape[2])


# Elements of per-sample gradients and convolution patches one layer forms at once (1 MiB of float32).
# A small CNN's per-sample gradients outweigh its activations several times: bounded apart from the
# pass, they let a pass take more samples (fewer calls, each dearer than its arithmetic on a CPU) in
# no more memory.
SAMPLE_ELEMENTS = 1 << 18
# On an accelerator a call's fixed cost is its launch and memory is larger: blocks 128 times bigger.
ACCELERATOR_SAMPLE_ELEMENTS = 1 << 25


def _layer_sums(
    layer: nn.Module, own: dict[str, str], x: torch.Tensor, g: torch.Tensor, w: torch.Tensor
) -> Tensors:
    """The sums for one layer's wanted parameters, from its input and output gradient as recorded."""
    n, x = len(g), x.to(g.dtype)
    sums = {}
    conv = layer if isinstance(layer, (nn.Conv1d, nn.Conv2d)) else None
    if conv is not None:
        g = g.reshape(n, g.shape[1], -1)
        if "bias" in own:  # summed over positions before the transpose: a contiguous reduction
            sums[own["bias"]] = g.sum(2).square().t() @ w
        x, g = _windows(conv, x), g.transpose(1, 2)
    else:  # [N, positions, features]: a matmul at each position
        x, g = x.reshape(n, -1, x.shape[-1]), g.reshape(n, -1, g.shape[-1])
        if "bias" in own:
            sums[own["bias"]] = g.sum(1).square().t() @ w
    if "weight" in own:
        features, positions = x.shape[-1] if conv is None else conv.weight[0].numel(), g.shape[1]
        budget = SAMPLE_ELEMENTS if g.device.type == "cpu" else ACCELERATOR_SAMPLE_ELEMENTS
        rows = max(n, 1) if positions == 1 else max(1, budget // ((positions + g.shape[2]) * features))
        total: torch.Tensor | None = None
        for start in range(0, n, rows):
            xs = x[start : start + rows]
            if conv is not None:
                # [n, P, k*C] patches: one copy, made even where a view would do (one channel), as
                # bmm would copy overlapping windows sample by sample
                xs = xs.reshape(len(xs), features, -1).contiguous().transpose(1, 2)
            part = _weight_sum(xs, g[start : start + rows], w[start : start + rows])
            total = part if total is None else total.add_(part)
        if total is None:  # no rows
            total = g.new_zeros(features, g.shape[2])
        total = total.t().contiguous()
        if conv is not None:  # [O, *kernel, C] -> [O, C, *kernel]
            total = total.view(len(total), *conv.kernel_size, -1).movedim(-1, 1).contiguous()
        sums[own["weight"]] = total
    return sums


def _holders(model: nn.Module, names: Sequence[str]) -> dict[str, list[nn.Module]]:
    """The modules holding each named parameter directly: several where a weight is tied (matched by
    identity, as a tied weight has one name in ``named_parameters``)."""
    params = dict(model.named_parameters())
    wanted = {id(params[n]): n for n in names}
    holders: dict[str, list[nn.Module]] = {}
    for module in model.modules():
        for p in module.parameters(recurse=False):
            if id(p) in wanted:
                holders.setdefault(wanted[id(p)], []).append(module)
    return holders


class SquaredGradients:
    """``sum_i w_i (d loss_i / d theta)^2`` for those of the named parameters of ``model`` that this
    module covers (see its docstring; ``replay`` widens it). Built once per measurement: finding the
    layers walks the model."""

    def __init__(self, model: nn.Module, names: Sequence[str], replay: bool = False) -> None:
        self.layers = covered_layers(model, names)
        self.names = list(names)
        self.params = dict(model.named_parameters())
        covered = {n for own in self.layers.values() for n in own.values()}
        self.replayed = _holders(model, [n for n in names if n not in covered]) if replay else {}
        self._replayed = _modules(self.replayed)
        self._recorded = list(dict.fromkeys([*self.layers, *self._replayed]))
        self._params = [self.params[n] for n in [*covered, *self.replayed]]

    def __call__(
        self, losses: Callable[[], torch.Tensor], weight: torch.Tensor | None = None
    ) -> tuple[Tensors, list[str]]:
        """Run ``losses`` (a forward giving one loss per sample, [N]) with the layers recorded, then one
        backward pass of their sum; the sums for the parameters measured, and the names of the rest.

        Which layers are measured is decided per call, from what the forward did: a layer called more
        than once, whose input is changed in place after its call, or whose parameters the graph
        reaches another way is left to the caller.
        """
        with _recording(self._recorded, self._replayed) as seen, _tracked(self._params), torch.enable_grad():
            per_sample = losses()
        total = per_sample.sum()
        uses = _uses(total)
        n = len(per_sample)
        fit = [
            (layer, s)
            for layer, s in seen.items()
            if layer in self.layers
            and s.calls == 1
            and s.unchanged
            and _batched(layer, s, n)
            and all(uses[id(getattr(layer, kind))] == 1 for kind in self.layers[layer])
        ]
        replay = {
            name: held
            for name, held in self.replayed.items()
            if uses[id(self.params[name])] == len(held) and all(_replayable(m, seen.get(m), n) for m in held)
        }
        modules = list(dict.fromkeys([*(layer for layer, _ in fit), *_modules(replay)]))
        if not modules:
            return {}, list(self.names)
        w = torch.ones(n, device=per_sample.device) if weight is None else weight
        targets = [target for m in modules if (target := seen[m].target) is not None]  # `_batched`: all
        grads: list[torch.Tensor | None] = list(
            torch.autograd.grad(total, targets, allow_unused=True)  # type: ignore[arg-type]
        )
        calls = {m: (seen[m].inputs, g) for m, g in zip(modules, grads, strict=True)}
        layers = [layer for layer, _ in fit]
        del per_sample, total, seen, fit, targets, grads  # the graph: only inputs and gradients are needed
        sums: Tensors = {}
        replayed = _modules(replay)
        for layer in layers:
            x, g = calls[layer] if layer in replayed else calls.pop(layer)  # freed once used
            if g is not None:  # None: the parameters reach the loss some other way; left to the caller
                sums |= _layer_sums(layer, self.layers[layer], x, g, w.to(g.device, g.dtype))
        for name, held in replay.items():
            parts = [(m, *calls[m]) for m in held]
            if all(g is not None for _, _, g in parts):
                sums[name] = _replayed_sum(self.params[name], parts, w)  # type: ignore[arg-type]
        return sums, [name for name in self.names if name not in sums]


def _modules(held: dict[str, list[nn.Module]]) -> dict[nn.Module, None]:
    """Every module holding one of the parameters, once each, in order (a dict used as a set)."""
    return dict.fromkeys(m for modules in held.values() for m in modules)


def _replayable(module: nn.Module, seen: _Seen | None, n: int) -> bool:
    """Whether running ``module`` again on one sample's input gives that sample's output, as the
    recorded call made it (checked on the first sample)."""
    if (
        seen is None
        or seen.calls != 1
        or not seen.alone
        or not seen.unchanged
        or not _batched(module, seen, n)
    ):
        return False
    with torch.no_grad():
        again = module(seen.inputs[:1])
    return isinstance(again, torch.Tensor) and seen.first is not None and torch.allclose(again, seen.first)


# Elements of per-sample gradients one vmapped replay holds at once (16 MB in float32): a norm's
# samples go in one call, an embedding's of a real vocabulary one by one.
REPLAY_ELEMENTS = 1 << 22


def _replayed_sum(
    param: nn.Parameter, calls: Sequence[tuple[nn.Module, torch.Tensor, torch.Tensor]], w: torch.Tensor
) -> torch.Tensor:
    """``sum_i w_i g_i^2`` where ``g_i``, sample i's gradient of ``param``, is the sum over the modules
    holding it of each one's vector-Jacobian product on sample i's input and output gradient."""
    local = [next(k for k, p in m.named_parameters(recurse=False) if p is param) for m, _, _ in calls]

    def outputs(value: torch.Tensor, inputs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        return tuple(
            torch.func.functional_call(m, {k: value}, (x[None],))
            for (m, _, _), k, x in zip(calls, local, inputs, strict=True)
        )

    def sample_gradient(inputs: tuple[torch.Tensor, ...], grads: tuple[torch.Tensor, ...]) -> torch.Tensor:
        pullback = torch.func.vjp(lambda value: outputs(value, inputs), param.detach())[1]
        return pullback(tuple(g[None] for g in grads))[0]

    chunk = max(1, REPLAY_ELEMENTS // param.numel())
    per_sample = torch.func.vmap(sample_gradient)
    total = torch.zeros_like(param)
    xs, gs = tuple(x for _, x, _ in calls), tuple(g for _, _, g in calls)
    for start in range(0, len(w), chunk):
        part = slice(start, start + chunk)
        grads = per_sample(tuple(x[part] for x in xs), tuple(g[part] for g in gs))
        total += torch.tensordot(w[part].to(grads.dtype), grads.square_(), dims=1)
    return total
