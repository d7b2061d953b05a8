"""Per-sample Fisher: layer hooks (the default) and `torch.func` vmap against a loop of single-sample backward passes.

The Fisher measured is the library's own (`EWC.fisher_information`, empirical), on task 0's training
set of two workloads, each a benchmark with the library's default model for it:

- ``split-digits:mlp``: the issue's MLP 64-256-256-10 (85k parameters, 252 samples). Its per-sample
  gradients are large next to the compute that makes them (one 256x256 outer product per sample).
- ``split-mnist1d:cnn1d``: the 1-D CNN (8k parameters, 1400 samples), where compute dominates.
- ``tiny-llama`` (with transformers installed): the per-sequence Fisher of a 2-layer Llama, every
  weight (one gradient per sequence of its mean next-token NLL): `lifelong.llm.fisher`, whose
  ``hooks:C`` passes take C sequences (layer hooks, the other weights replayed module by module).
- ``smollm2-135m`` (with the ``smollm2`` extra; not in the default list, as its loop takes seconds a
  round): the same on a real 30-layer chat model, 8 sequences of 64 tokens of the built-in prose.

Methods: ``loop``; ``vmap:C``, `anchors.per_sample_sum` with the hooks off (the Fisher before layer
hooks: ``vmap(grad)`` in chunks of C); ``hooks:C``, the library's default now (`strategies.sumsq`: one
batched backward pass per chunk of C, squares from the layers' inputs and output gradients). Every
method must agree with the loop to 1e-6 (hooks) or 1e-5 (vmap), normwise relative per parameter
tensor: the loop's float32 per-sample gradients, their squares summed in float64 (``rel err``; the
``loop`` row is the timed loop's own float32 sums against it); ``f64 err`` is each one's error
against the loop run in float64 throughout. The loop and the methods are
alternated in one process so machine drift hits all alike; the median of the per-round time ratios is
printed, for wall time and for the process's CPU time (steadier on a shared machine). Peak memory
comes from the CUDA allocator on a GPU; on a CPU, from the peak resident set of a fresh process per
method (a warm process would reuse memory it already holds).

    python bench/fisher.py [--repeats 7] [--device auto] [--threads 1]
                           [--methods vmap:64,hooks:16,hooks:64,hooks:256]
                           [--workloads split-digits:mlp,split-mnist1d:cnn1d,tiny-llama]
"""

from __future__ import annotations

import argparse
import copy
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
from lifelong.strategies.anchors import per_sample_sum
from lifelong.strategies.ewc import _nll, lm_nll

Fisher = dict[str, torch.Tensor]
Workload = tuple[nn.Module, torch.Tensor, torch.Tensor]
WORKLOADS = "split-digits:mlp,split-mnist1d:cnn1d,tiny-llama"
METHODS = "vmap:64,hooks:16,hooks:64,hooks:256"


def setup(device: torch.device, workload: str) -> Workload:
    """(model, inputs, labels); a causal LM's labels are its inputs."""
    if workload == "tiny-llama":
        return tiny_llama(device)
    if workload == "smollm2-135m":
        return smollm2(device)
    benchmark, model = workload.split(":")
    stream = build_benchmark(benchmark, seed=0)
    x, y = (t.to(device) for t in stream[0].train.tensors)  # type: ignore[attr-defined]
    torch.manual_seed(0)
    return build_model(model, stream.input_shape, stream.num_classes).to(device).eval(), x, y


def tiny_llama(device: torch.device) -> Workload:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(device).eval()
    ids = torch.randint(0, 256, (64, 64), generator=torch.Generator().manual_seed(0)).to(device)
    return model, ids, ids


def smollm2(device: torch.device) -> Workload:
    from lifelong.llm.corpora import builtin_corpus
    from lifelong.llm.models import load_model

    model, tokenizer = load_model("smollm2-135m")
    text = " ".join(builtin_corpus("prose").documents)
    ids = torch.tensor(tokenizer(text[:20_000])["input_ids"][: 8 * 64]).view(8, 64).to(device)
    return model.to(device).eval(), ids, ids


