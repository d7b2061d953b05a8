"""Whole process: `lifelong run` with one strategy against a bare script doing the same work.

Both processes load sklearn's digits, split them into 5 two-class tasks (stratified, test share 0.3),
train an MLP 64-256-256-10 on each task in turn (5 epochs, batch 32, SGD lr 0.05, one thread),
evaluate every task after each one and write the accuracy matrix as JSON. The bare script is this
file run with ``--bare OUT``: plain sklearn and torch, nothing of lifelong. `lifelong run` does the
same plus what a run is for: the run folder, a checkpoint per task, metrics, the printed tables and,
unless ``--report none``, the report.

Each side runs under /usr/bin/time (wall seconds, CPU seconds: user + system, peak RSS); the rounds
alternate which side goes first, and the medians are printed with the ratios of the medians (CPU time
is the steadier on a machine shared with other jobs).

    python bench/process.py [--rounds 5] [--strategy naive] [--report none,md,html]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

EPOCHS, BATCH, LR, TASKS, TEST_SIZE, SEED = 5, 32, 0.05, 5, 0.3, 0


def bare(out: Path) -> None:
    """The script a user writes by hand: load, split, train, evaluate, write JSON."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from torch import nn

    torch.set_num_threads(1)
    torch.manual_seed(SEED)
    digits = load_digits()
    x, y = (digits.data / 16.0).astype(np.float32), digits.target.astype(np.int64)
    tasks = []
    for group in np.array_split(np.arange(10), TASKS):
        keep = np.isin(y, group)
        parts = train_test_split(x[keep], y[keep], test_size=TEST_SIZE, random_state=SEED, stratify=y[keep])
        tasks.append([torch.from_numpy(p) for p in parts])  # x_train, x_test, y_train, y_test
    model = nn.Sequential(
        nn.Flatten(), nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10)
    )
    generator = torch.Generator().manual_seed(SEED)

    def evaluate() -> list[float]:
        model.eval()
        with torch.inference_mode():
            row = [float((model(xt).argmax(1) == yt).float().mean()) for _, xt, _, yt in tasks]
        model.train()
        return row

    matrix = []
    for x_train, _, y_train, _ in tasks:
        optimizer = torch.optim.SGD(model.parameters(), lr=LR)
        for _ in range(EPOCHS):
            order = torch.randperm(len(y_train), generator=generator)
            for first in range(0, len(y_train), BATCH):
                idx = order[first : first + BATCH]
                loss = F.cross_entropy(model(x_train[idx]), y_train[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        matrix.append(evaluate())
    out.write_text(json.dumps({"matrix": matrix}))


def timed(command: list[str]) -> tuple[float, float, float]:
    """(wall seconds, CPU seconds, peak RSS in MB) of one process, from /usr/bin/time."""
    with tempfile.NamedTemporaryFile("r", suffix=".time") as report:
        subprocess.run(
            ["/usr/bin/time", "-f", "%e %U %S %M", "-o", report.name, *command],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        wall, user, system, rss_kb = report.read().split()[-4:]
    return float(wall), float(user) + float(system), float(rss_kb) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bare", type=Path, help=argparse.SUPPRESS)  # the child: run the bare script
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--strategy", default="naive")
    parser.add_argument("--report", default="none,html", help="--report values of lifelong run to time")
    args = parser.parse_args()
    if args.bare:
        bare(args.bare)
        return
    work = Path(tempfile.mkdtemp(prefix="process-bench-"))
    run = [sys.executable, "-m", "lifelong", "run", "-s", args.strategy, "--model", "mlp"]
    run += ["--epochs", str(EPOCHS), "--batch-size", str(BATCH), "--lr", str(LR), "--optimizer", "sgd"]
    run += ["--seed", str(SEED), "--threads", "1", "--no-progress", "--overwrite"]
    sides = {"bare": [sys.executable, __file__, "--bare", str(work / "bare.json")]}
    for report in args.report.split(","):
        sides[f"lifelong --report {report}"] = [*run, "--report", report, "--out", str(work / report)]
    times: dict[str, list[tuple[float, float, float]]] = {name: [] for name in sides}
    for round_ in range(args.rounds + 1):  # round 0 warms the file cache and is not counted
        names = list(sides) if round_ % 2 else list(sides)[::-1]
        for name in names:
            measured = timed(sides[name])
            if round_:
                times[name].append(measured)
    bare_wall, bare_cpu = (statistics.median(t[k] for t in times["bare"]) for k in (0, 1))
    print(f"{args.rounds} alternating rounds, medians; strategy {args.strategy}, one thread")
    print(f"{'process':<26}{'wall s':>8}{'/ bare':>8}{'CPU s':>8}{'/ bare':>8}{'peak MB':>9}")
    for name, measured in times.items():
        wall, cpu, rss = (statistics.median(t[k] for t in measured) for k in (0, 1, 2))
        print(f"{name:<26}{wall:8.2f}{wall / bare_wall:8.2f}{cpu:8.2f}{cpu / bare_cpu:8.2f}{rss:9.0f}")
    matrix = json.loads((work / "bare.json").read_text())["matrix"]
    print(f"bare accuracy after the last task: {statistics.mean(matrix[-1]):.3f}")


if __name__ == "__main__":
    main()
