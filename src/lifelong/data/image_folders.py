"""A stream from folders of images: ``DIR/CLASS/*.png`` cut into tasks by ``classes_per_task``, or
``DIR/TASK/CLASS/*.png``, one folder per task (folders in natural order, ``task2`` before ``task10``).

Every image is decoded once, when the stream is built, into one uint8 tensor ``[N, C, H, W]``: epochs
never decode again, and batches are slices of it (the Learner's fast path). Grayscale folders stay one
channel; any colour image makes the stream RGB. The model normalises with the first task's channel
statistics, the only data a learner has seen before it starts.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from rich.progress import Progress

from lifelong.core.memory import check_fits
from lifelong.core.stream import Scenario, Stream, Task, check_split_options, infer_scenario, split_train_test
from lifelong.data.folders import data_files, natural_key
from lifelong.errors import LifelongError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
_GRAY_MODES = ("1", "L", "LA")
_DEEP_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")


def is_image_folder(path: Path) -> bool:
    """Whether ``path`` is a folder of class folders of images, or of task folders of them."""
    if not path.is_dir():
        return False
    for child in _folders(path):
        if _images(child) or any(_images(grandchild) for grandchild in _folders(child)):
            return True
    return False


def load_image_folders(
    root: Path,
    *,
    classes_per_task: int | None = None,
    scenario: Scenario | None = None,
    test_size: float = 0.3,
    seed: int = 0,
    image_size: int | None = None,
    progress: Progress | None = None,
) -> Stream:
    """The stream in ``root``; class folders with the same name in two tasks are the same class.
    ``progress`` shows the decoding (one bar, gone when done)."""
    check_split_options(scenario, classes_per_task)
    if image_size is not None and image_size < 1:
        raise LifelongError(f"image size must be at least 1 pixel, got {image_size}")
    layout = _layout(root, classes_per_task)
    class_names = class_order(name for classes in layout.values() for name in classes)
    index = {name: i for i, name in enumerate(class_names)}
    files = [
        (path, index[name], t)
        for t, classes in enumerate(layout.values())
        for name, folder in classes.items()
        for path in _images(folder)
    ]
    _check_room(files[0][0], len(files), image_size)
    bar = progress.add_task("decoding images", total=len(files)) if progress is not None else None
    pixels = []
    for path, _, _ in files:
        pixels.append(decode_image(path, image_size))
        if progress is not None and bar is not None:
            progress.advance(bar)
    if progress is not None and bar is not None:
        progress.remove_task(bar)
    labels, task_of = [label for _, label, _ in files], [t for _, _, t in files]
    x = stack_images(pixels)
    y, owner = np.asarray(labels, dtype=np.int64), np.asarray(task_of)
    tasks = []
    for t, (task_name, classes) in enumerate(layout.items()):
        keep = owner == t
        train, test = split_train_test(x[keep], y[keep], test_size, seed, task_name)
        tasks.append(Task(task_name, train, test, sorted(index[name] for name in classes)))
    stats = channel_stats(tasks[0].train.tensors[0])  # type: ignore[attr-defined]
    return Stream(
        root.resolve().name,
        tasks,
        infer_scenario(tasks, scenario, root),
        len(class_names),
        tuple(x.shape[1:]),
        class_names,
        "cnn",
        normalize=stats,
        augmentable=True,
        details={"tasks": {task.name: [class_names[c] for c in task.classes] for task in tasks}},
    )


def class_order(names: Iterable[str]) -> list[str]:
    """Natural order (``class2`` before ``class10``), ties such as ``Cat``/``cat`` broken by the name
    itself: one order whatever order the names come in (a set's follows the hash seed)."""
    return sorted(set(names), key=lambda name: (natural_key(Path(name)), name))


def channel_stats(pixels: torch.Tensor, chunk_pixels: int = 2**22) -> tuple[list[float], list[float]]:
    """Per-channel mean and deviation of uint8 images, a few million pixels at a time (a float copy of
    the whole set would be 8x its size)."""
    total = torch.zeros(pixels.shape[1], dtype=torch.float64)
    squares = torch.zeros_like(total)
    chunk = max(1, chunk_pixels // max(1, pixels[0].numel()))
    for part in pixels.split(chunk):
        values = part.double().div_(255).transpose(0, 1).reshape(pixels.shape[1], -1)
        total += values.sum(1)
        squares += values.square().sum(1)
    count = pixels.numel() / pixels.shape[1]
    mean = total / count
    std = (squares / count - mean.square()).clamp_min(1e-6).sqrt()
    return mean.tolist(), std.tolist()


def _folders(path: Path) -> list[Path]:
    return sorted((p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")), key=natural_key)


def _images(folder: Path) -> list[Path]:
    return data_files(folder, IMAGE_SUFFIXES)


def _layout(root: Path, classes_per_task: int | None) -> dict[str, dict[str, Path]]:
    """Task name -> class name -> its folder, from either layout."""
    folders = _folders(root)
    holds_images = [bool(_images(f)) for f in folders]
    if all(holds_images):  # DIR/CLASS/*.png
        if classes_per_task is None:
            raise LifelongError(
                f"'{root}' holds class folders; cut them into tasks with --classes-per-task N, "
                "or put them in one folder per task"
            )
        groups = [folders[i : i + classes_per_task] for i in range(0, len(folders), classes_per_task)]
        return {
            f"task{i}:" + ",".join(f.name for f in group): {f.name: f for f in group}
            for i, group in enumerate(groups)
        }
    if any(holds_images):
        raise LifelongError(_no_images(folders[holds_images.index(False)]))
    if classes_per_task is not None:
        raise LifelongError(f"'{root}' holds one folder per task already; drop --classes-per-task")
    layout = {}
    for task in folders:
        classes = _folders(task)
        if not classes:
            raise LifelongError(f"task folder '{task}' holds no class folders; add them or remove it")
        for folder in classes:
            if not _images(folder):
                raise LifelongError(_no_images(folder))
        layout[task.name] = {folder.name: folder for folder in classes}
    return layout


def _check_room(first: Path, count: int, size: int | None) -> None:
    """The decoded images must fit in memory: judged by the first one (all must have its size), or by
    ``size`` before anything is decoded (a resize to it allocates at once)."""
    if size is not None:
        check_fits(
            3 * size * size * count, f"{count:,} images of {size}x{size}", "choose a smaller --image-size"
        )
        return
    pixels = decode_image(first, None)
    height, width = pixels.shape[1:]
    fix = "pass --image-size N to shrink them"
    check_fits(3 * height * width * count, f"{count:,} images of {width}x{height}", fix)


def _no_images(folder: Path) -> str:
    return f"class folder '{folder}' holds no images ({', '.join(IMAGE_SUFFIXES)}); add some or remove it"


def decode_image(path: Path | BinaryIO, size: int | None, name: object = None) -> np.ndarray:
    """One image (a file, or its bytes) as uint8 ``[C, H, W]``: one channel for grayscale, three for
    anything in colour. ``name`` says where it came from in an error (default: the path)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            if image.mode in _DEEP_MODES:  # 16-bit gray: scale to 8 bits, where convert("L") would clip
                deep = np.asarray(image, dtype=np.float64)
                sixteen = image.mode.startswith("I;16") or deep.max() > 255
                eight = np.clip(np.round(deep / 257 if sixteen else deep), 0, 255)
                image = Image.fromarray(eight.astype(np.uint8))
            image = image.convert("L" if image.mode in _GRAY_MODES else "RGB")
            if size is not None and image.size != (size, size):
                image = image.resize((size, size), Image.Resampling.BILINEAR)
            array = np.asarray(image, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as err:
        where = f"'{path}'" if name is None else str(name)
        raise LifelongError(f"{where} is not a readable image ({err}); remove or replace it") from None
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def stack_images(pixels: list[np.ndarray]) -> np.ndarray:
    """One array of every image; grayscale ones become RGB where the stream has colour."""
    channels = max(p.shape[0] for p in pixels)
    sizes = {p.shape[1:] for p in pixels}
    if len(sizes) > 1:
        shown = " and ".join(f"{w}x{h}" for h, w in sorted(sizes)[:2])
        raise LifelongError(
            f"the images differ in size ({shown}, ...); pass --image-size N to resize them all"
        )
    return np.stack([np.repeat(p, channels, axis=0) if p.shape[0] < channels else p for p in pixels])