def is_lm(model: nn.Module) -> bool:
    return hasattr(model, "config")


EMPIRICAL_NLL = lm_nll("empirical")
UNUSED_DRAW = torch.Generator()  # the empirical measure draws nothing


def sequence_nll(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """Each sequence's mean next-token NLL, [N]: the library's measure, applied as the library applies
    it, a sequence at a time. Another way of taking the mean (a batched cross-entropy, say) rounds the
    loss differently in float32 by about 1e-7, which a 30-layer model such as SmolLM2 amplifies to 1e-3
    in the Fisher: the loop and the methods must differ in how they take gradients, not in the loss."""
    logits = model(input_ids=ids, use_cache=False).logits[:, :-1].float()
    return torch.stack(
        [EMPIRICAL_NLL(one, target, UNUSED_DRAW) for one, target in zip(logits, ids[:, 1:], strict=True)]
    )


def loop_fisher(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, sums: torch.dtype | None = None
) -> Fisher:
    """What one writes without torch.func: a backward pass per sample, squared gradients summed
    (in ``sums``, the parameters' own dtype by default)."""
    params = dict(model.named_parameters())
    total = {n: torch.zeros_like(p, dtype=sums) for n, p in params.items()}
    for i in range(len(y)):
        loss = (
            sequence_nll(model, x[i : i + 1]).sum()
            if is_lm(model)
            else F.cross_entropy(model(x[i : i + 1]), y[i : i + 1])
        )
        for (n, _), g in zip(params.items(), torch.autograd.grad(loss, list(params.values())), strict=True):
            total[n] += g.to(total[n].dtype) ** 2
    return {n: v / len(y) for n, v in total.items()}


def fast_fisher(model: nn.Module, x: torch.Tensor, y: torch.Tensor, how: str, chunk: int) -> Fisher:
    """The library's Fisher by layer hooks (``hooks``) or by vmap alone (``vmap``), in chunks."""
    if is_lm(model):
        from lifelong.llm.fisher import sequence_importance  # needs transformers, as the workload does

        tokens = chunk * x.shape[1]
        return sequence_importance(model, x, lm_nll("empirical"), samples=None, chunk_tokens=tokens)
    if how == "hooks":
        return EWC(model, chunk_size=chunk).fisher_information([(x, y)])
    names = [n for n, _ in model.named_parameters()]
    sums = per_sample_sum(model, None, names, _nll, 2, x, torch.zeros_like(y), y, chunk_size=chunk)
    return {n: v / len(y) for n, v in sums.items()}


def method(model: nn.Module, x: torch.Tensor, y: torch.Tensor, name: str) -> Callable[[], Fisher]:
    if name == "loop":
        return lambda: loop_fisher(model, x, y)
    how, chunk = name.split(":")
    return lambda: fast_fisher(model, x, y, how, int(chunk))


def relative_error(got: Fisher, want: Fisher) -> float:
    """Largest ||got - want|| / ||want|| over the parameter tensors."""
    return max(float((got[n].double() - w.double()).norm() / w.double().norm()) for n, w in want.items())


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


def rss_peak_child(workload: str, name: str, threads: int) -> float:
    """Run one method in a fresh process; MiB its peak resident set rose above its start."""
    command = [sys.executable, __file__, "--child", name, "--threads", str(threads)]
    command += ["--device", "cpu", "--workloads", workload]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    try:
        return float(result.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return float("nan")


def child(workload: str, name: str) -> None:
    """The fresh process: warm up on two samples, reset the peak resident set, measure one method."""
    status = Path("/proc/self/status")

    def mib(field: str) -> float:
        line = next(line for line in status.read_text().splitlines() if line.startswith(field))
        return float(line.split()[1]) / 1024

    model, x, y = setup(torch.device("cpu"), workload)
    method(model, x[:2], y[:2], name)()  # lazy initialisation belongs to the baseline
    try:
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := current resident set
    except OSError:
        print("nan")
        return
    base = mib("VmRSS:")
    method(model, x, y, name)()
    print(f"{mib('VmHWM:') - base:.1f}")


def measure(workload: str, device: torch.device, names: list[str], repeats: int, threads: int) -> None:
    model, x, y = setup(device, workload)
    if is_lm(model):  # vmap is not how the library measures an LM
        names = [n for n in names if n.startswith("hooks")]
    params = sum(p.numel() for p in model.parameters())
    where = (
        f"{torch.get_num_threads()} CPU thread(s)" if device.type == "cpu" else torch.cuda.get_device_name()
    )
    print(f"\n{workload}: {len(y)} samples; {params:,} parameters; {where}")

    # The reference is the loop's own float32 per-sample gradients, their squares summed in float64:
    # summed in float32, 1,400 terms round by about 1e-6 themselves, which would count against methods
    # that are closer to the float64 truth than the float32 loop (the ``loop`` row shows its own error).
    reference = loop_fisher(model, x, y, sums=torch.float64)
    exact = loop_fisher(copy.deepcopy(model).double(), x if is_lm(model) else x.double(), y)
    errors = {n: relative_error(method(model, x, y, n)(), reference) for n in ["loop", *names]}
    for name, err in errors.items():
        bound = 1e-6 if name.startswith("hooks") else 1e-5
        assert err <= bound, f"{name} Fisher differs from the loop by {err:.2e} relative"
    exact_errors = {n: relative_error(method(model, x, y, n)(), exact) for n in ["loop", *names]}

    seconds: dict[str, list[tuple[float, float]]] = {n: [] for n in ["loop", *names]}
    for _ in range(repeats):  # alternate, so drift on a shared machine hits every method alike
        for n in seconds:
            seconds[n].append(timed(device, method(model, x, y, n)))

    def speedup(n: str, clock: int) -> float:
        return statistics.median(
            lo[clock] / s[clock] for lo, s in zip(seconds["loop"], seconds[n], strict=True)
        )

    if device.type == "cuda":
        peaks = {n: cuda_peak(method(model, x, y, n)) for n in seconds}
    else:
        peaks = {n: rss_peak_child(workload, n, threads) for n in seconds}

    print(
        f"{'method':<12}{'median s':>10}{'speedup':>9}{'(cpu)':>8}{'rel err':>10}{'f64 err':>10}{'peak MiB':>10}"
    )
    for n in seconds:
        print(
            f"{n:<12}{statistics.median(w for w, _ in seconds[n]):>10.4f}{f'{speedup(n, 0):.2f}x':>9}"
            f"{f'{speedup(n, 1):.2f}x':>8}{errors[n]:>10.1e}{exact_errors[n]:>10.1e}{peaks[n]:>10.1f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--methods", default=METHODS, help="vmap:C and hooks:C (C: chunk size), comma-separated"
    )
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (0: torch's default)")
    parser.add_argument(
        "--workloads",
        default=WORKLOADS,
        help="benchmark:model pairs, tiny-llama or smollm2-135m, comma-separated",
    )
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads > 0:  # one thread for all: a fair comparison, and stable on a machine shared with others
        torch.set_num_threads(args.threads)
    if args.child is not None:
        child(args.workloads, args.child)
        return
    device = resolve_device(args.device)
    print(
        f"torch {torch.__version__}; empirical Fisher of the model on task 0, median of {args.repeats} rounds"
    )
    for workload in args.workloads.split(","):
        if workload in ("tiny-llama", "smollm2-135m") and not has_transformers():
            print(f"\n{workload}: skipped (transformers is not installed)")
            continue
        measure(workload, device, args.methods.split(","), args.repeats, args.threads)
    how = (
        "CUDA allocator peak above the start"
        if device.type == "cuda"
        else "CPU peak resident set above the start, one fresh process per method"
    )
    print(
        f"\nspeedup: loop time / method time, median of the alternated rounds, wall clock and (cpu) process "
        f"CPU time (targets: hooks:64 >= 10x on the MLP, >= 20x on cnn1d); rel err: normwise against the "
        f"loop's float32 gradients summed in float64; f64 err: against the loop in float64; memory: {how}"
    )


def has_transformers() -> bool:
    try:
        import transformers  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    main()
