"""Squared per-sample gradients from layer hooks: each covered layer against a loop of single-sample
backward passes (float64, so equal to rounding), the cases it must hand back to vmap, and the Fisher
and MAS importance end to end against the vmap path."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from lifelong.strategies import EWC, MAS, anchors, sumsq
from lifelong.strategies.anchors import per_sample_sum
from lifelong.strategies.ewc import _likely_pairs, _nll
from lifelong.strategies.sumsq import SquaredGradients, covered_layers

Measure = Callable[[torch.Tensor], torch.Tensor]


def output_norms(out: torch.Tensor) -> torch.Tensor:
    return out.square().flatten(1).sum(1)


def loop_sums(
    model: nn.Module, x: torch.Tensor, measure: Measure, weight: torch.Tensor
) -> dict[str, torch.Tensor]:
    """The reference: ``sum_i w_i (d measure(f(x_i)) / d theta)^2``, one backward pass per sample."""
    params = dict(model.named_parameters())
    total = {n: torch.zeros_like(p) for n, p in params.items()}
    for i in range(len(x)):
        grads = torch.autograd.grad(measure(model(x[i : i + 1])).sum(), list(params.values()))
        for n, g in zip(params, grads, strict=True):
            total[n] += weight[i] * g.square()
    return total


def hook_sums(model: nn.Module, x: torch.Tensor, measure: Measure, weight: torch.Tensor):
    squares = SquaredGradients(model, [n for n, _ in model.named_parameters()])
    return squares(lambda: measure(model(x)), weight)


LAYERS = {
    "linear": (lambda: nn.Linear(5, 3), (7, 5)),
    "linear over tokens": (lambda: nn.Linear(5, 3), (7, 4, 5)),
    "linear over a grid": (lambda: nn.Linear(5, 3, bias=False), (7, 2, 3, 5)),
    "conv1d": (lambda: nn.Conv1d(3, 4, 5, stride=2, padding=2), (7, 3, 17)),
    "conv1d dilated": (lambda: nn.Conv1d(2, 4, 3, stride=3, padding=3, dilation=2), (7, 2, 20)),
    "conv1d one position": (lambda: nn.Conv1d(2, 3, 4), (7, 2, 4)),
    "conv2d": (lambda: nn.Conv2d(3, 5, (3, 2), stride=(2, 1), padding=(1, 2), dilation=(2, 1)), (7, 3, 9, 8)),
    "conv2d 1x1": (lambda: nn.Conv2d(2, 3, 1), (7, 2, 4, 4)),
}


@pytest.mark.parametrize("case", list(LAYERS))
@pytest.mark.parametrize("budget", ["whole batch", "a few rows at a time"])
def test_each_layer_equals_the_loop_of_single_sample_backward_passes(
    case: str, budget: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if budget != "whole batch":  # per-sample gradients formed 1-3 rows at a time, the last part short
        monkeypatch.setattr(sumsq, "SAMPLE_ELEMENTS", 80)
    make, shape = LAYERS[case]
    torch.manual_seed(0)
    model = nn.Sequential(make(), nn.Tanh()).double()  # a nonlinearity: output gradients differ per row
    x = torch.randn(shape, dtype=torch.double)
    weight = torch.rand(len(x), dtype=torch.double)
    sums, rest = hook_sums(model, x, output_norms, weight)
    assert rest == [] and set(sums) == {n for n, _ in model.named_parameters()}
    for name, want in loop_sums(model, x, output_norms, weight).items():
        torch.testing.assert_close(sums[name], want, rtol=1e-12, atol=0)


class Twice(nn.Module):
    """One layer called twice and a weight tied to another layer's: per-sample gradients the hooks
    cannot see, so vmap must measure them; and a layer whose output is changed in place after its
    call, whose gradient the hooks still take at the layer's own output."""

    def __init__(self) -> None:
        super().__init__()
        self.shared = nn.Linear(4, 4)
        self.tied = nn.Linear(4, 4, bias=False)
        self.tied.weight = self.shared.weight
        self.inplace = nn.Linear(4, 4)
        self.plain = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.shared(torch.tanh(self.shared(x))))
        h = torch.tanh(self.tied(h))
        h = self.inplace(h).relu_()
        return self.plain(h)


