"""Per-sample Fisher: `torch.func` (vmap over grad, in chunks) against a loop of single-sample backward passes.

The Fisher measured is the library's own (`EWC.fisher_information`, empirical, through
`anchors.per_sample_sum`), on task 0's training set of two workloads, each a benchmark with the
library's default model for it:

- ``split-digits:mlp``: the issue's MLP 64-256-256-10 (85k parameters, 252 samples). Its per-sample
  gradients are large next to the compute that makes them (one 256x256 outer product per sample), so
  on a CPU the vmap path is bound by writing and reading them in memory.
- ``split-mnist1d:cnn1d``: the 1-D CNN (8k parameters, 1400 samples), where compute dominates.

Every chunk size must agree with the loop to 1e-5 (normwise relative, per parameter tensor). The loop
and each chunk size are alternated in one process so machine drift hits all alike; the median of the
per-round time ratios is printed, for wall time and for the process's CPU time (steadier on a shared
machine). Peak memory comes from the CUDA allocator on a GPU; on a CPU, from the peak resident set of
a fresh process per method (a warm process would reuse memory it already holds).

    python bench/fisher.py [--repeats 7] [--device auto] [--threads 1] [--chunks 16,64,256]
                           [--workloads split-digits:mlp,split-mnist1d:cnn1d]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lifelong import build_benchmark, build_model
from lifelong.core.learner import resolve_device
from lifelong.strategies import EWC

Fisher = dict[str, torch.Tensor]
WORKLOADS = "split-digits:mlp,split-mnist1d:cnn1d"


def setup(device: torch.device, workload: str) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    benchmark, model = workload.split(":")
    stream = build_benchmark(benchmark, seed=0)
    x, y = (t.to(device) for t in stream[0].train.tensors)  # type: ignore[attr-defined]
    torch.manual_seed(0)
    return build_model(model, stream.input_shape, stream.num_classes).to(device).eval(), x, y


def loop_fisher(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Fisher:
    """What one writes without torch.func: a backward pass per sample, squared gradients summed."""
    total = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for i in range(len(y)):
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x[i : i + 1]), y[i : i + 1]).backward()
        for n, p in model.named_parameters():
            total[n] += p.grad**2  # type: ignore[operator]
    return {n: v / len(y) for n, v in total.items()}


def func_fisher(model: nn.Module, x: torch.Tensor, y: torch.Tensor, chunk_size: int) -> Fisher:
    return EWC(model, chunk_size=chunk_size).fisher_information([(x, y)])


def method(model: nn.Module, x: torch.Tensor, y: torch.Tensor, chunk: int) -> Callable[[], Fisher]:
    """chunk 0 is the loop."""
    return (lambda: loop_fisher(model, x, y)) if chunk == 0 else (lambda: func_fisher(model, x, y, chunk))


def relative_error(got: Fisher, want: Fisher) -> float:
    """Largest ||got - want|| / ||want|| over the parameter tensors."""
    return max(float((got[n] - w).norm() / w.norm()) for n, w in want.items())


def timed(device: torch.device, fn: Callable[[], object]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process)."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - wall, time.process_time() - cpu


def cuda_peak(fn: Callable[[], object]) -> float:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def rss_peak_child(workload: str, chunk: int, threads: int) -> float:
    """Run one method in a fresh process; MiB its peak resident set rose above its start."""
    command = [sys.executable, __file__, "--child", str(chunk), "--threads", str(threads)]
    command += ["--device", "cpu", "--workloads", workload]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    try:
        return float(result.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return float("nan")


def child(workload: str, chunk: int) -> None:
    """The fresh process: warm up on two samples, reset the peak resident set, measure one method."""
    status = Path("/proc/self/status")

    def mib(field: str) -> float:
        line = next(line for line in status.read_text().splitlines() if line.startswith(field))
        return float(line.split()[1]) / 1024

    model, x, y = setup(torch.device("cpu"), workload)
    method(model, x[:2], y[:2], chunk)()  # lazy initialisation belongs to the baseline
    try:
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := current resident set
    except OSError:
        print("nan")
        return
    base = mib("VmRSS:")
    method(model, x, y, chunk)()
    print(f"{mib('VmHWM:') - base:.1f}")


def measure(workload: str, device: torch.device, chunks: list[int], repeats: int, threads: int) -> None:
    model, x, y = setup(device, workload)
    params = sum(p.numel() for p in model.parameters())
    where = (
        f"{torch.get_num_threads()} CPU thread(s)" if device.type == "cpu" else torch.cuda.get_device_name()
    )
    print(f"\n{workload} task 0: {len(y)} samples; {params:,} parameters; {where}")

    reference = loop_fisher(model, x, y)
    errors = {c: relative_error(func_fisher(model, x, y, c), reference) for c in chunks}
    for chunk, err in errors.items():
        assert err <= 1e-5, f"torch.func Fisher (chunk {chunk}) differs from the loop by {err:.2e} relative"

    seconds: dict[int, list[tuple[float, float]]] = {c: [] for c in [0, *chunks]}
    for _ in range(repeats):  # alternate, so drift on a shared machine hits every method alike
        for c in seconds:
            seconds[c].append(timed(device, method(model, x, y, c)))

    def speedup(c: int, clock: int) -> float:
        return statistics.median(lo[clock] / s[clock] for lo, s in zip(seconds[0], seconds[c], strict=True))

    if device.type == "cuda":
        peaks = {c: cuda_peak(method(model, x, y, c)) for c in seconds}
    else:
        peaks = {c: rss_peak_child(workload, c, threads) for c in seconds}

    print(f"{'method':<32}{'median s':>10}{'speedup':>9}{'(cpu)':>7}{'rel err':>10}{'peak MiB':>10}")
    loop_s = statistics.median(wall for wall, _ in seconds[0])
    print(
        f"{'loop of single-sample backward':<32}{loop_s:>10.4f}{'1.00x':>9}{'':>7}{'ref':>10}{peaks[0]:>10.1f}"
    )
    for c in chunks:
        print(
            f"{f'torch.func vmap(grad), chunk {c}':<32}{statistics.median(w for w, _ in seconds[c]):>10.4f}"
            f"{f'{speedup(c, 0):.2f}x':>9}{f'{speedup(c, 1):.2f}x':>7}{errors[c]:>10.1e}{peaks[c]:>10.1f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--chunks", default="16,64,256")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (0: torch's default)")
    parser.add_argument("--workloads", default=WORKLOADS, help="benchmark:model pairs, comma-separated")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads > 0:  # one thread for both: a fair pair, and stable on a machine shared with others
        torch.set_num_threads(args.threads)
    if args.child is not None:
        child(args.workloads, args.child)
        return
    device = resolve_device(args.device)
    chunks = [int(c) for c in args.chunks.split(",")]
    print(
        f"torch {torch.__version__}; empirical Fisher of the model on task 0, median of {args.repeats} rounds"
    )
    for workload in args.workloads.split(","):
        measure(workload, device, chunks, args.repeats, args.threads)
    how = (
        "CUDA allocator peak above the start"
        if device.type == "cuda"
        else "CPU peak resident set above the start, one fresh process per method"
    )
    print(
        f"\nspeedup: loop time / torch.func time, median of the alternated rounds, wall clock and (cpu) "
        f"process CPU time (target >= 5x); rel err: normwise, asserted <= 1e-5; memory: {how}"
    )


if __name__ == "__main__":
    main()
