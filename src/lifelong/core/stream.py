"""Tasks and streams: what a continual learner sees, in order.

A `Stream` is an ordered list of `Task`s plus the scenario that says how they are scored:

- ``class``: class-incremental. One head over every class; the task id is unknown at test time.
- ``task``: task-incremental. The task id is known at test time, so logits are masked to the
  task's own classes (in training and evaluation).
- ``domain``: domain-incremental. Every task has the same labels; the inputs shift.

Task data are `torch.utils.data.Dataset`s. A `TensorDataset` of ``(x, y)`` takes the Learner's fast
path (index slicing, no per-sample collation); any other dataset yielding ``(x, y)`` pairs goes
through a `DataLoader`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset, TensorDataset

from lifelong.errors import LifelongError

Scenario = Literal["class", "task", "domain"]
SCENARIOS: tuple[Scenario, ...] = ("class", "task", "domain")


@dataclass
class Task:
    """One step of a stream: a training set, a test set and the classes it contains."""

    name: str
    train: Dataset
    test: Dataset
    classes: list[int]
    index: int = 0

    def __post_init__(self) -> None:
        if len(self.train) == 0:  # type: ignore[arg-type]
            raise LifelongError(f"task '{self.name}' has no training samples; give it data or drop it")
        if len(self.test) == 0:  # type: ignore[arg-type]
            raise LifelongError(f"task '{self.name}' has no test samples; lower --test-size or add data")


@dataclass
class Stream:
    """An ordered sequence of tasks scored under one scenario."""

    name: str
    tasks: list[Task]
    scenario: Scenario
    num_classes: int
    input_shape: tuple[int, ...]
    class_names: list[str] = field(default_factory=list)
    default_model: str = "mlp"
    # Image streams keep uint8 pixels [N, C, H, W]; their models read them through an input layer
    # that normalises with these channel means and deviations (`build_model(..., normalize=)`).
    normalize: tuple[list[float], list[float]] | None = None
    # Whether a crop or a horizontal flip keeps an input's label (`--augment` applies): natural images.
    augmentable: bool = False
    # How the stream was cut (class order, permutation seeds, angles), as plain JSON for run.json.
    details: dict[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.scenario not in SCENARIOS:
            raise LifelongError(f"unknown scenario '{self.scenario}'; use one of: {', '.join(SCENARIOS)}")
        if not self.tasks:
            raise LifelongError(f"stream '{self.name}' has no tasks")
        for i, task in enumerate(self.tasks):
            task.index = i
        if not self.class_names:
            self.class_names = [str(c) for c in range(self.num_classes)]

    def __len__(self) -> int:
        return len(self.tasks)

    def __iter__(self):
        return iter(self.tasks)

    def __getitem__(self, i: int) -> Task:
        return self.tasks[i]

    def class_mask(self) -> torch.Tensor:
        """Boolean ``[num_tasks, num_classes]``: which logits each task may use (task-incremental)."""
        mask = torch.zeros(len(self.tasks), self.num_classes, dtype=torch.bool)
        for i, task in enumerate(self.tasks):
            mask[i, task.classes] = True
        return mask


def check_split_options(
    scenario: str | None,
    classes_per_task: int | None,
    task_column: str | None = None,
    label_column: str | None = None,
) -> None:
    """The options every loader of the user's data takes for cutting it into tasks, checked alike."""
    if scenario is not None and scenario not in SCENARIOS:
        raise LifelongError(f"unknown scenario '{scenario}'; use one of: {', '.join(SCENARIOS)}")
    if classes_per_task is not None and classes_per_task < 1:
        raise LifelongError(f"classes_per_task must be at least 1, got {classes_per_task}")
    if task_column is not None and task_column == label_column:
        raise LifelongError(
            f"the task column and the label column are both '{label_column}'; give two columns"
        )


def infer_scenario(tasks: Sequence[Task], scenario: Scenario | None, where: object) -> Scenario:
    """The scenario a user's stream asked for, or the one its labels imply: domain-incremental when
    every task has the same classes, class-incremental otherwise."""
    same_labels = len({frozenset(task.classes) for task in tasks}) == 1
    if scenario is None:
        return "domain" if same_labels else "class"
    if scenario == "domain" and not same_labels:
        raise LifelongError(
            f"'{where}': a domain-incremental stream needs the same labels in every task, but its tasks "
            "differ; use scenario 'class' or 'task'"
        )
    return scenario


def tensor_dataset(x: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor) -> TensorDataset:
    """Float32 features (uint8 pixels stay uint8) and int64 labels, the layout the fast path expects."""
    # Contiguous: a channels-last layout left by numpy's indexing trips torch's CPU convolutions.
    x = torch.as_tensor(x).contiguous()
    return TensorDataset(x if x.dtype == torch.uint8 else x.float(), torch.as_tensor(y, dtype=torch.long))


