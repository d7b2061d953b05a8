"""The image streams of the continual-learning literature, from files the user has (or downloads).

Split streams cut the classes into tasks; the class order is shuffled by the seed (``order=natural``
keeps 0, 1, 2, ...). Permuted and rotated MNIST keep every class and change the inputs per task
(permuted: task 0 is the original; rotated: angles rise from task to task, as in GEM). Each dataset's own train/test split is kept. Pixels stay uint8 and the model
normalises them (`Stream.normalize`); how the stream was cut goes into ``Stream.details``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lifelong.core.memory import check_fits
from lifelong.core.stream import PERMUTED_TASKS_MAX, Scenario, Stream, Task, tensor_dataset
from lifelong.data.image_files import read_dataset
from lifelong.errors import LifelongError

DEFAULT_ROOT = "data"
# Channel means and deviations of each training set (the constants the literature's code uses).
STATS = {
    "mnist": ([0.1307], [0.3081]),
    "fashion-mnist": ([0.2860], [0.3530]),
    "cifar10": ([0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2615]),
    "cifar100": ([0.5071, 0.4867, 0.4408], [0.2675, 0.2565, 0.2761]),
}
CLASS_NAMES = {
    "fashion-mnist": [
        "t-shirt",
        "trouser",
        "pullover",
        "dress",
        "coat",
        "sandal",
        "shirt",
        "sneaker",
        "bag",
        "ankle-boot",
    ],
    "cifar10": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"],
}
NUM_CLASSES = {"mnist": 10, "fashion-mnist": 10, "cifar10": 10, "cifar100": 100}


def load_images(
    kind: str, data_root: str | None, download: bool, train_samples: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The dataset's arrays as tensors, the training set cut to ``train_samples`` (0: all) at random."""
    if train_samples < 0:
        raise LifelongError(f"train_samples must be 0 (all) or more, got {train_samples}")
    x_train, y_train, x_test, y_test = read_dataset(kind, Path(data_root or DEFAULT_ROOT), download)
    if 0 < train_samples < len(y_train):
        keep = np.sort(np.random.default_rng(seed).permutation(len(y_train))[:train_samples])
        x_train, y_train = x_train[keep], y_train[keep]
    bad = [int(v) for v in np.unique(np.concatenate([y_train, y_test])) if not 0 <= v < NUM_CLASSES[kind]]
    if bad:
        raise LifelongError(f"{kind} labels must be 0..{NUM_CLASSES[kind] - 1}, but the files hold {bad[:5]}")
    x_train, y_train, x_test, y_test = (np.ascontiguousarray(a) for a in (x_train, y_train, x_test, y_test))
    return (
        torch.from_numpy(x_train),
        torch.from_numpy(y_train),
        torch.from_numpy(x_test),
        torch.from_numpy(y_test),
    )


def _split(
    name: str,
    kind: str,
    *,
    seed: int,
    scenario: Scenario,
    tasks: int,
    order: str,
    data_root: str | None,
    download: bool,
    train_samples: int,
    default_model: str,
) -> Stream:
    classes = NUM_CLASSES[kind]
    if not 1 <= tasks <= classes:
        raise LifelongError(
            f"{name} has {classes} classes, so tasks must be between 1 and {classes}, got {tasks}"
        )
    if order not in ("seeded", "natural"):
        raise LifelongError(f"unknown class order '{order}'; use seeded or natural")
    x_train, y_train, x_test, y_test = load_images(kind, data_root, download, train_samples, seed)
    ranked = np.arange(classes) if order == "natural" else np.random.default_rng(seed).permutation(classes)
    groups = [sorted(int(c) for c in g) for g in np.array_split(ranked, tasks)]
    stream_tasks = []
    for i, group in enumerate(groups):
        picked = torch.tensor(group)
        train, test = torch.isin(y_train, picked), torch.isin(y_test, picked)
        task_name = f"task{i}:" + ",".join(str(c) for c in group)
        stream_tasks.append(
            Task(
                task_name,
                tensor_dataset(x_train[train], y_train[train]),
                tensor_dataset(x_test[test], y_test[test]),
                group,
            )
        )
    return Stream(
        name,
        stream_tasks,
        scenario,
        classes,
        tuple(x_train.shape[1:]),
        CLASS_NAMES.get(kind, []),
        default_model,
        normalize=STATS[kind],
        augmentable=kind != "mnist",  # a mirrored digit is no digit; garments and photos stay what they are
        details={"class_order": [int(c) for c in ranked], "tasks": groups},
    )


def _split_stream(
    name: str, kind: str, default_tasks: int, default_model: str, doc: str
) -> Callable[..., Stream]:
    """The builder of one split stream: its options are its signature (``'split-cifar100:tasks=20'``)."""

    def build(
        seed: int = 0,
        scenario: Scenario = "class",
        tasks: int = default_tasks,
        order: str = "seeded",
        train_samples: int = 0,
        data_root: str | None = None,
        download: bool = False,
    ) -> Stream:
        return _split(
            name,
            kind,
            seed=seed,
            scenario=scenario,
            tasks=tasks,
            order=order,
            data_root=data_root,
            download=download,
            train_samples=train_samples,
            default_model=default_model,
        )

    build.__doc__ = doc
    build.__name__ = build.__qualname__ = name.replace("-", "_")
    return build


split_mnist = _split_stream(
    "split-mnist", "mnist", 5, "mlp", "MNIST (your files), 10 digits split into tasks of class groups."
)
split_fashion_mnist = _split_stream(
    "split-fashion-mnist",
    "fashion-mnist",
    5,
    "cnn",
    "Fashion-MNIST (your files), 10 garments split into tasks.",
)
split_cifar10 = _split_stream(
    "split-cifar10", "cifar10", 5, "reduced-resnet18", "CIFAR-10 (your files), 10 classes split into tasks."
)
split_cifar100 = _split_stream(
    "split-cifar100",
    "cifar100",
    10,
    "reduced-resnet18",
    "CIFAR-100 (your files), 100 classes split into tasks (10 or 20 in the literature).",
)


