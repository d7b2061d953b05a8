from __future__ import annotations

import pytest
import torch
from torch import nn

from lifelong.core.learner import Learner
from lifelong.core.spec import Spec
from lifelong.core.strategy import Batch
from lifelong.errors import LifelongError
from lifelong.experiment.run import build_stream, run_strategy
from lifelong.experiment.settings import RunConfig
from lifelong.strategies import DERPP, build_strategies
from lifelong.strategies.buffers import ReplayBuffer


def batch(n: int) -> Batch:
    return Batch(torch.randn(n, 3), torch.randint(0, 4, (n,)), torch.zeros(n, dtype=torch.long))


def test_penalty_equals_manual_computation() -> None:
    torch.manual_seed(0)
    model = nn.Linear(3, 4)
    derpp = DERPP(alpha=0.4, beta=0.7, buffer_size=10, minibatch_size=3)
    learner = Learner(model, [derpp], device="cpu", seed=0)

    first_batch = batch(8)
    first_out = learner.forward(first_batch.x, first_batch.task_ids)
    assert derpp.penalty(learner, first_batch, first_out) == 0.0  # nothing stored yet
    assert torch.equal(derpp.buffer.extra("logits"), first_out.detach())

    # Replay the draws the strategy is about to make on a twin buffer with a twin generator.
    stored = derpp.buffer.state_dict()
    twin = ReplayBuffer(10)
    twin.load_state_dict(stored)
    generator = torch.Generator()
    generator.set_state(learner.generator.get_state())
    drawn = twin.sample_indices(6, generator)  # one draw of 2 x minibatch_size, split in halves
    first, second = drawn[:3], drawn[3:]

    second_batch = batch(4)
    second_out = learner.forward(second_batch.x, second_batch.task_ids)
    loss = derpp.penalty(learner, second_batch, second_out)

    x, y, logits = stored["x"], stored["y"], stored["extra.logits"]
    mse = ((model(x[first]) - logits[first]) ** 2).mean()
    log_probs = model(x[second]).log_softmax(dim=1)
    ce = -log_probs[torch.arange(3), y[second]].mean()
    assert isinstance(loss, torch.Tensor)
    torch.testing.assert_close(loss, 0.4 * mse + 0.7 * ce)
    loss.backward()
    assert model.weight.grad is not None and model.weight.grad.abs().sum() > 0


def test_buffer_keeps_each_sample_with_the_logits_it_had_when_added() -> None:
    torch.manual_seed(1)
    derpp = DERPP(buffer_size=8, minibatch_size=4)
    model = nn.Linear(3, 4)
    learner = Learner(model, [derpp], device="cpu", seed=0)
    seen: dict[tuple[float, ...], torch.Tensor] = {}
    for _ in range(6):
        b = batch(5)
        out = learner.forward(b.x, b.task_ids)
        derpp.penalty(learner, b, out)
        seen |= {tuple(row.tolist()): logit for row, logit in zip(b.x, out.detach(), strict=True)}
        with torch.no_grad():  # the model moves on; stored logits must not
            model.weight.add_(0.1)
    assert len(derpp.buffer) == 8 and derpp.buffer.seen == 30
    for row, logit in zip(derpp.buffer.x, derpp.buffer.extra("logits"), strict=True):
        assert torch.equal(seen[tuple(row.tolist())], logit)


def test_state_dict_round_trip() -> None:
    derpp = DERPP(buffer_size=10)
    learner = Learner(nn.Linear(3, 4), [derpp], device="cpu", seed=0)
    for _ in range(3):
        b = batch(6)
        derpp.penalty(learner, b, learner.forward(b.x, b.task_ids))
    restored = DERPP(buffer_size=10)
    restored.load_state_dict(derpp.state_dict())
    assert torch.equal(restored.buffer.x, derpp.buffer.x)
    assert torch.equal(restored.buffer.extra("logits"), derpp.buffer.extra("logits"))
    assert restored.buffer.seen == 18


def test_options_bind_by_name() -> None:
    (derpp,) = build_strategies("derpp:alpha=0.2,beta=0.5,buffer_size=50,minibatch_size=8")
    assert isinstance(derpp, DERPP)
    assert (derpp.alpha, derpp.beta, derpp.minibatch_size, derpp.buffer.max_size) == (0.2, 0.5, 8, 50)
    (named,) = build_strategies([Spec("der++", {"alpha": "1"})])
    assert isinstance(named, DERPP) and named.alpha == 1.0
    with pytest.raises(LifelongError):
        DERPP(alpha=-1)


def test_derpp_beats_naive_on_split_digits() -> None:
    config = RunConfig(epochs=1, device="cpu", seed=0)
    stream = build_stream(config)
    naive = run_strategy(config, stream, "naive")["metrics"]["average_accuracy"]
    derpp = run_strategy(config, stream, "derpp")["metrics"]["average_accuracy"]
    assert derpp > naive + 0.2
