"""The built-in streams: shapes, class splits, stratified sizes, seeding, options and the MNIST-1D cache."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from lifelong.core.stream import Stream
from lifelong.data import BENCHMARKS, build_benchmark
from lifelong.data import mnist1d as mnist1d_module
from lifelong.data.digits import load_digits_arrays
from lifelong.errors import LifelongError

SMALL = 2000  # MNIST-1D samples for the fast tests
SHAPES = {
    "split-digits": (64,),
    "permuted-digits": (64,),
    "split-mnist1d": (40,),
    "permuted-mnist1d": (40,),
}
TOTALS = {"split-digits": 1797, "permuted-digits": 1797, "split-mnist1d": SMALL, "permuted-mnist1d": SMALL}
SPLIT = ["split-digits", "split-mnist1d"]
PERMUTED = ["permuted-digits", "permuted-mnist1d"]


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("lifelong-cache")


@pytest.fixture(autouse=True)
def _cache_env(shared_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Never write to the real ~/.cache; share generated MNIST-1D data between tests."""
    monkeypatch.setenv("LIFELONG_CACHE", str(shared_cache))


def build(name: str, seed: int = 0, scenario: str | None = None, **options: object) -> Stream:
    if "mnist1d" in name:
        options.setdefault("samples", SMALL)
    if "scenario_option" in options:  # the scenario as a spec option rather than the override argument
        options["scenario"] = options.pop("scenario_option")
    spec = name + (":" + ",".join(f"{k}={v}" for k, v in options.items()) if options else "")
    return build_benchmark(spec, seed=seed, scenario=scenario)


def tensors(stream: Stream) -> list[torch.Tensor]:
    return [t for task in stream for part in (task.train, task.test) for t in part.tensors]


def raw_arrays(name: str) -> tuple[np.ndarray, np.ndarray]:
    if "digits" in name:
        return load_digits_arrays()
    return mnist1d_module.load_mnist1d_arrays(SMALL)


def test_registry_lists_all_builtins() -> None:
    # split-pydoc (text) is covered by tests/test_lora_strategy.py, the image streams that read the
    # user's files by tests/test_image_streams.py.
    images = {
        "split-mnist",
        "permuted-mnist",
        "rotated-mnist",
        "split-fashion-mnist",
        "split-cifar10",
        "split-cifar100",
    }
    assert set(BENCHMARKS) == {*SHAPES, "split-pydoc", *images}
    assert {name for name, bench in BENCHMARKS.items() if bench.reads_files} == images
    for bench in BENCHMARKS.values():
        assert bench.description, bench.name
        assert "\n" not in bench.description


@pytest.mark.parametrize("name", list(SHAPES))
def test_shapes_dtypes_and_task_count(name: str) -> None:
    stream = build(name)
    assert stream.name == name
    assert len(stream) == 5
    assert stream.num_classes == 10
    assert stream.input_shape == SHAPES[name]
    assert stream.default_model == ("cnn1d" if "mnist1d" in name else "mlp")
    for task in stream:
        for part in (task.train, task.test):
            x, y = part.tensors
            assert x.dtype == torch.float32
            assert y.dtype == torch.int64
            assert tuple(x.shape[1:]) == SHAPES[name]
            assert len(x) == len(y)
            assert torch.isfinite(x).all()


@pytest.mark.parametrize("name", SPLIT)
def test_split_tasks_hold_disjoint_class_pairs(name: str) -> None:
    stream = build(name)
    assert stream.scenario == "class"
    for i, task in enumerate(stream):
        assert task.classes == [2 * i, 2 * i + 1]
        assert set(task.train.tensors[1].tolist()) == set(task.classes)
        assert set(task.test.tensors[1].tolist()) == set(task.classes)


def test_split_task_count_option() -> None:
    stream = build("split-mnist1d", tasks=2)
    assert [t.classes for t in stream] == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
    assert [t.classes for t in build("split-digits", tasks=10)] == [[c] for c in range(10)]


@pytest.mark.parametrize("name", PERMUTED)
def test_permuted_tasks_share_classes_and_task0_is_unpermuted(name: str) -> None:
    stream = build(name)
    assert stream.scenario == "domain"
    raw_x, _ = raw_arrays(name)
    raw_rows = {row.tobytes() for row in raw_x.astype(np.float32)}
    for task in stream:
        assert task.classes == list(range(10))
        assert set(task.train.tensors[1].tolist()) == set(range(10))
        assert set(task.test.tensors[1].tolist()) == set(range(10))
    x0 = stream[0].train.tensors[0].numpy()
    x1 = stream[1].train.tensors[0].numpy()
    assert all(row.tobytes() in raw_rows for row in x0)
    assert not np.array_equal(x0, x1)
    # Same rows, same split (labels and seed are equal), only the feature order differs.
    np.testing.assert_array_equal(np.sort(x0, axis=1), np.sort(x1, axis=1))
    assert torch.equal(stream[0].train.tensors[1], stream[1].train.tensors[1])


@pytest.mark.parametrize("name", list(SHAPES))
def test_stratified_seventy_thirty(name: str) -> None:
    stream = build(name)
    total = 0
    for task in stream:
        y_train = task.train.tensors[1].numpy()
        y_test = task.test.tensors[1].numpy()
        n = len(y_train) + len(y_test)
        total += n
        assert abs(len(y_test) / n - 0.3) < 0.01
        for c in task.classes:
            n_c = int((y_train == c).sum() + (y_test == c).sum())
            assert abs(int((y_test == c).sum()) - 0.3 * n_c) <= 1.5, (task.name, c)
    expected = TOTALS[name] * (5 if name in PERMUTED else 1)
    assert total == expected


