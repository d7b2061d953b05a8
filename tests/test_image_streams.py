"""Image streams and loaders on tiny datasets written in each library's own on-disk format."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from image_fixtures import (
    FAST,
    bad_input,
    matrix_of,
    write_cifar10_binary,
    write_cifar10_python,
    write_cifar100_binary,
    write_idx,
    write_image_folders,
    write_mnist,
)

from lifelong.data import build_benchmark
from lifelong.data.vision import random_crop_flip, rotate
from lifelong.errors import LifelongError
from lifelong.models import build_model


@pytest.mark.parametrize(
    ("benchmark", "write", "tasks"),
    [
        ("split-mnist", write_mnist, 5),
        ("permuted-mnist:tasks=3", write_mnist, 3),
        ("rotated-mnist:tasks=2", write_mnist, 2),
        ("split-fashion-mnist", lambda root: write_mnist(root, "FashionMNIST/raw", compress=False), 5),
        ("split-cifar10", write_cifar10_binary, 5),
        ("split-cifar10:tasks=2", write_cifar10_python, 2),
        ("split-cifar100:tasks=20", write_cifar100_binary, 20),
    ],
)
def test_each_image_stream_runs_end_to_end_from_its_files(
    cli, tmp_path: Path, benchmark, write, tasks
) -> None:
    write(tmp_path / "files")
    out = tmp_path / "run"
    model = "mlp:hidden=16" if "mnist" in benchmark else "cnn:channels=4,hidden=8"
    code, _, err = cli(
        "run",
        "--benchmark",
        benchmark,
        "--data-root",
        str(tmp_path / "files"),
        "--model",
        model,
        "--out",
        str(out),
        *FAST,
    )
    assert code == 0, err
    matrix = matrix_of(out)
    assert len(matrix) == tasks and all(len(row) == tasks for row in matrix)
    assert all(0.0 <= score <= 1.0 for row in matrix for score in row)
    stream = json.loads((out / "run.json").read_text())["stream"]
    assert stream  # how it was cut: class order, permutation seed or angles
    if benchmark.startswith("split"):
        assert sorted(c for group in stream["tasks"] for c in group) == list(
            range(len(stream["class_order"]))
        )


def test_split_streams_keep_the_official_test_set_and_uint8_pixels(tmp_path: Path) -> None:
    write_mnist(tmp_path, train=12, test=4)
    stream = build_benchmark("split-mnist:order=natural", seed=3, files={"data_root": str(tmp_path)})
    assert [task.classes for task in stream] == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
    assert all(len(task.test) == 2 * 4 and len(task.train) == 2 * 12 for task in stream)
    x = stream[0].train.tensors[0]
    assert x.dtype == torch.uint8 and tuple(x.shape[1:]) == (1, 28, 28) and stream.normalize is not None
    seeded = [build_benchmark("split-mnist", seed=s, files={"data_root": str(tmp_path)}) for s in (0, 0, 1)]
    orders = [s.details["class_order"] for s in seeded]
    assert orders[0] == orders[1] != orders[2]


def test_train_samples_keeps_a_seeded_subset(tmp_path: Path) -> None:
    write_mnist(tmp_path, train=12)
    stream = build_benchmark("permuted-mnist:tasks=2,train_samples=30", files={"data_root": str(tmp_path)})
    assert len(stream[0].train) == 30 and len(stream[1].train) == 30
    assert not torch.equal(stream[0].train.tensors[0], stream[1].train.tensors[0])  # task 1 is permuted


def test_rotated_mnist_angles_rise_one_per_bin_as_in_gem(tmp_path: Path) -> None:
    write_mnist(tmp_path)
    stream = build_benchmark("rotated-mnist:tasks=4", seed=2, files={"data_root": str(tmp_path)})
    angles = stream.details["angles"]
    assert len(angles) == 4 and all(45 * t <= a < 45 * (t + 1) for t, a in enumerate(angles))
    assert not torch.equal(stream[0].train.tensors[0], stream[1].train.tensors[0])


def test_rotation_by_a_right_angle_matches_rot90() -> None:
    images = torch.randint(0, 256, (3, 1, 8, 8), dtype=torch.uint8)
    turned = rotate(images, 90.0)
    assert turned.dtype == torch.uint8
    assert torch.equal(turned, torch.rot90(images, 1, dims=(2, 3)))
    assert rotate(images, 0.0) is images


def test_crop_and_flip_matches_a_per_image_reference() -> None:
    images = torch.randint(0, 256, (16, 3, 6, 5), dtype=torch.uint8)
    out = random_crop_flip(images, torch.Generator().manual_seed(1), padding=2)
    # The same draws, in the same order, applied one image at a time the obvious way.
    draws = torch.Generator().manual_seed(1)
    dy, dx = (torch.randint(0, 5, (16,), generator=draws) for _ in range(2))
    flips = torch.rand(16, generator=draws) < 0.5
    for i, image in enumerate(images):
        crop = F.pad(image, (2, 2, 2, 2))[:, dy[i] : dy[i] + 6, dx[i] : dx[i] + 5]
        assert torch.equal(out[i], crop.flip(-1) if flips[i] else crop)
    assert not torch.equal(out, images) and bool(flips.any()) and not bool(flips.all())
    again = random_crop_flip(images, torch.Generator().manual_seed(1), padding=2)
    assert torch.equal(out, again)


def test_missing_files_are_named_one_line(cli, tmp_path: Path) -> None:
    where = write_mnist(tmp_path)
    (where / "t10k-labels-idx1-ubyte.gz").unlink()
    err = bad_input(cli, tmp_path, "--benchmark", "split-mnist", "--data-root", str(tmp_path))
    assert "t10k-labels-idx1-ubyte missing" in err and "--download" in err and "train-images" not in err


def test_wrong_layouts_say_so_in_one_line(cli, tmp_path: Path) -> None:
    where = write_mnist(tmp_path, compress=False)
    (where / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03" + b"\x00" * 9)
    assert "truncated or damaged" in bad_input(
        cli, tmp_path, "--benchmark", "split-mnist", "--data-root", str(tmp_path)
    )
    (where / "train-images-idx3-ubyte").write_bytes(b"PNG not idx")
    assert "not an IDX file" in bad_input(
        cli, tmp_path, "--benchmark", "split-mnist", "--data-root", str(tmp_path)
    )
    binary = write_cifar10_binary(tmp_path)
    (binary / "test_batch.bin").write_bytes(b"\x01" * 100)
    assert "whole number of records" in bad_input(
        cli, tmp_path, "--benchmark", "split-cifar10", "--data-root", str(tmp_path)
    )
    write_mnist(tmp_path, compress=False)  # images fine again, then labels out of range
    write_idx(where / "train-labels-idx1-ubyte", np.full(120, 42, dtype=np.uint8))
    assert "labels must be 0..9" in bad_input(
        cli, tmp_path, "--benchmark", "split-mnist", "--data-root", str(tmp_path)
    )
    write_idx(where / "train-labels-idx1-ubyte", np.zeros(100, dtype=np.uint8))
    assert "one label for each of the 120 images" in bad_input(
        cli, tmp_path, "--benchmark", "split-mnist", "--data-root", str(tmp_path)
    )
    write_mnist(tmp_path, compress=False)
    write_idx(where / "t10k-images-idx3-ubyte", np.zeros((40, 20, 20), dtype=np.uint8))
    assert "should hold 28x28 uint8 images" in bad_input(
        cli, tmp_path, "--benchmark", "split-mnist", "--data-root", str(tmp_path)
    )


class _Payload:
    def __reduce__(self):
        return (Path.touch, (Path("pwned"),))


def test_a_cifar_pickle_that_would_run_code_is_refused(cli, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    where = write_cifar10_python(tmp_path)
    (where / "data_batch_3").write_bytes(pickle.dumps({b"data": _Payload(), b"labels": [0]}, protocol=2))
    err = bad_input(cli, tmp_path, "--benchmark", "split-cifar10", "--data-root", str(tmp_path))
    assert "not allowed" in err and not (tmp_path / "pwned").exists()


def test_an_image_model_on_vectors_says_which_models_fit() -> None:
    with pytest.raises(LifelongError, match="reads images"):
        build_model("reduced-resnet18", (64,), 10)


def _read_idx(path: Path) -> np.ndarray:
    """An IDX reader of the test's own, so the reference loop shares no loading code with lifelong."""
    data = path.read_bytes()
    rank = data[3]
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(rank)]
    return np.frombuffer(data[4 + 4 * rank :], dtype=np.uint8).reshape(shape)


