from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import TensorDataset

from lifelong.core.learner import Learner
from lifelong.core.strategy import Batch
from lifelong.core.stream import Stream, Task
from lifelong.errors import LifelongError
from lifelong.experiment.run import build_stream, run_strategy
from lifelong.experiment.settings import RunConfig
from lifelong.strategies import Replay, build_strategies
from lifelong.strategies.buffers import Policy, ReplayBuffer


def stream_of_ids(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.arange(n)
    return ids.float().unsqueeze(1), ids


@pytest.mark.parametrize("chunk", [32, 1000])
def test_reservoir_keeps_every_sample_with_equal_probability(chunk: int) -> None:
    # 1000 ids into 100 slots: each id should survive with probability 0.1, whatever its position
    # (chunk=1000 exercises many samples of one add competing for the same row).
    n, size, trials = 1000, 100, 200
    generator = torch.Generator().manual_seed(0)
    x, y = stream_of_ids(n)
    counts = torch.zeros(n)
    for _ in range(trials):
        buffer = ReplayBuffer(size)
        for start in range(0, n, chunk):
            buffer.add(x[start : start + chunk], y[start : start + chunk], generator=generator)
        assert len(buffer) == size and buffer.seen == n
        assert torch.equal(buffer.x.squeeze(1).long(), buffer.y)  # rows stay whole
        assert len(buffer.y.unique()) == size
        counts[buffer.y] += 1
    p = size / n
    expected, variance = trials * p, trials * p * (1 - p)
    statistic = float(((counts - expected) ** 2 / variance).sum())
    assert abs(statistic - n) < 5 * (2 * n) ** 0.5  # chi-square with ~n degrees of freedom
    # A FIFO (the seed's deque) or a biased reservoir would separate the first and the last ids.
    sd_of_mean = (variance / 200) ** 0.5
    assert abs(float(counts[:200].mean()) - expected) < 4 * sd_of_mean
    assert abs(float(counts[-200:].mean()) - expected) < 4 * sd_of_mean


def test_reservoir_fills_in_order_before_it_is_full() -> None:
    buffer = ReplayBuffer(10)
    x, y = stream_of_ids(6)
    buffer.add(x, y)
    assert len(buffer) == 6 and torch.equal(buffer.y, y)


def test_class_balanced_gives_every_class_an_equal_share() -> None:
    generator = torch.Generator().manual_seed(1)
    buffer = ReplayBuffer(64, policy="class-balanced")
    seen = torch.zeros(5, dtype=torch.long)
    for label in range(5):  # classes arrive one after another, like tasks
        y = torch.full((100,), label)
        x = (label * 1000 + torch.arange(100)).float().unsqueeze(1)
        for start in range(0, 100, 16):
            buffer.add(x[start : start + 16], y[start : start + 16], generator=generator)
            seen[label] += len(y[start : start + 16])
            counts = torch.bincount(buffer.y, minlength=5)
            assert len(buffer) == min(64, buffer.seen)
            capped = counts < seen  # classes that lost samples hold equal shares, the others all
            if capped.any():
                assert int(counts[capped].max() - counts[capped].min()) <= 1
                assert bool((counts[~capped] <= counts[capped].max()).all())
    assert torch.equal(buffer.x.squeeze(1).long() // 1000, buffer.y)
    assert sorted(torch.bincount(buffer.y).tolist()) == [12, 13, 13, 13, 13]


def test_class_balanced_lets_small_classes_keep_everything() -> None:
    generator = torch.Generator().manual_seed(2)
    buffer = ReplayBuffer(100, policy="class-balanced")
    for label, count in enumerate([300, 50, 200, 10]):
        y = torch.full((count,), label)
        for start in range(0, count, 32):
            chunk = y[start : start + 32]
            buffer.add(chunk.float().unsqueeze(1), chunk, generator=generator)
    # Water-filling: the level is 30, class 3 keeps its 10 samples.
    assert torch.bincount(buffer.y).tolist() == [30, 30, 30, 10]


def test_class_balanced_is_a_reservoir_within_a_class() -> None:
    generator = torch.Generator().manual_seed(3)
    x, _ = stream_of_ids(200)
    counts = torch.zeros(200)
    for _ in range(200):
        buffer = ReplayBuffer(20, policy="class-balanced")
        for start in range(0, 200, 25):
            buffer.add(x[start : start + 25], torch.zeros(25, dtype=torch.long), generator=generator)
        counts[buffer.x.squeeze(1).long()] += 1
    # Each of the 200 samples of the one class survives with probability 0.1 (20 of 200 trials).
    assert abs(float(counts[:100].mean()) - 20) < 2 and abs(float(counts[100:].mean()) - 20) < 2


def test_sample_returns_distinct_stored_rows() -> None:
    generator = torch.Generator().manual_seed(0)
    buffer = ReplayBuffer(50)
    x, y = stream_of_ids(500)
    buffer.add(x, y, generator=generator)
    stored = set(buffer.y.tolist())
    for n in (1, 10, 49):
        drawn = buffer.sample(n, generator)
        assert len(drawn) == n and len(set(drawn.y.tolist())) == n
        assert set(drawn.y.tolist()) <= stored
        assert torch.equal(drawn.x.squeeze(1).long(), drawn.y)
    assert len(buffer.sample(80, generator)) == 50  # never more than it holds


def test_seed_api_add_pairs_and_sample() -> None:
    buffer = ReplayBuffer(max_size=8)
    x, y = torch.randn(5, 3), torch.arange(5)
    buffer.add((x, y))
    buffer.add(Batch(torch.randn(5, 3), torch.arange(5, 10), torch.ones(5, dtype=torch.long)))
    assert len(buffer) == 8
    drawn = buffer.sample(4)
    assert drawn.x.shape == (4, 3) and drawn.y.shape == (4,)
    assert set(buffer.task_ids.tolist()) <= {0, 1}
    with pytest.raises(LifelongError):
        ReplayBuffer(4).sample(2)
    with pytest.raises(LifelongError):
        ReplayBuffer(0)


def test_extras_must_match_every_add() -> None:
    buffer = ReplayBuffer(4)
    buffer.add(torch.randn(2, 3), torch.arange(2), logits=torch.randn(2, 5))
    with pytest.raises(LifelongError):
        buffer.add(torch.randn(2, 3), torch.arange(2))


@pytest.mark.parametrize("policy", ["reservoir", "class-balanced"])
def test_state_dict_round_trip_reproduces_buffer_and_sampling(policy: Policy, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    generator = torch.Generator().manual_seed(0)
    buffer = ReplayBuffer(30, policy=policy)
    x, y = torch.randn(100, 4), torch.randint(0, 5, (100,))
    buffer.add(x, y, y // 2, generator=generator, logits=torch.randn(100, 5))
    buffer.sample(7, generator)  # mid-way through a permutation: the cursor must survive too
    state = buffer.state_dict()
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    plain = {k: v for k, v in state.items() if not isinstance(v, torch.Tensor)}
    save_file(tensors, str(tmp_path / "buffer.safetensors"))
    restored_state = load_file(str(tmp_path / "buffer.safetensors")) | json.loads(json.dumps(plain))

    restored = ReplayBuffer(30, policy=policy)
    restored.load_state_dict(restored_state)
    assert len(restored) == len(buffer) and restored.seen == buffer.seen
    for name in ("x", "y", "task_ids"):
        assert torch.equal(getattr(restored, name), getattr(buffer, name))
    assert torch.equal(restored.extra("logits"), buffer.extra("logits"))
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    for _ in range(3):
        a, b = buffer.sample(9, g1), restored.sample(9, g2)
        assert torch.equal(a.x, b.x) and torch.equal(a.extras["logits"], b.extras["logits"])
    more = torch.randn(20, 4), torch.randint(0, 5, (20,))
    buffer.add(*more, generator=g1, logits=torch.zeros(20, 5))
    restored.add(*more, generator=g2, logits=torch.zeros(20, 5))
    assert torch.equal(buffer.x, restored.x) and torch.equal(buffer.y, restored.y)
    with pytest.raises(LifelongError):
        ReplayBuffer(31, policy=policy).load_state_dict(state)


def test_empty_buffer_state_round_trips() -> None:
    restored = ReplayBuffer(5)
    restored.load_state_dict(ReplayBuffer(5).state_dict())
    assert len(restored) == 0


def two_task_stream() -> tuple[Stream, list[torch.Tensor]]:
    torch.manual_seed(0)
    tasks, inputs = [], []
    for i in range(2):
        y = torch.tensor([2 * i, 2 * i + 1]).repeat(20)
        x = torch.randn(40, 3) + y.float().unsqueeze(1)
        data = TensorDataset(x, y)
        tasks.append(Task(f"t{i}", data, data, [2 * i, 2 * i + 1]))
        inputs.append(x)
    return Stream("toy", tasks, "task", 4, (3,)), inputs


class RecordingReplay(Replay):
    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.seen: list[tuple[Batch, Batch]] = []

    def train_batch(self, learner: Learner, batch: Batch) -> Batch:
        mixed = super().train_batch(learner, batch)
        self.seen.append((batch, mixed))
        return mixed


@pytest.mark.parametrize("options", [{}, {"replay_ratio": 0.3}, {"replay_batch_size": 5}])
def test_replay_mixes_old_samples_with_their_task_ids(options: dict[str, float]) -> None:
    stream, inputs = two_task_stream()
    replay = RecordingReplay(buffer_size=16, **options)
    learner = Learner(torch.nn.Linear(3, 4), [replay], epochs=1, batch_size=32, device="cpu")
    learner.fit(stream)
    first_task, second_task = replay.seen[:2], replay.seen[2:]
    assert all(mixed is batch for batch, mixed in first_task)  # nothing old to replay yet
    assert len(replay.buffer) == 16 and set(replay.buffer.task_ids.tolist()) == {0, 1}

    batch, mixed = second_task[0]
    expected = min(16, int(options.get("replay_batch_size", round(replay.replay_ratio * 32))))
    assert len(batch) == 32 and len(mixed) == 32 + expected
    assert torch.equal(mixed.x[:32], batch.x) and set(mixed.task_ids[:32].tolist()) == {1}
    assert mixed.task_ids[32:].tolist() == [0] * expected and set(mixed.y[32:].tolist()) <= {0, 1}
    task0_rows = {tuple(row) for row in inputs[0].tolist()}
    assert all(tuple(row) in task0_rows for row in mixed.x[32:].tolist())
    # The stored ids keep task masking right: old samples are scored among task 0's classes only.
    logits = learner.forward(mixed.x, mixed.task_ids)
    assert bool((logits[32:, 2:] < -1e3).all()) and bool((logits[:32, :2] < -1e3).all())


def test_replay_replays_nothing_during_the_first_task() -> None:
    replay = Replay()
    learner = Learner(torch.nn.Linear(3, 4), [replay], device="cpu")
    batch = Batch(torch.randn(8, 3), torch.arange(8) % 4, torch.zeros(8, dtype=torch.long))
    assert replay.train_batch(learner, batch) is batch


def test_build_strategies_binds_replay_options() -> None:
    (replay,) = build_strategies("replay:buffer_size=50,policy=class-balanced,replay_ratio=0.5")
    assert isinstance(replay, Replay)
    assert replay.buffer.max_size == 50 and replay.buffer.policy == "class-balanced"
    assert replay.replay_ratio == 0.5
    with pytest.raises(LifelongError, match="policy"):
        build_strategies("replay:policy=fifo")
    with pytest.raises(LifelongError):
        build_strategies("replay:buffer_size=0")


def test_replay_beats_naive_on_split_digits() -> None:
    config = RunConfig(epochs=2, device="cpu", seed=0)
    stream = build_stream(config)
    naive = run_strategy(config, stream, "naive")["metrics"]["average_accuracy"]
    replay = run_strategy(config, stream, "replay")["metrics"]["average_accuracy"]
    assert replay > naive + 0.2
