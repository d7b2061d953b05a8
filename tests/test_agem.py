from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from lifelong.core.learner import Learner
from lifelong.core.stream import Scenario, Stream, split_by_classes
from lifelong.errors import LifelongError
from lifelong.strategies import AGEM, REGISTRY, Strategy, build_strategies


def make_stream(scenario: Scenario = "class") -> Stream:
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(6), 20)
    x = rng.normal(size=(len(y), 8)).astype(np.float32) + y[:, None]
    return split_by_classes("toy", x, y, [[0, 1], [2, 3], [4, 5]], scenario=scenario, seed=0)


def fitted(agem: AGEM, scenario: Scenario = "class") -> Learner:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 6))
    learner = Learner(model, [agem], epochs=1, batch_size=16, device="cpu", seed=0)
    learner.fit(make_stream(scenario))
    return learner


def params_of(learner: Learner) -> list[torch.Tensor]:
    return [p for p in learner.model.parameters() if p.requires_grad]


def reference_gradient(learner: Learner, agem: AGEM) -> torch.Tensor:
    """The gradient on the whole memory (sample_size >= memory size, so A-GEM uses all of it)."""
    m = agem.memory
    loss = learner.criterion(learner.forward(m.x, m.task_ids), m.y)
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params_of(learner))])


def set_grad(learner: Learner, flat: torch.Tensor) -> None:
    for p, chunk in zip(params_of(learner), flat.split([p.numel() for p in params_of(learner)]), strict=True):
        p.grad = chunk.view_as(p).clone()


def grad_of(learner: Learner) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1) for p in params_of(learner)])  # type: ignore[union-attr]


def test_projection_never_leaves_a_negative_dot_with_the_reference_gradient() -> None:
    agem = AGEM(memory_size=30, sample_size=1000)
    learner = fitted(agem)
    g_ref = reference_gradient(learner, agem)
    generator = torch.Generator().manual_seed(1)
    projected = 0
    for _ in range(25):
        g = torch.randn(g_ref.shape, generator=generator) - 2 * g_ref * torch.rand((), generator=generator)
        set_grad(learner, g)
        agem.after_backward(learner)
        new = grad_of(learner)
        # -1e-6 relative to the vectors' scale: float32 rounding of the dot products themselves.
        assert float(new @ g_ref) >= -1e-6 * float(g.norm() * g_ref.norm())
        if float(g @ g_ref) < 0:
            projected += 1
            expected = g - (g @ g_ref) / (g_ref @ g_ref) * g_ref
            torch.testing.assert_close(new, expected)
            assert abs(float(new @ g_ref)) < 1e-4 * float(g_ref.norm() * g.norm())
    assert projected > 5  # the loop exercised the projection, not only the pass-through


def test_gradient_is_left_unchanged_when_it_agrees_with_the_reference() -> None:
    agem = AGEM(memory_size=30, sample_size=1000)
    learner = fitted(agem)
    g_ref = reference_gradient(learner, agem)
    g = g_ref + 0.1 * torch.randn(g_ref.shape, generator=torch.Generator().manual_seed(2))
    assert float(g @ g_ref) > 0
    set_grad(learner, g)
    agem.after_backward(learner)
    assert torch.equal(grad_of(learner), g)


def test_first_task_has_no_memory_and_leaves_gradients_alone() -> None:
    learner = fitted(AGEM())
    agem = AGEM()  # nothing stored yet
    g = torch.randn(sum(p.numel() for p in params_of(learner)))
    set_grad(learner, g)
    agem.after_backward(learner)
    assert torch.equal(grad_of(learner), g)


@pytest.mark.parametrize("scenario", ["class", "task"])
def test_memory_holds_real_samples_of_every_task(scenario: Scenario) -> None:
    agem = AGEM(memory_size=30, policy="class-balanced")
    learner = fitted(agem, scenario)
    assert len(agem.memory) == 30
    assert torch.bincount(agem.memory.y, minlength=6).tolist() == [5] * 6  # equal slots per class
    assert learner.stream is not None
    for x, y, t in zip(agem.memory.x, agem.memory.y, agem.memory.task_ids, strict=True):
        data = learner.stream[int(t)].train
        assert isinstance(data, TensorDataset)
        tx, ty = data.tensors
        assert bool(((tx == x).all(dim=1) & (ty == y)).any())


def test_reservoir_memory_fills_to_its_size() -> None:
    agem = AGEM(memory_size=50, policy="reservoir")
    fitted(agem)
    assert len(agem.memory) == 50
    assert set(agem.memory.task_ids.tolist()) == {0, 1, 2}


def test_state_dict_round_trip() -> None:
    agem = AGEM(memory_size=30, sample_size=8)
    learner = fitted(agem)
    state = agem.state_dict()
    json.dumps({k: v for k, v in state.items() if not isinstance(v, torch.Tensor)})
    restored = AGEM(memory_size=30, sample_size=8)
    restored.load_state_dict(state)
    for name in ("x", "y", "task_ids"):
        assert torch.equal(getattr(restored.memory, name), getattr(agem.memory, name))

    g = torch.randn(sum(p.numel() for p in params_of(learner)), generator=torch.Generator().manual_seed(3))
    results = []
    for strategy in (agem, restored):
        learner.generator.manual_seed(7)  # the same memory sample for both
        set_grad(learner, g)
        strategy.after_backward(learner)
        results.append(grad_of(learner))
    torch.testing.assert_close(results[0], results[1])

    empty = AGEM()
    empty.load_state_dict(AGEM().state_dict())
    assert len(empty.memory) == 0


def test_options_bind_and_bad_values_are_refused() -> None:
    (agem,) = build_strategies("agem:memory_size=100,sample_size=32,policy=class-balanced")
    assert isinstance(agem, AGEM)
    assert (agem.memory.max_size, agem.sample_size, agem.memory.policy) == (100, 32, "class-balanced")
    with pytest.raises(LifelongError, match="policy"):
        build_strategies("agem:policy=fifo")
    with pytest.raises(LifelongError, match="size"):
        build_strategies("agem:memory_size=0")
    with pytest.raises(LifelongError, match="sample_size"):
        build_strategies("agem:sample_size=0")


class _Clip(Strategy):
    """A stand-in for another strategy that rewrites gradients."""

    name = "clip"
    exclusive = frozenset({"gradients"})


def test_agem_is_refused_beside_another_gradient_editing_strategy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(REGISTRY, "clip", _Clip)
    with pytest.raises(LifelongError, match="'agem' and 'clip' both change the gradients"):
        build_strategies("agem+clip")
    with pytest.raises(LifelongError, match="gradients"):
        build_strategies("agem+agem")
    assert len(build_strategies("agem+naive")) == 2