def _reference_sets(raw: Path) -> tuple[torch.utils.data.Dataset, torch.utils.data.Dataset]:
    try:  # torchvision's own MNIST reader where it is installed
        from torchvision.datasets import MNIST
        from torchvision.transforms import PILToTensor

        root = raw.parent.parent
        return MNIST(str(root), train=True, transform=PILToTensor()), MNIST(
            str(root), train=False, transform=PILToTensor()
        )
    except ImportError:
        pass
    sets = []
    for prefix in ("train", "t10k"):
        x = torch.from_numpy(_read_idx(raw / f"{prefix}-images-idx3-ubyte").copy())[:, None]
        y = torch.from_numpy(_read_idx(raw / f"{prefix}-labels-idx1-ubyte").astype(np.int64))
        sets.append(torch.utils.data.TensorDataset(x, y))
    return sets[0], sets[1]


def test_a_bare_dataloader_loop_over_the_same_files_gives_the_same_matrix(cli, tmp_path: Path) -> None:
    """Acceptance: the loaders feed the same tensors, so one seed gives one matrix either way."""
    raw = write_mnist(tmp_path / "files", compress=False, train=30, test=10)  # as torchvision leaves them
    out = tmp_path / "run"
    code, _, err = cli(
        "run", "--benchmark", "split-mnist:tasks=2", "--data-root", str(tmp_path / "files"), "--model", "mlp:hidden=32",
        "--epochs", "2", "--optimizer", "sgd", "--lr", "0.01", "-s", "naive", "--report", "none", "--no-progress", "--out", str(out),
    )  # fmt: skip
    assert code == 0, err
    groups = json.loads((out / "run.json").read_text())["stream"]["tasks"]
    train, test = _reference_sets(raw)
    train_y = torch.tensor([int(train[i][1]) for i in range(len(train))])
    test_y = torch.tensor([int(test[i][1]) for i in range(len(test))])
    torch.manual_seed(0)  # what the command does before it builds the model
    model = build_model("mlp:hidden=32", (1, 28, 28), 10, normalize=([0.1307], [0.3081]))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    order = torch.Generator().manual_seed(0)
    matrix = []
    for group in groups:
        members = torch.nonzero(torch.isin(train_y, torch.tensor(group))).flatten()
        model.train()
        for _ in range(2):
            perm = members[torch.randperm(len(members), generator=order)]
            batches = [perm[s : s + 32].tolist() for s in range(0, len(perm), 32)]
            for x, y in torch.utils.data.DataLoader(train, batch_sampler=batches):
                optimizer.zero_grad()
                F.cross_entropy(model(x), y).backward()
                optimizer.step()
        model.eval()
        row = []
        with torch.no_grad():
            for seen in groups:
                keep = torch.nonzero(torch.isin(test_y, torch.tensor(seen))).flatten().tolist()
                x, y = next(
                    iter(
                        torch.utils.data.DataLoader(torch.utils.data.Subset(test, keep), batch_size=len(keep))
                    )
                )
                row.append(int((model(x).argmax(1) == y).sum()) / len(y))
        matrix.append(row)
    assert matrix_of(out) == matrix
    assert len({score for row in matrix for score in row}) > 2  # scores with room to differ