@pytest.mark.parametrize("budget", ["whole chunk", "a row at a time"])
def test_reused_and_tied_layers_are_left_to_the_caller_and_vmap_gets_them_right(
    budget: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if budget != "whole chunk":  # the vmap fallback's per-sample gradients bounded below one row's
        monkeypatch.setattr(anchors, "VMAP_ELEMENTS", 1)
    torch.manual_seed(0)
    model = Twice().double()
    x = torch.randn(9, 4, dtype=torch.double)
    names = [n for n, _ in model.named_parameters()]
    assert "tied.weight" not in names  # the tied weight is one parameter, first named shared.weight
    layers = covered_layers(model, names)  # what a layer holds alone; the forward decides the rest
    assert set(layers) == {model.shared, model.inplace, model.plain} and set(layers[model.shared]) == {"bias"}
    sums, rest = hook_sums(model, x, output_norms, torch.ones(9, dtype=torch.double))
    assert set(sums) == {"plain.weight", "plain.bias", "inplace.weight", "inplace.bias"}
    assert set(rest) == {"shared.weight", "shared.bias"}

    got = per_sample_sum(
        model, None, names, output_norms, 2, x, torch.zeros(9), squares=SquaredGradients(model, names)
    )
    for name, want in loop_sums(model, x, output_norms, torch.ones(9, dtype=torch.double)).items():
        torch.testing.assert_close(got[name], want, rtol=1e-12, atol=0)


class OverTokens(nn.Module):
    """A linear layer over tokens returns a view of its matmul's result; here it is changed in place
    after a side branch read it (a residual), or by an in-place swish."""

    def __init__(self, swish: bool) -> None:
        super().__init__()
        self.swish = swish
        self.a = nn.Linear(5, 5)
        self.b = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        if self.swish:
            return self.b(h.mul_(torch.sigmoid(h))).sum(1)
        side = torch.tanh(h)
        h.mul_(2)
        return self.b(h + side).sum(1)


@pytest.mark.parametrize("swish", [False, True])
def test_a_view_output_changed_in_place_is_left_to_vmap_and_measured_right(swish: bool) -> None:
    torch.manual_seed(0)
    model = OverTokens(swish).double()
    x = torch.randn(6, 4, 5, dtype=torch.double)
    assert model.a(x)._is_view()  # what this test is about
    names = [n for n, _ in model.named_parameters()]
    ones = torch.ones(6, dtype=torch.double)
    sums, rest = hook_sums(model, x, output_norms, ones)
    assert set(rest) == {"a.weight", "a.bias"} and set(sums) == {"b.weight", "b.bias"}
    got = per_sample_sum(
        model, None, names, output_norms, 2, x, torch.zeros(6), squares=SquaredGradients(model, names)
    )
    for name, want in loop_sums(model, x, output_norms, ones).items():
        torch.testing.assert_close(got[name], want, rtol=1e-12, atol=0)


def test_other_layers_and_subclasses_are_not_covered() -> None:
    class MyLinear(nn.Linear):  # a subclass may compute something else in its forward
        pass

    model = nn.Sequential(
        nn.Conv1d(2, 4, 3, groups=2),
        nn.Conv1d(4, 4, 3, padding="same"),
        nn.Conv1d(4, 4, 3, padding=1, padding_mode="circular"),
        nn.LayerNorm(4),
        MyLinear(4, 4),
        nn.Linear(4, 2),
    )
    layers = covered_layers(model, [n for n, _ in model.named_parameters()])
    assert list(layers) == [model[5]] and layers[model[5]] == {"weight": "5.weight", "bias": "5.bias"}


def test_frozen_parameters_asked_for_are_measured_and_stay_frozen() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    model[0].requires_grad_(False)
    x = torch.randn(5, 3, dtype=torch.double)
    fisher = EWC(model, trainable_only=False).fisher_information([(x, torch.tensor([0, 1, 1, 0, 1]))])
    assert set(fisher) == {"0.weight", "0.bias", "2.weight", "2.bias"} and bool(
        fisher["0.weight"].gt(0).all()
    )
    assert not model[0].weight.requires_grad and not model[0].bias.requires_grad


def cnn() -> nn.Module:
    return nn.Sequential(
        nn.Unflatten(1, (1, 12)),
        nn.Conv1d(1, 4, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv1d(4, 4, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(24, 5),
    )


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.LayerNorm(16), nn.Linear(16, 5))  # LayerNorm: vmap


@pytest.mark.parametrize("make", [cnn, mlp])
@pytest.mark.parametrize("kind", ["empirical", "exact", "sampled"])
def test_every_fisher_kind_equals_the_vmap_path(make: Callable[[], nn.Module], kind: str) -> None:
    torch.manual_seed(0)
    model = make().double()
    x, y = torch.randn(37, 12, dtype=torch.double), torch.randint(0, 5, (37,))
    ewc = EWC(model, fisher=kind, chunk_size=8)  # type: ignore[arg-type]
    fisher = ewc.fisher_information([(x, y)], generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        probs = torch.softmax(model(x).float(), 1)  # as EWC draws and weighs labels
    rows, weight = torch.arange(37), None
    if kind == "sampled":
        y = torch.multinomial(probs, 1, generator=torch.Generator().manual_seed(1)).squeeze(1)
    elif kind == "exact":
        rows, y, weight = _likely_pairs(probs)
    names = [n for n, _ in model.named_parameters()]
    want = per_sample_sum(model, None, names, _nll, 2, x[rows], torch.zeros_like(rows), y, weight=weight)
    for name in names:
        torch.testing.assert_close(fisher[name], want[name] / 37, rtol=1e-10, atol=0)
        assert fisher[name].is_contiguous()  # safetensors stores contiguous tensors only


def test_mas_keeps_absolute_values_through_vmap() -> None:
    """MAS sums |g|, which the squares' trick does not give: its importance still equals the loop's."""
    torch.manual_seed(0)
    model = cnn()
    x = torch.randn(11, 12)
    got = MAS(model, chunk_size=4).compute_importance([x])
    for name, p in model.named_parameters():
        want = (
            sum(torch.autograd.grad(model(x[i : i + 1]).square().sum(), p)[0].abs() for i in range(11)) / 11
        )
        torch.testing.assert_close(got[name], want, rtol=1e-5, atol=1e-7)


def tiny_llama(tied: bool = False) -> tuple[nn.Module, torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
    """A 1-layer Llama in float64, 5 sequences of 9 tokens, and each sequence's mean next-token NLL, [N]."""
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(
        vocab_size=32,
        hidden_size=8,
        intermediate_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=16,
        tie_word_embeddings=tied,
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).double().eval()
    ids = torch.randint(0, 32, (5, 9), generator=torch.Generator().manual_seed(0))

    def nll(ids: torch.Tensor) -> torch.Tensor:
        logits = model(input_ids=ids, use_cache=False).logits[:, :-1]
        return nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none").mean(1)

    return model, ids, nll


def test_a_causal_lm_gets_the_squared_gradient_of_each_sequence_on_its_linear_layers() -> None:
    """A sequence's gradient is a sum over its tokens (not the token-wise trick): against a loop of
    one backward pass per sequence of its mean next-token NLL, on a tiny Llama in float64."""
    model, ids, nll = tiny_llama()

    linear = [f"{m}.weight" for m, mod in model.named_modules() if type(mod) is nn.Linear]
    sums, rest = SquaredGradients(model, linear)(lambda: nll(ids))
    assert rest == [] and len(sums) == 8  # q, k, v, o, gate, up, down, lm_head
    params = [dict(model.named_parameters())[n] for n in linear]
    want = [torch.zeros_like(p) for p in params]
    for i in range(len(ids)):
        for total, g in zip(want, torch.autograd.grad(nll(ids[i : i + 1]).sum(), params), strict=True):
            total += g.square()
    for name, total in zip(linear, want, strict=True):
        torch.testing.assert_close(sums[name], total, rtol=1e-10, atol=0)


@pytest.mark.parametrize("tied", [False, True])
def test_replay_measures_every_weight_of_a_causal_lm_norms_embeddings_and_tied_ones(tied: bool) -> None:
    """With ``replay``, the weights no layer hook covers (RMS norms, the embedding, an embedding
    shared with the output layer) get each sequence's squared gradient too: against the loop."""
    model, ids, nll = tiny_llama(tied)
    weight = torch.tensor([1.0, 0.5, 2.0, 1.0, 0.0], dtype=torch.double)

    params = dict(model.named_parameters())
    assert tied == ("lm_head.weight" not in params)  # a tied weight has one name
    sums, rest = SquaredGradients(model, list(params), replay=True)(lambda: nll(ids), weight)
    assert rest == [] and sums.keys() == params.keys()
    for name, p in params.items():
        want = sum(
            w * torch.autograd.grad(nll(ids[i : i + 1]).sum(), [p])[0].square() for i, w in enumerate(weight)
        )
        torch.testing.assert_close(sums[name], want, rtol=1e-10, atol=1e-300, msg=name)
    _, rest = SquaredGradients(model, list(params))(lambda: nll(ids))
    assert "model.norm.weight" in rest and "model.embed_tokens.weight" in rest  # replay is asked for
