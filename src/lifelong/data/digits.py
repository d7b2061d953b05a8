"""scikit-learn's 8x8 handwritten digits (1,797 images, ships with the package)."""

from __future__ import annotations

import numpy as np

from lifelong.core.stream import Scenario, Stream, permuted, split_by_classes
from lifelong.errors import LifelongError


def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """Features scaled to [0, 1] (the raw pixels are 0..16) and integer labels."""
    from sklearn.datasets import load_digits

    data = load_digits()
    return (data.data / 16.0).astype(np.float32), data.target.astype(np.int64)


def split_digits(
    seed: int = 0, scenario: Scenario = "class", tasks: int = 5, test_size: float = 0.3
) -> Stream:
    """sklearn digits, 10 classes split into tasks of equal class groups (class-incremental)."""
    if not 1 <= tasks <= 10:
        raise LifelongError(f"split-digits has 10 classes, so tasks must be between 1 and 10, got {tasks}")
    x, y = load_digits_arrays()
    groups = [list(g) for g in np.array_split(np.arange(10), tasks)]
    return split_by_classes(
        "split-digits", x, y, groups, scenario=scenario, test_size=test_size, seed=seed, num_classes=10
    )


def permuted_digits(seed: int = 0, tasks: int = 5, test_size: float = 0.3) -> Stream:
    """sklearn digits under a new pixel permutation per task (domain-incremental; task 0 unpermuted)."""
    x, y = load_digits_arrays()
    return permuted("permuted-digits", x, y, tasks, test_size=test_size, seed=seed)
