"""Tiny datasets written in each library's own on-disk format, for the real loaders to read, and the
checks every image-stream test makes of a run."""

from __future__ import annotations

import gzip
import json
import pickle
from pathlib import Path

import numpy as np


def class_images(
    classes: int, per_class: int, shape: tuple[int, ...], seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images whose class is a bright band at its own place, over noise: learnable, not trivial."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(classes), per_class)
    images = rng.integers(0, 80, size=(len(labels), *shape), dtype=np.uint8)
    rows = shape[-2]
    for i, label in enumerate(labels):
        band = (label * rows) // classes
        images[i, ..., band : band + max(rows // classes, 1), :] = 230
    order = rng.permutation(len(labels))
    return images[order], labels[order]


def write_idx(path: Path, array: np.ndarray, compress: bool = False) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data)
    path.write_bytes(data)


def write_mnist(
    root: Path, folder: str = "MNIST/raw", compress: bool = True, train: int = 12, test: int = 4
) -> Path:
    """MNIST's four IDX files, as torchvision lays them out (``ROOT/MNIST/raw``)."""
    where = root / folder
    where.mkdir(parents=True, exist_ok=True)
    x, y = class_images(10, train, (28, 28), seed=1)
    xt, yt = class_images(10, test, (28, 28), seed=2)
    for name, array in (("train-images-idx3-ubyte", x), ("train-labels-idx1-ubyte", y)):
        write_idx(where / name, array, compress)
    for name, array in (("t10k-images-idx3-ubyte", xt), ("t10k-labels-idx1-ubyte", yt)):
        write_idx(where / name, array, compress)
    return where


def _cifar(classes: int, train: int, test: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    x, y = class_images(classes, train, (3, 32, 32), seed=3)
    xt, yt = class_images(classes, test, (3, 32, 32), seed=4)
    return x.reshape(len(x), -1), y, xt.reshape(len(xt), -1), yt


def write_cifar10_binary(root: Path, train: int = 10, test: int = 3) -> Path:
    where = root / "cifar-10-batches-bin"
    where.mkdir(parents=True, exist_ok=True)
    x, y, xt, yt = _cifar(10, train, test)
    parts = np.array_split(np.arange(len(y)), 5)
    for i, part in enumerate(parts, start=1):
        records = np.concatenate([y[part, None].astype(np.uint8), x[part]], axis=1)
        (where / f"data_batch_{i}.bin").write_bytes(records.tobytes())
    (where / "test_batch.bin").write_bytes(
        np.concatenate([yt[:, None].astype(np.uint8), xt], axis=1).tobytes()
    )
    return where


def write_cifar10_python(root: Path, train: int = 10, test: int = 3) -> Path:
    """The pickled batches torchvision downloads: dicts of bytes keys, a uint8 array and a label list."""
    where = root / "cifar-10-batches-py"
    where.mkdir(parents=True, exist_ok=True)
    x, y, xt, yt = _cifar(10, train, test)
    for i, part in enumerate(np.array_split(np.arange(len(y)), 5), start=1):
        batch = {b"data": x[part], b"labels": [int(v) for v in y[part]]}
        (where / f"data_batch_{i}").write_bytes(pickle.dumps(batch, protocol=2))
    (where / "test_batch").write_bytes(
        pickle.dumps({b"data": xt, b"labels": [int(v) for v in yt]}, protocol=2)
    )
    return where


def write_cifar100_binary(root: Path, train: int = 3, test: int = 1) -> Path:
    where = root / "cifar-100-binary"
    where.mkdir(parents=True, exist_ok=True)
    x, y, xt, yt = _cifar(100, train, test)
    for name, images, labels in (("train.bin", x, y), ("test.bin", xt, yt)):
        coarse = (labels // 5).astype(np.uint8)
        records = np.concatenate([coarse[:, None], labels[:, None].astype(np.uint8), images], axis=1)
        (where / name).write_bytes(records.tobytes())
    return where


def write_image_folders(
    root: Path, classes: int = 4, per_class: int = 10, tasks: int = 0, color: bool = False
) -> Path:
    """PNG class folders (``ROOT/CLASS/i.png``), or with ``tasks`` ``ROOT/taskK/CLASS/i.png``."""
    from PIL import Image

    shape = (12, 12, 3) if color else (12, 12)
    x, y = class_images(classes, per_class, (3, 12, 12) if color else shape, seed=5)
    for i, (image, label) in enumerate(zip(x, y, strict=True)):
        task = f"task{label * tasks // classes}" if tasks else ""
        folder = root / task / f"class{label}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image.transpose(1, 2, 0) if color else image).save(folder / f"{i}.png")
    return root


FAST = ("-s", "naive", "--epochs", "1", "--report", "none", "--no-progress")


def matrix_of(out: Path) -> list[list[float]]:
    (result,) = json.loads((out / "results.json").read_text())["results"]
    return result["accuracy_matrix"]


def bad_input(cli, tmp_path: Path, *args: str) -> str:
    code, out, err = cli("run", *args, "--out", str(tmp_path / "bad"), *FAST)
    assert code == 2, out + err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "bad" / "results.json").exists()
    return err
