"""The files of MNIST, Fashion-MNIST and CIFAR-10/100, read in the layouts people already have.

- MNIST and Fashion-MNIST: the four IDX files (``train-images-idx3-ubyte`` ...), raw or ``.gz``, in
  ``ROOT``, or in ``ROOT/MNIST/raw`` and ``ROOT/FashionMNIST/raw`` as torchvision downloads them.
- CIFAR: the binary version (``cifar-10-batches-bin``, ``cifar-100-binary``), or the Python version
  torchvision downloads (``cifar-10-batches-py``, ``cifar-100-python``). Its batches are pickles, read
  through an unpickler that admits only numpy arrays and plain containers: no code runs.

Every reader returns ``(x_train, y_train, x_test, y_test)``, images as uint8 ``[N, C, H, W]``. Nothing
is downloaded unless the caller allows it, and then through torchvision's own downloaders.
"""

from __future__ import annotations

import gzip
import io
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lifelong.errors import LifelongError

Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
CIFAR_SIDE, CIFAR_PIXELS = 32, 3 * 32 * 32


@dataclass(frozen=True)
class Layout:
    """One way a dataset's files may lie under the root: a folder and the files it must hold."""

    folder: str
    files: tuple[str, ...]


_IDX = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
LAYOUTS: dict[str, tuple[Layout, ...]] = {
    "mnist": (Layout("MNIST/raw", _IDX), Layout(".", _IDX)),
    "fashion-mnist": (Layout("FashionMNIST/raw", _IDX), Layout(".", _IDX)),
    "cifar10": (
        Layout(
            "cifar-10-batches-bin", (*tuple(f"data_batch_{i}.bin" for i in range(1, 6)), "test_batch.bin")
        ),
        Layout("cifar-10-batches-py", (*tuple(f"data_batch_{i}" for i in range(1, 6)), "test_batch")),
    ),
    "cifar100": (
        Layout("cifar-100-binary", ("train.bin", "test.bin")),
        Layout("cifar-100-python", ("train", "test")),
    ),
}
_TORCHVISION_CLASS = {
    "mnist": "MNIST",
    "fashion-mnist": "FashionMNIST",
    "cifar10": "CIFAR10",
    "cifar100": "CIFAR100",
}


def read_dataset(kind: str, root: Path, download: bool = False) -> Arrays:
    """The train and test arrays of ``kind`` (a key of `LAYOUTS`) found under ``root``."""
    found = _find(kind, root)
    if found is None and download:
        _download(kind, root)
        found = _find(kind, root)
    if found is None:
        raise LifelongError(_missing_message(kind, root))
    layout, paths = found
    if kind in ("mnist", "fashion-mnist"):
        return _mnist_arrays(paths)
    binary = layout.folder.endswith(("-bin", "-binary"))
    read = _read_cifar_binary if binary else _read_cifar_pickle
    fine = kind == "cifar100"
    train = [read(p, fine) for p in paths[:-1]]
    x_test, y_test = read(paths[-1], fine)
    return np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train]), x_test, y_test


def _mnist_arrays(paths: list[Path]) -> Arrays:
    """The four IDX files as images ``[N, 1, 28, 28]`` and labels, each pair checked against the other."""
    arrays: list[np.ndarray] = []
    for images_path, labels_path in ((paths[0], paths[1]), (paths[2], paths[3])):
        images, labels = read_idx(images_path), read_idx(labels_path)
        if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
            raise LifelongError(
                f"'{images_path}' should hold 28x28 uint8 images, but holds {images.dtype} of shape "
                f"{list(images.shape)}; replace it with the original"
            )
        if labels.ndim != 1 or len(labels) != len(images):
            raise LifelongError(
                f"'{labels_path}' should hold one label for each of the {len(images)} images of "
                f"'{images_path.name}', but holds shape {list(labels.shape)}; replace the pair with the originals"
            )
        arrays += [images[:, None], labels.astype(np.int64)]
    return arrays[0], arrays[1], arrays[2], arrays[3]


def _find(kind: str, root: Path) -> tuple[Layout, list[Path]] | None:
    for layout in LAYOUTS[kind]:
        paths = [_existing(root / layout.folder / name) for name in layout.files]
        if all(p is not None for p in paths):
            return layout, [p for p in paths if p is not None]
    return None


def _existing(path: Path) -> Path | None:
    """The file or its ``.gz`` twin, whichever exists."""
    for candidate in (path, path.with_name(path.name + ".gz")):
        if candidate.is_file():
            return candidate
    return None


