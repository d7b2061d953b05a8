"""MNIST-1D (Greydanus & Steinbach): ten 1-D digit templates, shifted, scaled, sheared and noised.

The data are generated locally with the ``mnist1d`` package (nothing is downloaded) and kept as an
``.npz`` in the cache (`lifelong.models.hf.cache_dir`), keyed by the number of samples and the
generator seed. Each sample is a float32 signal of length 40.
"""

from __future__ import annotations

import contextlib
import os
import random
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from lifelong.core.stream import Scenario, Stream, permuted, split_by_classes
from lifelong.errors import LifelongError
from lifelong.models.hf import cache_dir

GENERATOR_SEED = 42  # mnist1d's own default: the canonical MNIST-1D templates and noise
_CACHE_VERSION = 1  # bump when the cached layout or the preprocessing changes


def cache_path(samples: int, generator_seed: int = GENERATOR_SEED) -> Path:
    return cache_dir() / f"mnist1d-v{_CACHE_VERSION}-n{samples}-seed{generator_seed}.npz"


def load_mnist1d_arrays(
    samples: int = 10000, generator_seed: int = GENERATOR_SEED
) -> tuple[np.ndarray, np.ndarray]:
    """Every generated sample (mnist1d's train and test halves together): x float32 [n, 40], y int64."""
    path = cache_path(samples, generator_seed)
    cached = _read_cache(path)
    if cached is not None:
        return cached
    x, y = _generate(samples, generator_seed)
    _write_cache(path, x, y)
    return x, y


def _generate(samples: int, generator_seed: int) -> tuple[np.ndarray, np.ndarray]:
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = samples
    args.seed = generator_seed
    # make_dataset reseeds Python's and numpy's global RNGs; leave the caller's streams as they were.
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        data = make_dataset(args)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    x = np.concatenate([data["x"], data["x_test"]]).astype(np.float32)
    y = np.concatenate([data["y"], data["y_test"]]).astype(np.int64)
    return x, y


def _read_cache(path: Path) -> tuple[np.ndarray, np.ndarray] | None:
    """The cached arrays, or None when there is no usable cache file (a broken one is regenerated)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            x, y = data["x"], data["y"]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        return None
    if x.dtype != np.float32 or y.dtype != np.int64 or x.ndim != 2 or len(x) != len(y):
        return None
    return x, y


def _write_cache(path: Path, x: np.ndarray, y: np.ndarray) -> None:
    """Atomic write (temporary file, then rename); silently skipped where the cache is not writable."""
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.stem + ".", suffix=".tmp")
        with os.fdopen(fd, "wb") as handle:
            np.savez(handle, x=x, y=y)
        os.replace(tmp, path)
        tmp = None
    except OSError:
        pass
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def _check_samples(samples: int) -> None:
    if samples < 1000:
        raise LifelongError(f"mnist1d needs samples >= 1000, got {samples}; try samples=10000")


def split_mnist1d(
    seed: int = 0, scenario: Scenario = "class", tasks: int = 5, samples: int = 10000, test_size: float = 0.3
) -> Stream:
    """MNIST-1D (generated locally), 10 classes split into tasks of equal class groups (class-incremental)."""
    if not 1 <= tasks <= 10:
        raise LifelongError(f"split-mnist1d has 10 classes, so tasks must be between 1 and 10, got {tasks}")
    _check_samples(samples)
    x, y = load_mnist1d_arrays(samples)
    groups = [list(g) for g in np.array_split(np.arange(10), tasks)]
    return split_by_classes(
        "split-mnist1d",
        x,
        y,
        groups,
        scenario=scenario,
        test_size=test_size,
        seed=seed,
        num_classes=10,
        default_model="cnn1d",
    )


def permuted_mnist1d(seed: int = 0, tasks: int = 5, samples: int = 10000, test_size: float = 0.3) -> Stream:
    """MNIST-1D (generated locally) under a new permutation per task (domain-incremental; task 0 as is)."""
    if tasks < 1:
        raise LifelongError(f"permuted-mnist1d needs at least 1 task, got {tasks}; try tasks=5")
    _check_samples(samples)
    x, y = load_mnist1d_arrays(samples)
    return permuted("permuted-mnist1d", x, y, tasks, test_size=test_size, seed=seed, default_model="cnn1d")
