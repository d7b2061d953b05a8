"""EWC: each Fisher estimator against closed forms, the penalty and its gradient, both modes, the seed API."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lifelong.core.learner import Learner
from lifelong.core.stream import Scenario, Stream, split_by_classes
from lifelong.errors import LifelongError
from lifelong.strategies import EWC, build_strategies

# A softmax-linear model: the per-sample gradient of -log p_c(x) is (p - e_c) x^T for the weight and
# (p - e_c) for the bias, so every Fisher estimator has a closed form to test against.
X = torch.tensor([[1.0, -2.0], [0.5, 0.3], [-1.5, 0.8], [2.0, 1.0]])
Y = torch.tensor([0, 2, 1, 2])


def linear_model() -> nn.Linear:
    torch.manual_seed(0)
    model = nn.Linear(2, 3)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.3, -0.2], [-0.5, 0.4], [0.1, 0.6]]))
        model.bias.copy_(torch.tensor([0.1, -0.2, 0.05]))
    return model


def closed_form(model: nn.Linear, x: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor | None = None):
    """mean over samples of weight * per-sample squared gradient, from (p - e_y) x^T."""
    with torch.no_grad():
        p = torch.softmax(model(x), dim=1)
        r = p - F.one_hot(labels, 3).float()
        w = torch.ones(len(x)) if weight is None else weight
        fw = torch.einsum("n,ni,nj->ij", w, r**2, x**2)
        fb = torch.einsum("n,ni->i", w, r**2)
    return fw, fb


def test_empirical_fisher_matches_the_closed_form() -> None:
    model = linear_model()
    fisher = EWC(model, fisher="empirical").fisher_information([(X, Y)])
    fw, fb = closed_form(model, X, Y)
    torch.testing.assert_close(fisher["weight"], fw / len(X))
    torch.testing.assert_close(fisher["bias"], fb / len(X))


def test_exact_fisher_is_the_expectation_over_the_models_own_labels() -> None:
    model = linear_model()
    fisher = EWC(model, fisher="exact", chunk_size=5).fisher_information([(X, Y)])
    probs = torch.softmax(model(X), dim=1).detach()
    fw, fb = torch.zeros(3, 2), torch.zeros(3)
    for c in range(3):  # sum_c p_c g_c^2, class by class
        w, b = closed_form(model, X, torch.full((len(X),), c), weight=probs[:, c])
        fw, fb = fw + w, fb + b
    torch.testing.assert_close(fisher["weight"], fw / len(X))
    torch.testing.assert_close(fisher["bias"], fb / len(X))


def test_sampled_fisher_draws_labels_from_the_generator_and_averages_to_the_exact_one() -> None:
    model = linear_model()
    fisher = EWC(model, fisher="sampled").fisher_information(
        [(X, Y)], generator=torch.Generator().manual_seed(3)
    )
    probs = torch.softmax(model(X), dim=1).detach()
    drawn = torch.multinomial(probs, 1, generator=torch.Generator().manual_seed(3)).squeeze(1)
    fw, fb = closed_form(model, X, drawn)
    torch.testing.assert_close(fisher["weight"], fw / len(X))
    torch.testing.assert_close(fisher["bias"], fb / len(X))

    many = X.repeat(2000, 1)  # the same four inputs, many draws: the Monte Carlo mean -> exact
    sampled = EWC(model, fisher="sampled", chunk_size=4000).fisher_information(
        [(many, Y.repeat(2000))], generator=torch.Generator().manual_seed(0)
    )
    exact = EWC(model, fisher="exact").fisher_information([(X, Y)])
    for name in exact:
        torch.testing.assert_close(sampled[name], exact[name], rtol=0.05, atol=1e-3)


def loop_fisher(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """The slow reference: one backward pass per sample, squared gradients summed."""
    total = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for i in range(len(x)):
        model.zero_grad()
        F.cross_entropy(model(x[i : i + 1]), y[i : i + 1]).backward()
        for n, p in model.named_parameters():
            assert p.grad is not None
            total[n] += p.grad**2
    return {n: v / len(x) for n, v in total.items()}


def test_fisher_equals_a_loop_of_single_sample_backward_passes() -> None:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Flatten(), nn.Linear(8, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 5))
    x, y = torch.randn(53, 8), torch.randint(0, 5, (53,))
    loader = DataLoader(TensorDataset(x, y), batch_size=20)  # 53 = chunks of 7 across batches of 20
    fisher = EWC(model, chunk_size=7).fisher_information(loader)
    assert model.training  # eval mode only while measuring (dropout off), restored afterwards
    model.eval()
    expected = loop_fisher(model, x, y)
    for name, value in expected.items():
        torch.testing.assert_close(fisher[name], value, rtol=1e-5, atol=1e-9)


def test_samples_caps_the_fisher_data_and_trainable_only_skips_frozen_parameters() -> None:
    model = linear_model()
    model.bias.requires_grad_(False)
    fisher = EWC(model, samples=3).fisher_information([(X[:2], Y[:2]), (X[2:], Y[2:])])
    assert set(fisher) == {"weight"}
    torch.testing.assert_close(fisher["weight"], closed_form(model, X[:3], Y[:3])[0] / 3)
    assert set(EWC(model, trainable_only=False).fisher_information([(X, Y)])) == {"weight", "bias"}
    with pytest.raises(LifelongError, match="at least one sample"):
        EWC(model).fisher_information([])
    with pytest.raises(LifelongError, match="needs labels"):
        EWC(model).fisher_information([X])
    assert set(EWC(model, fisher="exact").fisher_information([X])) == {"weight"}  # labels not needed


def test_penalty_value_and_gradient_match_the_formula() -> None:
    model = linear_model()
    ewc = EWC(model, lambda_ewc=37.0)
    assert float(ewc.ewc_loss()) == 0.0  # nothing consolidated yet
    fisher = ewc.compute_fisher([(X, Y)])
    anchor = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    loss = ewc.ewc_loss()
    loss.backward()
    expected = sum(37.0 / 2 * (fisher[n] * (p - anchor[n]) ** 2).sum() for n, p in model.named_parameters())
    torch.testing.assert_close(loss, expected)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, 2 * (37.0 / 2) * fisher[n] * (p.detach() - anchor[n]))


def consolidate_twice(ewc: EWC, model: nn.Linear) -> list[tuple[dict, dict]]:
    """Two 'tasks': consolidate given Fisher values at two different weights; return (F, theta*) pairs."""
    terms = []
    for step in (0.0, 0.2):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(step)
        fisher = {n: torch.rand_like(p) for n, p in model.named_parameters()}
        terms.append(
            (
                {n: f.clone() for n, f in fisher.items()},
                {n: p.detach().clone() for n, p in model.named_parameters()},
            )
        )
        ewc.consolidate(fisher)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return terms


@pytest.mark.parametrize("mode", ["classic", "online"])
def test_classic_keeps_a_penalty_per_task_and_online_decays_one(mode: str) -> None:
    torch.manual_seed(0)
    model, lam, gamma = linear_model(), 10.0, 0.6
    ewc = EWC(model, lambda_ewc=lam, mode=mode, gamma=gamma)  # type: ignore[arg-type]
    (f1, a1), (f2, a2) = consolidate_twice(ewc, model)
    params = dict(model.named_parameters())
    if mode == "classic":
        expected = sum(
            lam / 2 * (f[n] * (params[n] - a[n]) ** 2).sum() for f, a in ((f1, a1), (f2, a2)) for n in f
        )
        assert len(ewc.terms) == 2
    else:
        expected = sum(lam / 2 * ((gamma * f1[n] + f2[n]) * (params[n] - a2[n]) ** 2).sum() for n in f1)
        assert len(ewc.terms) == 1
    manual = torch.autograd.grad(expected, list(params.values()))
    loss = ewc.ewc_loss()
    got = torch.autograd.grad(loss, list(params.values()))
    torch.testing.assert_close(loss, expected)
    for g, m in zip(got, manual, strict=True):
        torch.testing.assert_close(g, m)


def test_seed_api_with_a_dataloader_in_a_users_own_loop() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 3))
    loader = DataLoader(TensorDataset(X.repeat(4, 1), Y.repeat(4)), batch_size=5, shuffle=True)
    ewc = EWC(model, lambda_ewc=1000)
    ewc.compute_fisher(loader)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for x, y in loader:  # a second "task": the penalty holds the weights back
        loss = F.cross_entropy(model(x), (y + 1) % 3) + ewc.ewc_loss()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert float(ewc.ewc_loss().detach()) > 0
    assert all(not torch.equal(p, before[n]) for n, p in model.named_parameters())


@pytest.mark.parametrize("mode", ["classic", "online"])
def test_state_dict_round_trip_gives_the_same_penalty(mode: str) -> None:
    model = linear_model()
    ewc = EWC(model, lambda_ewc=5.0, mode=mode)  # type: ignore[arg-type]
    consolidate_twice(ewc, model)
    state = ewc.state_dict()
    assert all(isinstance(v, torch.Tensor) or json.dumps(v) for v in state.values())
    assert "fisher.0.weight" in state and "anchor.0.bias" in state  # parameter names as keys
    fresh = EWC(model, lambda_ewc=5.0, mode=mode)  # type: ignore[arg-type]
    fresh.load_state_dict(state)
    torch.testing.assert_close(fresh.ewc_loss(), ewc.ewc_loss(), rtol=0, atol=0)
    other = "online" if mode == "classic" else "classic"
    with pytest.raises(LifelongError, match="mode"):
        EWC(model, mode=other).load_state_dict(state)  # type: ignore[arg-type]


def test_options_bind_by_name_and_bad_values_are_one_clear_error() -> None:
    (ewc,) = build_strategies("ewc:lambda=100,fisher=exact,mode=online,gamma=0.9,samples=50")
    assert isinstance(ewc, EWC)
    assert (ewc.lambda_ewc, ewc.fisher, ewc.mode, ewc.gamma, ewc.samples) == (
        100.0,
        "exact",
        "online",
        0.9,
        50,
    )
    for bad in ("ewc:fisher=diagonal", "ewc:lambda=lots", "ewc:gamma=2", "ewc:lambda=-1", "ewc:chunk_size=0"):
        with pytest.raises(LifelongError):
            build_strategies(bad)


def make_stream(scenario: Scenario) -> Stream:
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 15)
    x = rng.normal(size=(len(y), 6)).astype(np.float32) + y[:, None]
    return split_by_classes("toy", x, y, [[0, 1], [2, 3]], scenario=scenario, seed=0)


def test_fisher_through_the_learner_uses_the_task_masked_forward() -> None:
    stream = make_stream("task")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 4))
    ewc = EWC(fisher="exact")
    learner = Learner(model, [ewc], epochs=1, batch_size=8, device="cpu", seed=0)
    learner.fit(stream)
    # The last task's Fisher: its outputs are masked to classes 2, 3, so the rows of the head that
    # belong to classes 0, 1 got no gradient at all.
    fisher = ewc.terms[-1][0]
    assert torch.all(fisher["2.weight"][:2] == 0) and torch.all(fisher["2.weight"][2:].sum(1) > 0)
    assert torch.all(fisher["2.bias"][:2] == 0) and torch.all(fisher["2.bias"][2:] > 0)


def test_a_huge_lambda_under_plain_sgd_is_capped_instead_of_diverging() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 4))
    learner = Learner(model, [EWC(lambda_ewc=1e7)], epochs=3, lr=0.5, optimizer="sgd", device="cpu", seed=0)
    matrix = learner.fit(make_stream("class")).matrix  # would raise on a NaN loss
    assert all(np.isfinite(row).all() for row in matrix)
