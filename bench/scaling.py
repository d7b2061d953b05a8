"""Wall time of one process against N processes (gloo on CPU, NCCL on GPUs) on the same run.

Workload: split-mnist1d (10,000 generated samples, 5 tasks), cnn1d with 128 channels, replay, global
batch 256, 3 epochs: big enough per step that splitting a batch pays for the gradient all-reduce.
Each configuration is a real `lifelong run` (separate processes, as a user would launch it); runs
alternate so machine drift hits each alike, and the median of the per-round ratios is printed.

    python bench/scaling.py [--processes 2] [--rounds 3] [--device cpu] [--precision no]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RUN = [
    "--benchmark",
    "split-mnist1d",
    "--model",
    "cnn1d:channels=128",
    "--strategy",
    "replay",
    "--batch-size",
    "256",
    "--epochs",
    "3",
    "--no-progress",
]


def run(processes: int, threads: int, device: str, precision: str, out: Path) -> tuple[float, float, float]:
    """(wall seconds, train seconds, final average accuracy) of one `lifelong run`."""
    command = [sys.executable, "-m", "lifelong", "run", *RUN, "--device", device, "--precision", precision]
    command += ["--out", str(out), "--overwrite"]
    if processes > 1:
        command += ["--processes", str(processes)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, env=env)
    wall = time.perf_counter() - started
    result = json.loads((out / "results.json").read_text())["results"][0]
    return wall, result["train_seconds"], result["metrics"]["average_accuracy"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="no")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    # One process may use every core, or only one process's share of them (the same resources per
    # process: the split's own efficiency); each of N processes gets its share.
    share = max(1, cores // args.processes)
    many = f"{args.processes} processes"
    configs = {"1 process": (1, cores), "1 process, share": (1, share), many: (args.processes, share)}
    figures: dict[str, list[tuple[float, float, float]]] = {name: [] for name in configs}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):
            for name, (processes, threads) in configs.items():
                figures[name].append(run(processes, threads, args.device, args.precision, Path(tmp) / "r"))
    print(f"machine: {cores} cores, device {args.device}, precision {args.precision}")
    print(f"{'configuration':<18} {'threads':>7} {'wall s':>8} {'train s':>8} {'avg acc':>8}")
    for name, (_, threads) in configs.items():
        walls, trains, accs = zip(*figures[name], strict=True)
        print(
            f"{name:<18} {threads:>7} {statistics.median(walls):>8.1f} {statistics.median(trains):>8.1f} "
            f"{statistics.median(accs):>8.3f}"
        )
    for single in ("1 process", "1 process, share"):
        for column, label in ((0, "wall"), (1, "train")):
            ratios = [a[column] / b[column] for a, b in zip(figures[single], figures[many], strict=True)]
            print(
                f"speed-up, {label} time of '{single}' / '{many}': median {statistics.median(ratios):.2f} "
                f"(min {min(ratios):.2f}, max {max(ratios):.2f})"
            )


if __name__ == "__main__":
    main()
