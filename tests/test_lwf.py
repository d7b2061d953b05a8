from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from lifelong.core.learner import Learner
from lifelong.core.strategy import Batch
from lifelong.core.stream import Scenario, Stream, split_by_classes
from lifelong.errors import LifelongError
from lifelong.strategies import LwF, build_strategies


def make_stream(scenario: Scenario) -> Stream:
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(6), 20)
    x = rng.normal(size=(len(y), 8)).astype(np.float32) + y[:, None]
    return split_by_classes("toy", x, y, [[0, 1], [2, 3], [4, 5]], scenario=scenario, seed=0)


def make_learner(scenario: Scenario, lwf: LwF) -> Learner:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 6))
    learner = Learner(model, [lwf], epochs=1, batch_size=16, device="cpu", seed=0)
    learner.fit(make_stream(scenario))  # sets the stream and trains every task once
    return learner


def batch_of(learner: Learner, task: int) -> Batch:
    assert learner.stream is not None
    data = learner.stream[task].train
    assert isinstance(data, TensorDataset)
    x, y = data.tensors
    return Batch(x[:16], y[:16], torch.full((16,), task))


def perturb(model: nn.Module) -> None:
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))


def loop_forward(learner: Learner, batch: Batch) -> torch.Tensor:
    """The training loop's forward: unmasked logits kept on the learner, masked ones returned."""
    learner.logits = learner.model_logits(batch.x, batch.task_ids)
    return learner.mask(learner.logits, batch.task_ids)


def test_total_loss_is_the_seed_formula_and_distills_only_old_classes() -> None:
    lwf = LwF(alpha=0.7, temperature=3.0)
    learner = make_learner("class", lwf)
    assert learner.stream is not None
    lwf.before_task(learner, learner.stream[2])
    assert lwf.teacher is not None
    perturb(learner.model)
    batch = batch_of(learner, 2)
    outputs = loop_forward(learner, batch)
    total = learner.criterion(outputs, batch.y) + lwf.penalty(learner, batch, outputs)

    old = [0, 1, 2, 3]  # the classes of the two earlier tasks
    with torch.no_grad():
        p = F.softmax(lwf.teacher(batch.x)[:, old] / 3.0, dim=1)
    log_q = F.log_softmax(learner.model(batch.x)[:, old] / 3.0, dim=1)
    kl = (p * (p.log() - log_q)).sum() / len(batch)
    seed = 0.7 * 9.0 * kl + 0.3 * F.cross_entropy(outputs, batch.y)
    torch.testing.assert_close(total, seed)
    assert float(kl.detach()) > 1e-4  # the perturbation makes the check meaningful


def test_changing_a_new_class_logit_leaves_the_distillation_unchanged() -> None:
    lwf = LwF()
    learner = make_learner("class", lwf)
    assert learner.stream is not None
    lwf.before_task(learner, learner.stream[1])
    assert lwf.heads is not None and lwf.heads.tolist() == [[True, True, False, False, False, False]]
    new, old = torch.randn(4, 6), torch.randn(4, 6)
    base = LwF.distillation_loss(new, old, lwf.heads)
    changed = new.clone()
    changed[:, 2:] += torch.randn(4, 4) * 10
    torch.testing.assert_close(LwF.distillation_loss(changed, old, lwf.heads), base)
    changed[:, 0] += 1.0
    assert not torch.allclose(LwF.distillation_loss(changed, old, lwf.heads), base)


def test_first_task_gives_no_penalty() -> None:
    lwf = LwF(alpha=1.0)
    learner = make_learner("class", lwf)
    assert learner.stream is not None
    lwf.before_task(learner, learner.stream[0])
    batch = batch_of(learner, 0)
    assert lwf.penalty(learner, batch, loop_forward(learner, batch)) == 0.0


def test_task_incremental_distills_each_old_head_finitely_without_a_second_forward() -> None:
    lwf = LwF(alpha=0.5, temperature=2.0)
    learner = make_learner("task", lwf)
    assert learner.stream is not None
    lwf.before_task(learner, learner.stream[2])
    perturb(learner.model)
    calls = []
    counter = learner.model.register_forward_hook(lambda *_: calls.append(1))
    batch = batch_of(learner, 2)
    outputs = loop_forward(learner, batch)  # old heads masked to a large negative value
    penalty = lwf.penalty(learner, batch, outputs)
    counter.remove()
    assert len(calls) == 1  # only the Learner's own forward ran on the current model
    assert isinstance(penalty, torch.Tensor) and torch.isfinite(penalty)
    penalty.backward()
    assert all(torch.isfinite(p.grad).all() for p in learner.model.parameters() if p.grad is not None)

    assert lwf.teacher is not None
    with torch.no_grad():
        raw_old, raw_new = lwf.teacher(batch.x), learner.model(batch.x)
    kl = sum(
        F.kl_div(
            F.log_softmax(raw_new[:, h] / 2.0, dim=1),
            F.softmax(raw_old[:, h] / 2.0, dim=1),
            reduction="batchmean",
        )
        for h in ([0, 1], [2, 3])  # one softmax per earlier task
    )
    expected = 0.5 * (4.0 * kl - F.cross_entropy(outputs, batch.y))
    torch.testing.assert_close(penalty.detach(), expected)
    lwf.after_task(learner, learner.stream[2])


