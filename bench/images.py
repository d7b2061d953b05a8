"""Image folders: lifelong's decoded-once stream against a bare DataLoader loop over the same files.

The workload: ``--images`` PNG files (32x32 RGB, 10 class folders) written to a temporary folder,
trained as one task for ``--epochs`` epochs of batch 32 with a small CNN, SGD. Two measures:

- **data only**: samples/s of iterating the training batches of one epoch, with no model: the bare
  side opens and decodes every PNG each epoch (PIL, as torchvision's ``ImageFolder`` does; through
  ``ImageFolder`` itself where torchvision is installed), lifelong slices its uint8 tensor.
- **training**: samples/s of epochs 2 and later, the model included: ``(t(E) - t(1)) / (E - 1)`` for
  each side (the first epoch and the evaluation cancel out; lifelong's decoding happens once, before
  the first epoch, and is printed on its own).

The bare side also runs with DataLoader workers (``--workers``), the usual cure for decoding per
epoch. Everything runs in one process, sides alternating; medians of ``--repeats``. One thread
unless ``--threads`` says otherwise.

    python bench/images.py [--images 2000] [--epochs 3] [--repeats 5] [--workers 2]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from lifelong import Learner, build_strategies
from lifelong.data.image_folders import load_image_folders
from lifelong.models import build_model

BATCH, LR, SIDE = 32, 0.05, 32
MEAN, STD = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]


def write_pngs(root: Path, images: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(images):
        label = i % 10
        pixels = rng.integers(0, 120, (SIDE, SIDE, 3), dtype=np.uint8)
        pixels[3 * label : 3 * label + 3] = 240
        folder = root / f"class{label}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(folder / f"{i}.png")


class PngFolder(Dataset):
    """What a bare loop does without torchvision: open and decode each file when it is asked for."""

    def __init__(self, root: Path) -> None:
        classes = sorted(p.name for p in root.iterdir())
        self.items = [(p, c) for c, name in enumerate(classes) for p in sorted((root / name).glob("*.png"))]
        self.mean, self.std = torch.tensor(MEAN).view(3, 1, 1), torch.tensor(STD).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        path, label = self.items[i]
        with Image.open(path) as image:
            x = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.uint8).copy()).permute(2, 0, 1)
        return (x.float() / 255 - self.mean) / self.std, label


def bare_dataset(root: Path) -> tuple[Dataset, str]:
    try:
        from torchvision import datasets, transforms

        pipeline = transforms.Compose([transforms.ToTensor(), transforms.Normalize(MEAN, STD)])
        return datasets.ImageFolder(str(root), transform=pipeline), "torchvision ImageFolder"
    except ImportError:
        return PngFolder(root), "PIL Dataset (torchvision not installed)"


def cnn() -> nn.Module:
    return build_model("cnn:channels=16,hidden=64", (3, SIDE, SIDE), 10, seed=0)


def bare_epochs(dataset: Dataset, epochs: int, workers: int) -> float:
    torch.manual_seed(0)
    model = cnn()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    loader = DataLoader(
        dataset, batch_size=BATCH, shuffle=True, num_workers=workers, persistent_workers=workers > 0
    )
    started = time.perf_counter()
    for _ in range(epochs):
        for x, y in loader:
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
    return time.perf_counter() - started


def lifelong_epochs(root: Path, epochs: int) -> tuple[float, float]:
    """(seconds to decode the folder, seconds of training)."""
    started = time.perf_counter()
    stream = load_image_folders(root, classes_per_task=10, test_size=0.05)
    decoded = time.perf_counter()
    model = build_model(
        "cnn:channels=16,hidden=64", stream.input_shape, 10, seed=0, normalize=stream.normalize
    )
    Learner(model, build_strategies("naive"), epochs=epochs, batch_size=BATCH, lr=LR, optimizer="sgd").fit(
        stream
    )
    return decoded - started, time.perf_counter() - decoded


def data_only(batches: Callable[[], object]) -> float:
    started = time.perf_counter()
    n = sum(len(y) for _, y in batches())  # type: ignore[attr-defined]
    return n / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_pngs(root, args.images)
        dataset, kind = bare_dataset(root)
        stream = load_image_folders(root, classes_per_task=10, test_size=0.05)
        learner = Learner(cnn(), build_strategies("naive"), batch_size=BATCH)
        task = stream[0]
        n_train = len(task.train)  # type: ignore[arg-type]
        rows: dict[str, list[float]] = {
            k: [] for k in ("bare data", "ours data", "bare", "bare+w", "ours", "decode")
        }
        for _ in range(args.repeats):
            rows["bare data"].append(data_only(lambda: DataLoader(dataset, batch_size=BATCH, shuffle=True)))
            rows["ours data"].append(data_only(lambda: ((b.x, b.y) for b in learner.batches(task.train))))
            per_epoch = {}
            for side, run in (
                ("bare", lambda e: bare_epochs(dataset, e, 0)),
                ("bare+w", lambda e: bare_epochs(dataset, e, args.workers)),
                ("ours", lambda e: lifelong_epochs(root, e)[1]),
            ):
                per_epoch[side] = (run(args.epochs) - run(1)) / (args.epochs - 1)
            for side in ("bare", "bare+w"):
                rows[side].append(len(dataset) / per_epoch[side])  # type: ignore[arg-type]
            rows["ours"].append(n_train / per_epoch["ours"])
            rows["decode"].append(lifelong_epochs(root, 1)[0])
    med = {k: statistics.median(v) for k, v in rows.items()}
    print(
        f"{args.images} PNG files 32x32 RGB, bare side: {kind}; {args.threads} thread(s); medians of {args.repeats}"
    )
    print(
        f"data only, samples/s:  bare {med['bare data']:,.0f}   lifelong {med['ours data']:,.0f}   "
        f"ratio {med['ours data'] / med['bare data']:.1f}x"
    )
    print(
        f"training (epochs >= 2), samples/s:  bare {med['bare']:,.0f}   bare + {args.workers} workers "
        f"{med['bare+w']:,.0f}   lifelong {med['ours']:,.0f}"
    )
    print(
        f"  lifelong / bare {med['ours'] / med['bare']:.2f}x   lifelong / bare+workers {med['ours'] / med['bare+w']:.2f}x"
    )
    print(
        f"lifelong decodes the folder once: {med['decode']:.2f} s ({args.images / med['decode']:,.0f} images/s)"
    )


if __name__ == "__main__":
    main()