def split_train_test(
    x: np.ndarray, y: np.ndarray, test_size: float, seed: int, task_name: str
) -> tuple[TensorDataset, TensorDataset]:
    """Stratified split, so every class of the task appears in both halves."""
    from sklearn.model_selection import train_test_split

    if not 0.0 < test_size < 1.0:
        raise LifelongError(f"test size must be in (0, 1), got {test_size}; try --test-size 0.3")
    labels, counts = np.unique(y, return_counts=True)
    n_test = int(np.ceil(test_size * len(y)))
    if counts.min() < 2 or n_test < len(labels) or len(y) - n_test < len(labels):
        rare = labels[counts.argmin()]
        raise LifelongError(
            f"task '{task_name}': class {rare} has {counts.min()} sample(s), too few for a stratified "
            f"train/test split of {len(y)} samples at test size {test_size}; "
            "add samples or change --test-size"
        )
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=test_size, random_state=seed, stratify=y)
    return tensor_dataset(x_tr, y_tr), tensor_dataset(x_te, y_te)


def split_by_classes(
    name: str,
    x: np.ndarray,
    y: np.ndarray,
    class_groups: Sequence[Sequence[int]],
    *,
    scenario: Scenario = "class",
    test_size: float = 0.3,
    seed: int = 0,
    num_classes: int | None = None,
    class_names: list[str] | None = None,
    default_model: str = "mlp",
) -> Stream:
    """Split a labelled dataset into tasks of disjoint class groups (split-MNIST style)."""
    tasks = []
    for i, group in enumerate(class_groups):
        keep = np.isin(y, list(group))
        task_name = f"task{i}:" + ",".join(str(c) for c in group)
        train, test = split_train_test(x[keep], y[keep], test_size, seed, task_name)
        tasks.append(Task(task_name, train, test, sorted(int(c) for c in group)))
    n = int(num_classes if num_classes is not None else y.max() + 1)
    return Stream(name, tasks, scenario, n, tuple(x.shape[1:]), class_names or [], default_model)


# Each task holds its own permuted copy of the data: a thousand copies is far past any experiment.
PERMUTED_TASKS_MAX = 1000


def permuted(
    name: str,
    x: np.ndarray,
    y: np.ndarray,
    num_tasks: int,
    *,
    test_size: float = 0.3,
    seed: int = 0,
    class_names: list[str] | None = None,
    default_model: str = "mlp",
) -> Stream:
    """Domain-incremental stream: the same data under a fixed feature permutation per task.

    The first task is left unpermuted so that task 0 is the original problem.
    """
    if not 1 <= num_tasks <= PERMUTED_TASKS_MAX:
        raise LifelongError(
            f"a permuted stream has 1 to {PERMUTED_TASKS_MAX} tasks, got {num_tasks}; try tasks=10"
        )
    rng = np.random.default_rng(seed)
    flat = x.reshape(len(x), -1)
    classes = sorted(int(c) for c in np.unique(y))
    tasks = []
    for i in range(num_tasks):
        order = np.arange(flat.shape[1]) if i == 0 else rng.permutation(flat.shape[1])
        xi = flat[:, order].reshape(x.shape)
        train, test = split_train_test(xi, y, test_size, seed, f"perm{i}")
        tasks.append(Task(f"perm{i}", train, test, classes))
    return Stream(
        name, tasks, "domain", int(y.max() + 1), tuple(x.shape[1:]), class_names or [], default_model
    )


def with_task_ids(data: Dataset, task_index: int) -> Dataset:
    """Attach the task index to every sample of an in-memory task, so mixed batches can be masked."""
    if isinstance(data, TensorDataset) and len(data.tensors) == 2:
        x, y = data.tensors
        return TensorDataset(x, y, torch.full_like(y, task_index))
    return data


def versions_of(data: TensorDataset) -> list[int]:
    """How many times each of the dataset's tensors was changed in place (an inference tensor keeps
    no count: -1)."""
    return [-1 if t.is_inference() else t._version for t in data.tensors]


@dataclass
class DeviceCopy:
    """A dataset's tensors on a training device, as they were at ``versions`` (`versions_of`): the
    `Learner` moves a task once per dataset and change, not every epoch."""

    data: Dataset
    versions: list[int]
    tensors: list[torch.Tensor]

    @functools.cached_property
    def one_task(self) -> bool:
        """Whether its task ids are one id throughout (a task's own data: a view of them then saves a
        gather per batch). Asked once, not every epoch: it reads every id and waits for the device."""
        ids = self.tensors[2] if len(self.tensors) > 2 else None
        return ids is None or (len(ids) > 0 and bool((ids == ids[0]).all()))


def concat_datasets(datasets: Sequence[Dataset]) -> Dataset:
    """One dataset of all; stays a `TensorDataset` (fast path) when every part is one."""
    if all(isinstance(d, TensorDataset) for d in datasets):
        parts = [d.tensors for d in datasets]  # type: ignore[attr-defined]
        if len({len(p) for p in parts}) == 1:
            return TensorDataset(*(torch.cat(column) for column in zip(*parts, strict=True)))
    return ConcatDataset(datasets)