def test_masked_logits_keep_the_kl_finite() -> None:
    new = torch.randn(3, 6).masked_fill(torch.tensor([False, False, True, True, True, True]), -1e4)
    old = torch.randn(3, 6).masked_fill(torch.tensor([True, True, False, False, True, True]), -1e4)
    loss = LwF.distillation_loss(new, old, torch.ones(6, dtype=torch.bool), temperature=2.0)
    assert torch.isfinite(loss)


def test_snapshot_is_frozen_and_unaffected_by_training() -> None:
    lwf = LwF()
    learner = make_learner("class", lwf)
    assert learner.stream is not None
    lwf.before_task(learner, learner.stream[1])
    teacher = lwf.teacher
    assert teacher is not None and not teacher.training
    assert all(not p.requires_grad for p in teacher.parameters())
    frozen = {k: v.clone() for k, v in teacher.state_dict().items()}
    optimizer = torch.optim.SGD(learner.model.parameters(), lr=0.5)
    batch = batch_of(learner, 1)
    for _ in range(3):
        outputs = loop_forward(learner, batch)
        loss = learner.criterion(outputs, batch.y) + lwf.penalty(learner, batch, outputs)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    for key, value in teacher.state_dict().items():
        assert torch.equal(value, frozen[key])
    assert not torch.equal(learner.model.state_dict()["2.weight"], frozen["2.weight"])


@pytest.mark.parametrize("scenario", ["class", "task", "domain"])
def test_state_dict_round_trip(scenario: Scenario) -> None:
    lwf = LwF(alpha=0.6)
    learner = make_learner(scenario, lwf)
    assert learner.stream is not None
    lwf.before_task(learner, learner.stream[2])
    state = lwf.state_dict()
    assert state["has_teacher"] is True
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    assert any(k.startswith("teacher.") for k in tensors)
    json.dumps({k: v for k, v in state.items() if k not in tensors})
    batch = batch_of(learner, 2)
    perturb(learner.model)
    outputs = loop_forward(learner, batch)
    expected = lwf.penalty(learner, batch, outputs)

    restored = LwF(alpha=0.6)
    restored.load_state_dict(state)
    assert isinstance(expected, torch.Tensor) and float(expected.detach()) != 0.0
    torch.testing.assert_close(restored.penalty(learner, batch, outputs), expected)
    assert restored.teacher is not None
    restored_state = restored.state_dict()
    assert set(restored_state) == set(state)
    assert all(torch.equal(restored_state[k], v) for k, v in tensors.items())

    empty = LwF()
    empty.load_state_dict(LwF().state_dict())
    assert empty.penalty(learner, batch, outputs) == 0.0


def test_options_bind_by_name_and_alias() -> None:
    (lwf,) = build_strategies("lwf:alpha=0.7,temperature=3")
    assert isinstance(lwf, LwF) and lwf.alpha == 0.7 and lwf.temperature == 3.0
    (alias,) = build_strategies("distill:alpha=1")
    assert isinstance(alias, LwF) and alias.alpha == 1.0
    with pytest.raises(LifelongError, match="alpha"):
        build_strategies("lwf:alpha=2")
    with pytest.raises(LifelongError, match="no option 'beta'"):
        build_strategies("lwf:beta=1")


def test_seed_style_loss_from_a_users_own_loop() -> None:
    lwf = LwF(alpha=0.25, temperature=2.0)
    new, old, y = torch.randn(5, 4), torch.randn(5, 4), torch.randint(0, 4, (5,))
    kd = F.kl_div(F.log_softmax(new / 2, dim=1), F.softmax(old / 2, dim=1), reduction="batchmean")
    expected = 0.25 * 4 * kd + 0.75 * F.cross_entropy(new, y)
    torch.testing.assert_close(lwf.loss(new, old, y), expected)
