from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from lifelong import LifelongError, build_benchmark, build_model, build_strategies
from lifelong.core.learner import MASKED_LOGIT, Learner
from lifelong.core.strategy import Strategy, overriders
from lifelong.core.stream import Stream, Task, concat_datasets, with_task_ids


class PairsOnly(Dataset):
    """A dataset that is not a TensorDataset, so the Learner must use a DataLoader."""

    def __init__(self, data: TensorDataset) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int):
        return self.data[i]


def tiny_stream(scenario: str = "class", wrap: bool = False) -> Stream:
    source = build_benchmark("split-digits", seed=0, scenario=scenario)
    tasks = [
        Task(
            t.name, PairsOnly(t.train) if wrap else t.train, PairsOnly(t.test) if wrap else t.test, t.classes
        )
        for t in source.tasks[:3]
    ]
    return Stream("tiny", tasks, scenario, 10, source.input_shape)  # type: ignore[arg-type]


def fit(stream: Stream, strategy: str = "naive", **kwargs) -> list[list[float]]:
    torch.manual_seed(0)
    model = build_model("mlp:hidden=32", stream.input_shape, stream.num_classes)
    learner = Learner(model, build_strategies(strategy), epochs=2, lr=0.01, seed=0, device="cpu", **kwargs)
    return learner.fit(stream).matrix


def test_matrix_is_tasks_by_tasks_and_scores_are_accuracies() -> None:
    matrix = fit(tiny_stream())
    assert len(matrix) == 3 and all(len(row) == 3 for row in matrix)
    assert all(0.0 <= v <= 1.0 for row in matrix for v in row)
    assert matrix[0][0] > 0.9  # a 2-class digits task is easy


def test_dataloader_path_trains_as_well_as_the_fast_path() -> None:
    fast = fit(tiny_stream())
    slow = fit(tiny_stream(wrap=True))
    assert len(slow) == 3
    for i in range(3):  # the batches differ (different shuffling code), the learning does not
        assert abs(slow[i][i] - fast[i][i]) < 0.1


def test_task_incremental_masks_logits_to_the_tasks_classes() -> None:
    stream = tiny_stream("task")
    torch.manual_seed(0)
    learner = Learner(nn.Linear(64, 10), epochs=5, device="cpu")
    learner.fit(stream)
    logits = learner.forward(torch.zeros(2, 64), torch.tensor([0, 2]))
    assert torch.all(logits[0, 2:] == MASKED_LOGIT) and torch.all(logits[0, :2] != MASKED_LOGIT)
    assert torch.all(logits[1, 4:6] != MASKED_LOGIT) and logits[1, 0] == MASKED_LOGIT
    # Task-incremental evaluation chooses among the task's two classes only: a trained model beats chance.
    assert all(learner.evaluate(task) >= 0.5 for task in stream)


