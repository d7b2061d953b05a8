"""Learner overhead against a bare PyTorch loop doing the same work, in one process.

Workload (the issue's): split-digits, MLP 64-256-256-10, 5 epochs, batch 32, SGD lr 0.05, evaluation
of every task after every task. The two are alternated so that machine drift hits both alike, and
the median of the per-pair ratios is printed.

    python bench/overhead.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from lifelong import Learner, build_benchmark, build_model, build_strategies

EPOCHS, BATCH, LR = 5, 32, 0.05


def bare_loop(stream, seed: int) -> list[list[float]]:
    """What a user would write by hand: index slicing, cross-entropy, SGD, evaluate after each task."""
    torch.manual_seed(seed)
    model = build_model("mlp", stream.input_shape, stream.num_classes)
    generator = torch.Generator().manual_seed(seed)
    tests = [t.test.tensors for t in stream]
    matrix = []

    def evaluate() -> list[float]:
        model.eval()
        with torch.inference_mode():
            row = [float((model(x).argmax(1) == y).float().mean()) for x, y in tests]
        model.train()
        return row

    evaluate()  # the Learner scores the untrained model once, for forward transfer
    for task in stream:
        x, y = task.train.tensors
        optimizer = torch.optim.SGD(model.parameters(), lr=LR)
        for _ in range(EPOCHS):
            order = torch.randperm(len(y), generator=generator)
            for start in range(0, len(y), BATCH):
                idx = order[start : start + BATCH]
                loss = F.cross_entropy(model(x[idx]), y[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        matrix.append(evaluate())
    return matrix


def learner_loop(stream, seed: int, strategy: str = "naive") -> list[list[float]]:
    torch.manual_seed(seed)
    model = build_model("mlp", stream.input_shape, stream.num_classes)
    learner = Learner(
        model,
        build_strategies(strategy),
        epochs=EPOCHS,
        batch_size=BATCH,
        lr=LR,
        optimizer="sgd",
        seed=seed,
        device="cpu",
    )
    return learner.fit(stream).matrix


def timed(fn, *args) -> float:
    started = time.perf_counter()
    fn(*args)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    stream = build_benchmark("split-digits", seed=0)
    bare_loop(stream, 0), learner_loop(stream, 0)  # warm-up: first calls pay for lazy initialisation
    ratios, bare_times, learner_times = [], [], []
    for repeat in range(args.repeats):
        b = timed(bare_loop, stream, repeat)
        lt = timed(learner_loop, stream, repeat)
        bare_times.append(b)
        learner_times.append(lt)
        ratios.append(lt / b)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.repeats} alternating pairs")
    print(f"{'workload':<10} {'bare s':>8} {'learner s':>10} {'ratio (median)':>15} {'min':>6} {'max':>6}")
    print(
        f"{'naive':<10} {statistics.median(bare_times):8.3f} {statistics.median(learner_times):10.3f} "
        f"{statistics.median(ratios):15.3f} {min(ratios):6.3f} {max(ratios):6.3f}"
    )


if __name__ == "__main__":
    main()
