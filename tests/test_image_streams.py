"""Image streams and loaders on tiny datasets written in each library's own on-disk format."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from image_fixtures import (
    write_cifar10_binary,
    write_cifar10_python,
    write_cifar100_binary,
    write_idx,
    write_image_folders,
    write_mnist,
)

from lifelong.data import build_benchmark
from lifelong.data.image_folders import load_image_folders
from lifelong.data.vision import random_crop_flip, rotate
from lifelong.errors import LifelongError
from lifelong.models import build_model

FAST = ("-s", "naive", "--epochs", "1", "--report", "none", "--no-progress")


def _matrix(out: Path) -> list[list[float]]:
    (result,) = json.loads((out / "results.json").read_text())["results"]
    return result["accuracy_matrix"]


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
    matrix = _matrix(out)
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


def test_rotation_by_a_right_angle_matches_rot90() -> None:
    images = torch.randint(0, 256, (3, 1, 8, 8), dtype=torch.uint8)
    turned = rotate(images, 90.0)
    assert turned.dtype == torch.uint8
    assert torch.equal(turned, torch.rot90(images, 1, dims=(2, 3)))
    assert rotate(images, 0.0) is images


def test_crop_and_flip_moves_pixels_only_and_repeats_for_a_seed() -> None:
    images = torch.arange(2 * 3 * 4 * 4, dtype=torch.uint8).view(2, 3, 4, 4)
    same = random_crop_flip(images, torch.Generator().manual_seed(0), padding=0)
    for original, out in zip(images, same, strict=True):  # no padding: each is itself or its mirror
        assert torch.equal(out, original) or torch.equal(out, original.flip(-1))
    first = random_crop_flip(images, torch.Generator().manual_seed(1))
    again = random_crop_flip(images, torch.Generator().manual_seed(1))
    assert torch.equal(first, again) and first.shape == images.shape


def test_image_folders_of_classes_and_of_tasks(cli, tmp_path: Path) -> None:
    write_image_folders(tmp_path / "classes", classes=4, per_class=10)
    code, _, err = cli(
        "run",
        "--data",
        str(tmp_path / "classes"),
        "--classes-per-task",
        "2",
        "--out",
        str(tmp_path / "a"),
        *FAST,
    )
    assert code == 0, err
    assert len(_matrix(tmp_path / "a")) == 2
    write_image_folders(tmp_path / "tasks", classes=4, per_class=10, tasks=2, color=True)
    out = tmp_path / "b"
    code, _, err = cli(
        "run",
        "--data",
        str(tmp_path / "tasks"),
        "--augment",
        "--model",
        "reduced-resnet18:width=4",
        "--out",
        str(out),
        *FAST,
    )
    assert code == 0, err
    stream = json.loads((out / "run.json").read_text())["stream"]
    assert stream["tasks"] == {"task0": ["class0", "class1"], "task1": ["class2", "class3"]}
    loaded = load_image_folders(tmp_path / "tasks")
    assert loaded.input_shape == (3, 12, 12) and loaded.class_names == [
        "class0",
        "class1",
        "class2",
        "class3",
    ]


def test_image_size_resizes_and_gray_joins_colour(tmp_path: Path) -> None:
    from PIL import Image

    write_image_folders(tmp_path, classes=2, per_class=6)
    Image.new("RGB", (20, 16), (255, 0, 0)).save(tmp_path / "class0" / "big.png")
    with pytest.raises(LifelongError, match=r"differ in size.*--image-size"):
        load_image_folders(tmp_path, classes_per_task=1)
    stream = load_image_folders(tmp_path, classes_per_task=1, image_size=8)
    assert stream.input_shape == (3, 8, 8)


def _bad_input(cli, tmp_path: Path, *args: str) -> str:
    code, out, err = cli("run", *args, "--out", str(tmp_path / "bad"), *FAST)
    assert code == 2, out + err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "bad" / "results.json").exists()
    return err


def test_missing_files_are_named_one_line(cli, tmp_path: Path) -> None:
    where = write_mnist(tmp_path)
    (where / "t10k-labels-idx1-ubyte.gz").unlink()
    err = _bad_input(cli, tmp_path, "--benchmark", "split-mnist", "--data-root", str(tmp_path))
    assert "t10k-labels-idx1-ubyte missing" in err and "--download" in err and "train-images" not in err


def test_wrong_layouts_say_so_in_one_line(cli, tmp_path: Path) -> None:
    where = write_mnist(tmp_path, compress=False)
    (where / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03" + b"\x00" * 9)
    assert "truncated or damaged" in _bad_input(
        cli, tmp_path, "--benchmark", "split-mnist", "--data-root", str(tmp_path)
    )
    (where / "train-images-idx3-ubyte").write_bytes(b"PNG not idx")
    assert "not an IDX file" in _bad_input(
        cli, tmp_path, "--benchmark", "split-mnist", "--data-root", str(tmp_path)
    )
    binary = write_cifar10_binary(tmp_path)
    (binary / "test_batch.bin").write_bytes(b"\x01" * 100)
    assert "whole number of records" in _bad_input(
        cli, tmp_path, "--benchmark", "split-cifar10", "--data-root", str(tmp_path)
    )
    write_idx(where / "train-labels-idx1-ubyte", np.full(120, 42, dtype=np.uint8))
    write_mnist(tmp_path, compress=False)  # images fine again, then labels out of range
    write_idx(where / "train-labels-idx1-ubyte", np.full(120, 42, dtype=np.uint8))
    assert "labels must be 0..9" in _bad_input(
        cli, tmp_path, "--benchmark", "split-mnist", "--data-root", str(tmp_path)
    )


class _Payload:
    def __reduce__(self):
        return (Path.touch, (Path("pwned"),))


def test_a_cifar_pickle_that_would_run_code_is_refused(cli, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    where = write_cifar10_python(tmp_path)
    (where / "data_batch_3").write_bytes(pickle.dumps({b"data": _Payload(), b"labels": [0]}, protocol=2))
    err = _bad_input(cli, tmp_path, "--benchmark", "split-cifar10", "--data-root", str(tmp_path))
    assert "not allowed" in err and not (tmp_path / "pwned").exists()


def test_image_folder_problems_say_so_in_one_line(cli, tmp_path: Path) -> None:
    root = write_image_folders(tmp_path / "imgs", classes=2, per_class=6)
    (root / "class1" / "0broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    assert "0broken.png' is not a readable image" in _bad_input(
        cli, tmp_path, "--data", str(root), "--classes-per-task", "1"
    )
    (root / "class1" / "0broken.png").unlink()
    (root / "class2").mkdir()
    (root / "class2" / "notes.txt").write_text("no images here")
    assert "class2' holds no images" in _bad_input(
        cli, tmp_path, "--data", str(root), "--classes-per-task", "1"
    )
    shutil.rmtree(root / "class2")
    assert "--classes-per-task N" in _bad_input(cli, tmp_path, "--data", str(root))
    assert "--data-root" in _bad_input(cli, tmp_path, "--benchmark", "split-digits", "--data-root", str(root))
    assert "drop --augment" in _bad_input(cli, tmp_path, "--augment")


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
    assert _matrix(out) == matrix
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
    assert len(_matrix(out)) == 2


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