def _changed_inputs(
    name: str,
    prefix: str,
    change: Callable[[torch.Tensor, int], torch.Tensor],
    details: dict[str, object],
    *,
    seed: int,
    tasks: int,
    train_samples: int,
    data_root: str | None,
    download: bool,
) -> Stream:
    """Every digit in every task, the inputs of task ``i`` passed through ``change(x, i)``."""
    x_train, y_train, x_test, y_test = load_images("mnist", data_root, download, train_samples, seed)
    # Each task holds its own changed copy of the images.
    needed = tasks * (x_train.nbytes + x_test.nbytes)
    check_fits(needed, f"{name} with {tasks} tasks", "choose fewer tasks, or train_samples=N")
    stream_tasks = [
        Task(
            f"{prefix}{i}",
            tensor_dataset(change(x_train, i), y_train),
            tensor_dataset(change(x_test, i), y_test),
            list(range(10)),
        )
        for i in range(tasks)
    ]
    # Not augmentable: a crop or flip of a permuted image is noise, and a mirrored digit is no digit.
    return Stream(
        name, stream_tasks, "domain", 10, tuple(x_train.shape[1:]), normalize=STATS["mnist"], details=details
    )


def _check_tasks(name: str, tasks: int) -> None:
    """Before anything is drawn per task: a huge count must fail at once, not after the drawing."""
    if not 1 <= tasks <= PERMUTED_TASKS_MAX:
        raise LifelongError(f"{name} has 1 to {PERMUTED_TASKS_MAX} tasks, got {tasks}; try tasks=10")


def permuted_mnist(
    seed: int = 0,
    tasks: int = 10,
    train_samples: int = 0,
    data_root: str | None = None,
    download: bool = False,
) -> Stream:
    """MNIST (your files) under a new pixel permutation per task (domain-incremental; task 0 as is)."""
    _check_tasks("permuted-mnist", tasks)

    def permute(x: torch.Tensor, i: int) -> torch.Tensor:
        if i == 0:
            return x
        flat = x.reshape(len(x), -1)  # task i's permutation: the same for its train and test sets
        order = np.random.default_rng([seed, i]).permutation(flat.shape[1])
        return flat[:, torch.from_numpy(order)].reshape(x.shape)

    return _changed_inputs(
        "permuted-mnist",
        "perm",
        permute,
        {"permutations": f"numpy.random.default_rng([{seed}, task]).permutation(784) for task >= 1"},
        seed=seed,
        tasks=tasks,
        train_samples=train_samples,
        data_root=data_root,
        download=download,
    )


def rotated_mnist(
    seed: int = 0,
    tasks: int = 20,
    max_angle: float = 180.0,
    train_samples: int = 0,
    data_root: str | None = None,
    download: bool = False,
) -> Stream:
    """MNIST (your files) rotated by a fixed angle per task, angles rising (domain-incremental)."""
    _check_tasks("rotated-mnist", tasks)
    if not 0 <= max_angle <= 360:
        raise LifelongError(f"max_angle must be between 0 and 360 degrees, got {max_angle}")
    # GEM's rotations: task t's angle drawn uniformly from its own bin [t, t + 1) * max_angle / tasks.
    rng = np.random.default_rng(seed)
    angles = [round(float(max_angle / tasks * (t + rng.uniform())), 2) for t in range(tasks)]
    return _changed_inputs(
        "rotated-mnist",
        "rot",
        lambda x, i: rotate(x, angles[i]),
        {"angles": angles},
        seed=seed,
        tasks=tasks,
        train_samples=train_samples,
        data_root=data_root,
        download=download,
    )


def rotate(images: torch.Tensor, degrees: float, chunk: int = 8192) -> torch.Tensor:
    """uint8 images ``[N, C, H, W]`` turned ``degrees`` counter-clockwise about their centre (bilinear)."""
    if degrees == 0:
        return images
    turn = math.radians(degrees)
    matrix = torch.tensor([[math.cos(turn), -math.sin(turn), 0.0], [math.sin(turn), math.cos(turn), 0.0]])
    parts = []
    for part in images.split(chunk):  # the sampling grid is 8 bytes a pixel: chunks bound the memory
        grid = F.affine_grid(matrix.expand(len(part), 2, 3), list(part.shape), align_corners=False)
        turned = F.grid_sample(part.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        parts.append(turned.round_().clamp_(0, 255).to(torch.uint8))
    return torch.cat(parts)


def random_crop_flip(images: torch.Tensor, generator: torch.Generator, padding: int = 4) -> torch.Tensor:
    """The literature's training augmentation, for a whole batch at once: a random crop of the image
    padded by ``padding`` zeros on each side, then a horizontal flip half of the time."""
    n, _, h, w = images.shape
    padded = F.pad(images, (padding,) * 4)
    dy, dx = (torch.randint(0, 2 * padding + 1, (n,), generator=generator) for _ in range(2))
    rows = (dy[:, None] + torch.arange(h)).to(images.device)
    cols = (dx[:, None] + torch.arange(w)).to(images.device)
    flip = (torch.rand(n, generator=generator) < 0.5).to(images.device)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    batch = torch.arange(n, device=images.device)[:, None, None, None]
    channel = torch.arange(images.shape[1], device=images.device)[None, :, None, None]
    return padded[batch, channel, rows[:, None, :, None], cols[:, None, None, :]]