def test_a_torchvision_model_by_name_trains_on_an_image_stream(cli, tmp_path: Path) -> None:
    """Runs where the vision extra is installed (torchvision needs a torch build of its own)."""
    pytest.importorskip("torchvision")
    write_cifar10_binary(tmp_path / "files")
    out = tmp_path / "run"
    code, _, err = cli(
        "run", "--benchmark", "split-cifar10:tasks=2", "--data-root", str(tmp_path / "files"),
        "--model", "torchvision:name=resnet18", "--out", str(out), *FAST,
    )  # fmt: skip
    assert code == 0, err
    assert len(matrix_of(out)) == 2


def test_download_goes_through_torchvision_and_then_reads_its_layout(
    cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torchvision's downloader (faked: nothing may be fetched here) leaves ROOT/MNIST/raw, read next."""
    import sys
    import types

    calls = []

    def fake_mnist(root: str, train: bool, download: bool) -> None:
        calls.append((root, train, download))
        write_mnist(Path(root), compress=False)

    datasets = types.SimpleNamespace(MNIST=fake_mnist)
    monkeypatch.setitem(sys.modules, "torchvision", types.SimpleNamespace(datasets=datasets))
    monkeypatch.setitem(sys.modules, "torchvision.datasets", datasets)
    root = tmp_path / "data"
    out = tmp_path / "run"
    code, _, err = cli(
        "run", "--benchmark", "split-mnist:tasks=2", "--data-root", str(root), "--out", str(out), *FAST
    )
    assert code == 2 and "--download" in err and not calls  # not without leave
    code, _, err = cli(
        "run",
        "--benchmark",
        "split-mnist:tasks=2",
        "--data-root",
        str(root),
        "--download",
        "--out",
        str(out),
        *FAST,
    )
    assert code == 0, err
    assert calls == [(str(root), True, True), (str(root), False, True)]
    assert (root / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file()


def test_damaged_cifar_pickles_say_so_in_one_line(cli, tmp_path: Path) -> None:
    where = write_cifar10_python(tmp_path)
    for payload, said in (
        (np.zeros(3), "not a dict"),
        ({b"data": np.zeros((2, 3072), dtype=np.float32), b"labels": [0, 1]}, "not uint8 pixels"),
        ({b"data": np.zeros((1, 3072), dtype=np.uint8), b"labels": [2**70]}, "not a CIFAR Python batch"),
    ):
        (where / "data_batch_2").write_bytes(pickle.dumps(payload, protocol=2))
        assert said in bad_input(cli, tmp_path, "--benchmark", "split-cifar10", "--data-root", str(tmp_path))


def test_cifar100_python_batches_read_their_fine_labels(tmp_path: Path) -> None:
    where = tmp_path / "cifar-100-python"
    where.mkdir()
    for name, n in (("train", 200), ("test", 100)):
        fine = np.arange(n) % 100
        data = np.full((n, 3072), 7, dtype=np.uint8)
        batch = {b"data": data, b"fine_labels": fine.tolist(), b"coarse_labels": (fine // 5).tolist()}
        (where / name).write_bytes(pickle.dumps(batch, protocol=2))
    stream = build_benchmark("split-cifar100:tasks=20,order=natural", files={"data_root": str(tmp_path)})
    assert len(stream) == 20 and stream[19].classes == [95, 96, 97, 98, 99]
    assert len(stream[0].train) == 10 and len(stream[0].test) == 5


def test_a_huge_task_count_fails_before_any_drawing(tmp_path: Path) -> None:
    for name in ("permuted-mnist", "rotated-mnist"):
        with pytest.raises(LifelongError, match="1 to 1000 tasks"):
            build_benchmark(f"{name}:tasks=100000000", files={"data_root": str(tmp_path)})


def test_flags_that_would_be_ignored_are_refused(cli, tmp_path: Path) -> None:
    root = write_image_folders(tmp_path / "imgs", classes=2, per_class=6)
    assert "drop them" in bad_input(
        cli, tmp_path, "--data", str(root), "--classes-per-task", "1", "--data-root", "x"
    )
    assert "--image-size" in bad_input(cli, tmp_path, "--image-size", "8")
    write_mnist(tmp_path / "files")
    for digits in ("permuted-mnist:tasks=2", "split-mnist:tasks=2"):  # no crops and flips of digits
        files = str(tmp_path / "files")
        err = bad_input(cli, tmp_path, "--benchmark", digits, "--data-root", files, "--augment")
        assert "drop --augment" in err


def test_the_api_names_the_input_layer_an_image_stream_needs(tmp_path: Path) -> None:
    from lifelong import Learner, build_strategies

    write_mnist(tmp_path)
    stream = build_benchmark("split-mnist:tasks=2", files={"data_root": str(tmp_path)})
    bare = build_model("mlp:hidden=8", stream.input_shape, stream.num_classes)
    with pytest.raises(LifelongError, match=r"normalize=stream\.normalize"):
        Learner(bare, build_strategies("naive"), epochs=1).fit(stream)
    model = build_model("mlp:hidden=8", stream.input_shape, stream.num_classes, normalize=stream.normalize)
    assert len(Learner(model, build_strategies("naive"), epochs=1).fit(stream).matrix) == 2


def test_der_stores_raw_inputs_and_replays_them_augmented(tmp_path: Path) -> None:
    from lifelong import Learner, build_strategies

    write_cifar10_binary(tmp_path)
    stream = build_benchmark("split-cifar10:tasks=2", files={"data_root": str(tmp_path)})
    model = build_model("cnn:channels=2,hidden=4", stream.input_shape, 10, seed=0, normalize=stream.normalize)
    seen = []
    (der,) = strategies = build_strategies("der++:buffer_size=1000,minibatch_size=4")

    def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        seen.append(x)
        return random_crop_flip(x, generator)

    Learner(model, strategies, epochs=1, batch_size=8, augment=augment).fit(stream)
    stored = der.buffer.state_dict()
    (x_key,) = [k for k, v in stored.items() if isinstance(v, torch.Tensor) and v.dtype == torch.uint8]
    train = {tuple(x.flatten().tolist()) for task in stream for x in task.train.tensors[0]}
    assert all(tuple(x.flatten().tolist()) in train for x in stored[x_key])  # raw, as the files hold them
    batches = sum(-(-len(task.train) // 8) for task in stream)
    assert len(seen) > batches  # the training batches, and the replayed samples too


def test_a_permuted_stream_the_memory_cannot_hold_is_refused(tmp_path: Path, monkeypatch) -> None:
    import lifelong.core.memory

    write_mnist(tmp_path)
    monkeypatch.setattr(lifelong.core.memory, "physical_memory", lambda: 400 * 2**10)
    with pytest.raises(LifelongError, match=r"permuted-mnist with 5 tasks needs.*fewer tasks"):
        build_benchmark("permuted-mnist:tasks=5", files={"data_root": str(tmp_path)})


class _Processes:
    """Two processes, seen from one of them: records the barrier."""

    def __init__(self, main: bool) -> None:
        self.world, self.is_main, self.waited = 2, main, 0

    def wait(self) -> None:
        self.waited += 1


def test_a_failed_download_on_the_main_process_passes_the_barrier_before_it_raises(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from lifelong.experiment import RunConfig
    from lifelong.experiment.run import _open_stream

    config = RunConfig(benchmark="split-mnist", data_root=str(tmp_path), download=True).validate()
    folder = SimpleNamespace(saved={}, describe=lambda *_: None)
    for main, said in ((True, r"torchvision|downloading mnist"), (False, "or add --download")):
        processes = _Processes(main)
        with pytest.raises(LifelongError, match=said):  # the others read, and never download
            _open_stream(config, folder, processes)  # type: ignore[arg-type]
        assert processes.waited == 1


def test_agem_augments_its_reference_samples_as_training_batches_are(tmp_path: Path) -> None:
    from lifelong import Learner, build_strategies

    write_cifar10_binary(tmp_path)
    stream = build_benchmark("split-cifar10:tasks=2", files={"data_root": str(tmp_path)})
    model = build_model("cnn:channels=2,hidden=4", stream.input_shape, 10, seed=0, normalize=stream.normalize)
    sizes = []

    def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        sizes.append(len(x))
        return random_crop_flip(x, generator)

    Learner(model, build_strategies("agem:sample_size=7"), epochs=1, batch_size=8, augment=augment).fit(
        stream
    )
    second_task_steps = -(-len(stream[1].train) // 8)
    assert sizes.count(7) == second_task_steps  # one reference draw of 7 per step once memory holds task 0
