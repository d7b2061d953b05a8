"""SI's path integral on a quadratic worked out by hand, MAS importance against its closed form, and
both strategies' state round trips."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from lifelong.core.learner import Learner
from lifelong.core.stream import Stream, split_by_classes
from lifelong.errors import LifelongError
from lifelong.strategies import MAS, SI, build_strategies

A = torch.tensor([1.0, 4.0, 0.25])  # curvatures
TARGET = torch.tensor([1.0, -2.0, 3.0])
START = torch.tensor([0.0, 0.0, 0.0])


class Quadratic(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.theta = nn.Parameter(START.clone())

    def loss(self) -> torch.Tensor:
        return 0.5 * (A * (self.theta - TARGET) ** 2).sum()


def train_si(si: SI, model: Quadratic, lr: float, steps: int) -> Any:
    """What the Learner does around each step, without data: hooks, backward, SGD step."""
    learner = SimpleNamespace(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=lr))
    si.before_task(learner, None)  # type: ignore[arg-type]
    for _ in range(steps):
        loss = model.loss() + si.penalty(learner, None, None)  # type: ignore[arg-type]
        learner.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        si.after_backward(learner)  # type: ignore[arg-type]
        learner.optimizer.step()
    si.after_task(learner, None)  # type: ignore[arg-type]
    return learner


def test_si_importance_is_the_path_integral_over_the_squared_distance_moved() -> None:
    lr, steps, xi = 0.05, 40, 0.1
    model = Quadratic()
    si = SI(c=0.5, xi=xi)
    train_si(si, model, lr, steps)

    theta, omega = START.clone(), torch.zeros(3)
    for _ in range(steps):  # plain SGD by hand: g = A (theta - target), delta = -lr g
        g = A * (theta - TARGET)
        omega += -g * (-lr * g)
        theta = theta - lr * g
    expected = omega / ((theta - START) ** 2 + xi)
    torch.testing.assert_close(si.importance["theta"], expected)
    torch.testing.assert_close(si.anchor["theta"], theta)
    # The path integral is each weight's share of the drop in loss (to first order in lr).
    drop = 0.5 * A * ((START - TARGET) ** 2 - (theta - TARGET) ** 2)
    torch.testing.assert_close(omega, drop, rtol=0.15, atol=0)

    with torch.no_grad():  # a later task moves the weights: SI charges c * sum Omega (theta - theta*)^2
        model.theta.add_(torch.tensor([0.5, -0.5, 1.0]))
    value = si.penalty(SimpleNamespace(optimizer=None), None, None)  # type: ignore[arg-type]
    torch.testing.assert_close(value, 0.5 * (expected * (model.theta.detach() - theta) ** 2).sum())


def test_si_accumulates_importance_over_tasks() -> None:
    model = Quadratic()
    si = SI(c=1.0)
    train_si(si, model, 0.05, 10)
    first = si.importance["theta"].clone()
    train_si(si, model, 0.05, 10)
    assert si.tasks == 2
    assert torch.all(si.importance["theta"] >= first)


def linear() -> nn.Linear:
    model = nn.Linear(2, 3)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.3, -0.2], [-0.5, 0.4], [0.1, 0.6]]))
        model.bias.copy_(torch.tensor([0.1, -0.2, 0.05]))
    return model


X = torch.tensor([[1.0, -2.0], [0.5, 0.3], [-1.5, 0.8], [2.0, 1.0]])


def test_mas_importance_is_the_mean_absolute_per_sample_gradient_of_the_squared_output_norm() -> None:
    model = linear()
    mas = MAS(model, lambda_mas=2.0, chunk_size=3)
    new = mas.compute_importance([(X, torch.zeros(4))])
    with torch.no_grad():  # d ||Wx + b||^2 / dW = 2 f x^T, / db = 2 f; |.| per sample, then the mean
        f = model(X)
        weight = (2 * f[:, :, None] * X[:, None, :]).abs().mean(0)
        bias = (2 * f).abs().mean(0)
    torch.testing.assert_close(new["weight"], weight)
    torch.testing.assert_close(new["bias"], bias)
    assert not torch.allclose(weight, (2 * f[:, :, None] * X[:, None, :]).mean(0).abs())  # per sample

    anchor = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        model.weight.add_(0.2)
    mas.compute_importance([X])  # a second task, inputs alone (MAS needs no labels): importance adds up
    torch.testing.assert_close(mas.importance["bias"], bias + (2 * model(X)).detach().abs().mean(0))
    with torch.no_grad():
        model.bias.sub_(0.3)
    expected = 2.0 * sum(
        (mas.importance[n] * (p - mas.anchor[n]) ** 2).sum() for n, p in model.named_parameters()
    )
    torch.testing.assert_close(mas.mas_loss(), expected)
    assert not torch.equal(mas.anchor["weight"], anchor["weight"])  # re-anchored at the latest weights


def toy_stream() -> Stream:
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 15)
    x = rng.normal(size=(len(y), 6)).astype(np.float32) + y[:, None]
    return split_by_classes("toy", x, y, [[0, 1], [2, 3]], seed=0)


@pytest.mark.parametrize("spec", ["si:c=2", "mas:lambda=3"])
def test_state_dict_round_trip_gives_the_same_penalty(spec: str) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 4))
    (strategy,) = build_strategies(spec)
    learner = Learner(model, [strategy], epochs=2, batch_size=8, device="cpu", seed=0)
    stream = toy_stream()
    learner.fit(stream)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05)
    state = strategy.state_dict()
    assert all(isinstance(v, torch.Tensor) or json.dumps(v) for v in state.values())
    assert "importance.0.weight" in state and "anchor.2.bias" in state
    (fresh,) = build_strategies(spec)
    fresh.load_state_dict(state)
    fresh.before_task(learner, stream[1])
    before = strategy.penalty(learner, None, None)  # type: ignore[arg-type]
    after = fresh.penalty(learner, None, None)  # type: ignore[arg-type]
    assert isinstance(before, torch.Tensor) and float(before.detach()) > 0
    torch.testing.assert_close(after, before, rtol=0, atol=0)


def test_options_bind_and_bad_values_are_refused() -> None:
    si, mas = build_strategies("si:c=0.5,xi=0.01+mas:lambda=4,samples=100")
    assert isinstance(si, SI) and (si.c, si.xi) == (0.5, 0.01)
    assert isinstance(mas, MAS) and (mas.lambda_mas, mas.samples) == (4.0, 100)
    for bad in ("si:xi=0", "si:c=-1", "mas:lambda=-2", "mas:lambda=x"):
        with pytest.raises(LifelongError):
            build_strategies(bad)