def _missing_message(kind: str, root: Path) -> str:
    """Which files are missing, from the layout most nearly complete, and the two ways to fix it."""
    best = max(
        LAYOUTS[kind], key=lambda lay: sum(_existing(root / lay.folder / f) is not None for f in lay.files)
    )
    folder = (root / best.folder).resolve() if best.folder != "." else root.resolve()
    missing = [f for f in best.files if _existing(root / best.folder / f) is None]
    return (
        f"{kind} files not found: {', '.join(missing)} missing in '{folder}'; put them there "
        "(or point --data-root at the folder that holds them), or add --download"
    )


def _download(kind: str, root: Path) -> None:
    try:
        import torchvision.datasets as tv_datasets
    except ImportError:
        raise LifelongError(
            f"--download fetches {kind} through torchvision, which is not installed; "
            "pip install 'lifelong[vision]', or put the files under --data-root yourself"
        ) from None
    dataset = getattr(tv_datasets, _TORCHVISION_CLASS[kind])
    try:
        for train in (True, False):
            dataset(str(root), train=train, download=True)
    except (OSError, RuntimeError) as err:
        raise LifelongError(f"downloading {kind} into '{root}' failed ({err}); check the network") from None


# ---- IDX (MNIST) ----------------------------------------------------------------------------------

_IDX_TYPES: dict[int, str] = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (the MNIST format): 2 zero bytes, a type byte, a rank byte, big-endian sizes, data."""
    data = _read_bytes(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_TYPES:
        raise LifelongError(f"'{path}' is not an IDX file (bad magic number); replace it with the original")
    rank = data[3]
    header = 4 + 4 * rank
    shape = tuple(int(v) for v in np.frombuffer(data[4:header], dtype=">u4")) if len(data) >= header else ()
    dtype = np.dtype(_IDX_TYPES[data[2]])
    if len(shape) != rank or len(data) - header != int(np.prod(shape)) * dtype.itemsize:
        raise LifelongError(f"'{path}' is truncated or damaged (its size does not match its header)")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as handle:
                return handle.read()
        return path.read_bytes()
    except (OSError, EOFError) as err:
        raise LifelongError(f"'{path}' cannot be read ({err}); replace it with the original") from None


# ---- CIFAR ----------------------------------------------------------------------------------------


def _read_cifar_binary(path: Path, fine: bool) -> tuple[np.ndarray, np.ndarray]:
    """Records of label byte(s) then 3072 pixel bytes (CIFAR-100: coarse label, fine label, pixels)."""
    labels = 2 if fine else 1
    raw = np.frombuffer(_read_bytes(path), dtype=np.uint8)
    record = labels + CIFAR_PIXELS
    if raw.size == 0 or raw.size % record:
        raise LifelongError(
            f"'{path}' is not a CIFAR binary batch (its size is not a whole number of records)"
        )
    rows = raw.reshape(-1, record)
    return rows[:, labels:].reshape(-1, 3, CIFAR_SIDE, CIFAR_SIDE), rows[:, labels - 1].astype(np.int64)


class _ArraysOnly(pickle.Unpickler):
    """Admits the few globals a pickled numpy array needs; anything else (code) is refused."""

    # _codecs.encode: how Python 3's protocol 2 writes bytes (a codec call, no code of the file's).
    ALLOWED = frozenset(
        {
            ("_codecs", "encode"),
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
        }
    )

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed")
        return super().find_class(module, name)


def _read_cifar_pickle(path: Path, fine: bool) -> tuple[np.ndarray, np.ndarray]:
    problem = f"'{path}' is not a CIFAR Python batch"
    try:
        batch = _ArraysOnly(io.BytesIO(_read_bytes(path)), encoding="bytes").load()
        if not isinstance(batch, dict):
            raise TypeError(f"it holds a {type(batch).__name__}, not a dict")
        data = batch[b"data"]
        labels = np.asarray(batch[b"fine_labels" if fine else b"labels"], dtype=np.int64)
    # ImportError: a pickle of a newer numpy than this one names modules this one lacks.
    except (
        pickle.UnpicklingError,
        EOFError,
        LookupError,
        TypeError,
        ValueError,
        AttributeError,
        OverflowError,
        ImportError,
    ) as err:
        raise LifelongError(f"{problem} ({err}); replace it, or use the binary version") from None
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8:
        raise LifelongError(f"{problem} (its data are not uint8 pixels); replace it with the original")
    if data.ndim != 2 or data.shape[1] != CIFAR_PIXELS or len(data) != len(labels):
        raise LifelongError(f"{problem} (its arrays have the wrong shape); replace it with the original")
    return data.reshape(-1, 3, CIFAR_SIDE, CIFAR_SIDE), labels