def test_nan_loss_stops_with_a_clear_message() -> None:
    class Broken(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.ones(1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.w * torch.full((len(x), 10), float("nan"))

    with pytest.raises(
        LifelongError, match=r"loss became nan in task 'task0:0,1', epoch 1; lower the learning rate"
    ):
        Learner(Broken(), epochs=1, device="cpu").fit(tiny_stream())


def test_a_nan_step_early_in_an_epoch_is_caught_at_its_end() -> None:
    """The check reads the epoch's last loss: a NaN step before it leaves NaN weights, so it shows."""

    class OneBadStep(Strategy):
        name = "one-bad-step"
        steps = 0

        def penalty(self, learner, batch, outputs):
            self.steps += 1
            return outputs.sum() * float("nan") if self.steps == 2 else torch.zeros(())

    torch.manual_seed(0)
    model = build_model("mlp:hidden=8", (64,), 10)
    learner = Learner(model, [OneBadStep()], epochs=1, batch_size=16, device="cpu")
    assert learner._num_batches(tiny_stream().tasks[0].train) > 2  # the bad step is not the last
    with pytest.raises(LifelongError, match=r"loss became nan in task 'task0:0,1', epoch 1"):
        learner.fit(tiny_stream())


def test_task_ids_changed_in_place_are_read_again() -> None:
    """Whether a dataset's ids are one task's is remembered per tensor, but not past an in-place change."""
    learner = Learner(build_model("mlp:hidden=8", (64,), 10), device="cpu", batch_size=4)
    rows = torch.arange(8)
    ids = torch.zeros(8, dtype=torch.long)
    data = TensorDataset(rows[:, None].float().expand(8, 64), rows % 10, ids)
    for change in (None, slice(4, None)):
        if change is not None:
            ids[change] = 1
        for batch in learner.batches(data):
            assert torch.equal(batch.task_ids, ids[batch.x[:, 0].long()])


@pytest.mark.parametrize(
    ("kwargs", "phrase"),
    [
        ({"epochs": 0}, "epochs"),
        ({"batch_size": 0}, "batch size"),
        ({"lr": -1.0}, "learning rate"),
        ({"optimizer": "rmsprop"}, "unknown optimizer"),
    ],
)
def test_learner_rejects_bad_settings(kwargs: dict, phrase: str) -> None:
    with pytest.raises(LifelongError, match=phrase):
        Learner(nn.Linear(2, 2), **kwargs)


def test_frozen_model_is_refused() -> None:
    model = nn.Linear(64, 10).requires_grad_(False)
    with pytest.raises(LifelongError, match="no trainable parameters"):
        Learner(model, epochs=1, device="cpu").fit(tiny_stream())


def test_joint_trains_on_every_task_seen_so_far_with_task_ids() -> None:
    stream = tiny_stream()
    seen_sizes = []

    class Spy(build_strategies("naive")[0].__class__):
        def before_task(self, learner, task) -> None:
            _x, y, t = learner.train_data.tensors
            seen_sizes.append((len(y), sorted(set(t.tolist()))))

    joint = build_strategies("joint")[0]
    learner = Learner(nn.Linear(64, 10), [joint, Spy()], epochs=1, device="cpu")
    learner.fit(stream)
    sizes = [len(t.train) for t in stream]
    assert seen_sizes == [(sizes[0], [0]), (sizes[0] + sizes[1], [0, 1]), (sum(sizes), [0, 1, 2])]


def test_composition_of_two_train_data_owners_is_refused() -> None:
    with pytest.raises(LifelongError, match="cannot be combined"):
        build_strategies("joint+joint")


def test_dataset_helpers_keep_the_fast_path() -> None:
    a = TensorDataset(torch.zeros(3, 2), torch.zeros(3, dtype=torch.long))
    b = TensorDataset(torch.ones(2, 2), torch.ones(2, dtype=torch.long))
    merged = concat_datasets([with_task_ids(a, 0), with_task_ids(b, 1)])
    assert isinstance(merged, TensorDataset)
    assert merged.tensors[2].tolist() == [0, 0, 0, 1, 1]


def test_models_fit_their_streams() -> None:
    for spec, shape in (
        ("mlp", (64,)),
        ("mlp:hidden=16,depth=1", (64,)),
        ("cnn1d", (40,)),
        ("cnn1d:channels=8", (40,)),
    ):
        model = build_model(spec, shape, 10)
        assert model(torch.zeros(4, *shape)).shape == (4, 10)
    with pytest.raises(LifelongError, match="has no option 'width'"):
        build_model("mlp:width=3", (64,), 10)


def test_a_model_that_does_not_fit_the_inputs_is_one_clear_line() -> None:
    learner = Learner(nn.Linear(10, 10), epochs=1, device="cpu")  # the stream's samples have 64 features
    with pytest.raises(LifelongError, match=r"does not fit the inputs of .*shape \(64,\).*--model mlp"):
        learner.fit(tiny_stream())


@pytest.mark.parametrize(
    "composition", ["naive", "replay+ewc:fisher=sampled", "lwf", "der++", "agem", "si+mas"]
)
def test_two_fits_with_the_same_seeds_give_identical_matrices(composition: str) -> None:
    stream = build_benchmark("split-digits", seed=0)
    matrices = []
    for _ in range(2):
        torch.randn(7)  # the global generator moves between the fits: the results must not depend on it
        model = build_model("mlp:hidden=32", stream.input_shape, stream.num_classes, seed=3)
        learner = Learner(model, build_strategies(composition), epochs=1, lr=0.05, optimizer="sgd", seed=3)
        matrices.append(learner.fit(stream).matrix)
    assert matrices[0] == matrices[1]


def test_the_readme_python_example_runs_as_printed(capsys: pytest.CaptureFixture[str]) -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    example = readme.split("```python\n", 1)[1].split("```", 1)[0]
    exec(compile(example, "README.md", "exec"), {})
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 6  # the 5x5 matrix, then the three metrics
    assert all(len(line.split()) == 5 for line in lines[:5])
    average_accuracy, forgetting, _ = (float(v) for v in lines[5].split())
    assert 0.0 <= average_accuracy <= 1.0 and forgetting > 0.3  # naive forgets: the example's point


def test_the_loop_calls_only_the_hooks_a_strategy_defines_by_class_or_on_the_object() -> None:
    class Penalised(Strategy):
        def penalty(self, learner, batch, outputs):
            return 0.0

    plain, penalised, patched = Strategy(), Penalised(), Strategy()
    patched.after_backward = lambda learner: None  # type: ignore[method-assign]
    strategies = [plain, penalised, patched]
    assert overriders(strategies, "penalty") == [penalised]
    assert overriders(strategies, "after_backward") == [patched]
    assert overriders(strategies, "train_batch") == []


class PerTaskBias(nn.Module):
    """A multi-head stand-in: adds a learned bias per task id, and keeps the ids each call was given."""

    def __init__(self, stream: Stream) -> None:
        super().__init__()
        self.body = build_model("mlp:hidden=16", stream.input_shape, stream.num_classes)
        self.bias = nn.Parameter(torch.zeros(len(stream), stream.num_classes))
        self.seen: set[int] = set()

    def forward(self, x: torch.Tensor, task_ids: torch.Tensor) -> torch.Tensor:
        self.seen.update(task_ids.tolist())
        return self.body(x) + self.bias[task_ids]


class OnTheClass(PerTaskBias):
    takes_task_ids = True


class Forwarding(nn.Module):
    """A wrapper that forwards attribute reads to the model it wraps, as `torch.compile`'s does."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        return self.inner(*args)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.inner, name)


@pytest.mark.parametrize("where", ["class", "instance", "wrapped"])
def test_a_model_that_takes_task_ids_gets_each_samples_own_in_training_and_evaluation(where: str) -> None:
    stream = tiny_stream()
    model = OnTheClass(stream) if where == "class" else PerTaskBias(stream)
    if where != "class":
        model.takes_task_ids = True
    learner = Learner(
        Forwarding(model) if where == "wrapped" else model, build_strategies("naive"), epochs=1, seed=0
    )
    learner.fit(stream)
    assert model.seen == {0, 1, 2}  # every task's id reached the forward
    model.seen.clear()
    learner.evaluate_all()
    assert model.seen == {0, 1, 2}