@pytest.mark.parametrize("name", list(SHAPES))
def test_same_seed_same_data_other_seed_other_split(name: str) -> None:
    a, b, c = build(name, seed=0), build(name, seed=0), build(name, seed=1)
    assert all(torch.equal(s, t) for s, t in zip(tensors(a), tensors(b), strict=True))
    assert not torch.equal(a[0].train.tensors[0], c[0].train.tensors[0])
    assert [len(t.train) for t in a] == [len(t.train) for t in c]


def test_scenario_as_benchmark_option() -> None:
    stream = build_benchmark("split-digits:scenario=task")
    assert stream.scenario == "task"
    mask = stream.class_mask()
    assert mask.shape == (5, 10)
    assert mask[1].nonzero().flatten().tolist() == [2, 3]
    assert build("split-mnist1d", scenario_option="domain").scenario == "domain"


def test_scenario_override() -> None:
    stream = build("split-digits", scenario="task")
    assert stream.scenario == "task"
    assert build("split-mnist1d", scenario="domain").scenario == "domain"


@pytest.mark.parametrize("name", PERMUTED)
def test_permuted_scenario_is_fixed(name: str) -> None:
    with pytest.raises(LifelongError, match="fixed scenario"):
        build(name, scenario="task")


def test_unknown_name_and_option() -> None:
    with pytest.raises(LifelongError, match="unknown benchmark 'nope'"):
        build_benchmark("nope")
    with pytest.raises(LifelongError, match="has no option 'colour'"):
        build_benchmark("split-digits:colour=red")
    with pytest.raises(LifelongError, match="must be a number"):
        build_benchmark("permuted-digits:tasks=many")
    with pytest.raises(LifelongError, match="use one of"):
        build_benchmark("split-mnist1d:scenario=sideways,samples=2000")


@pytest.mark.parametrize(
    ("spec", "phrase"),
    [
        ("split-mnist1d:tasks=0", "between 1 and 10"),
        ("split-mnist1d:tasks=11", "between 1 and 10"),
        ("permuted-mnist1d:tasks=0", "at least 1 task"),
        ("split-mnist1d:samples=500", "samples >= 1000"),
        ("permuted-mnist1d:samples=999", "samples >= 1000"),
        ("split-mnist1d:samples=2000,test_size=1.5", "test size"),
    ],
)
def test_mnist1d_bad_options(spec: str, phrase: str) -> None:
    with pytest.raises(LifelongError, match=phrase) as err:
        build_benchmark(spec)
    assert "\n" not in str(err.value)


def test_mnist1d_cache_written_then_loaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache" / "nested"
    monkeypatch.setenv("LIFELONG_CACHE", str(cache))
    first = build("split-mnist1d")
    files = sorted(cache.iterdir())
    assert [f.suffix for f in files] == [".npz"]
    assert f"n{SMALL}" in files[0].name
    with np.load(files[0], allow_pickle=False) as data:
        assert data["x"].shape == (SMALL, 40)
        assert data["x"].dtype == np.float32
        assert data["y"].dtype == np.int64

    def no_generation(*args: object) -> None:
        raise AssertionError("the cached arrays should have been used")

    monkeypatch.setattr(mnist1d_module, "_generate", no_generation)
    second = build("split-mnist1d")
    assert all(torch.equal(s, t) for s, t in zip(tensors(first), tensors(second), strict=True))


def test_mnist1d_cache_keyed_by_samples(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIFELONG_CACHE", str(tmp_path))
    x_small, _ = mnist1d_module.load_mnist1d_arrays(1000)
    x_big, _ = mnist1d_module.load_mnist1d_arrays(1500)
    assert (len(x_small), len(x_big)) == (1000, 1500)
    assert len(list(tmp_path.glob("*.npz"))) == 2
    assert not list(tmp_path.glob("*.tmp"))


def test_mnist1d_broken_cache_is_regenerated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIFELONG_CACHE", str(tmp_path))
    path = mnist1d_module.cache_path(1000)
    path.write_bytes(b"not an npz file")
    x, y = mnist1d_module.load_mnist1d_arrays(1000)
    assert x.shape == (1000, 40) and len(y) == 1000
    with np.load(path, allow_pickle=False) as data:
        np.testing.assert_array_equal(data["x"], x)


def test_mnist1d_unwritable_cache_is_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("LIFELONG_CACHE", str(blocker / "cache"))
    stream = build("permuted-mnist1d", tasks=2)
    assert len(stream) == 2
    assert blocker.read_text() == "not a folder"


def test_mnist1d_leaves_global_rngs_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIFELONG_CACHE", str(tmp_path))  # empty cache: the generator really runs
    np.random.seed(1234)
    random.seed(1234)
    build("split-mnist1d")
    # the next draws are the ones the caller's seeding promised, as if nothing had run in between
    np.testing.assert_array_equal(np.random.random(4), np.random.RandomState(1234).random_sample(4))
    expected = random.Random(1234)
    assert [random.random() for _ in range(4)] == [expected.random() for _ in range(4)]
    assert list(tmp_path.glob("*.npz"))  # it did generate


@pytest.mark.parametrize("name", ["split-mnist1d", "permuted-mnist1d"])
def test_mnist1d_default_size(name: str) -> None:
    stream = build_benchmark(name)
    assert len(stream) == 5
    sizes = [len(t.train) + len(t.test) for t in stream]
    # split tasks partition the data; every permuted task holds all of it
    total = sum(sizes) if name.startswith("split") else sizes[0]
    assert total >= 10_000
