"""Strategy overhead: Learner(strategy) against a bare PyTorch loop doing the same work, in one process.

Workload (the issue's): split-digits, MLP 64-256-256-10, 5 epochs, batch 32, SGD lr 0.05, evaluation
of every task after every task. Each strategy runs with its default options (spelled out in `SPECS`),
and its bare loop does the same work by hand:

- naive: cross-entropy, SGD.
- replay: a 200-sample reservoir filled after each task (algorithm R), and every batch of n new
  samples gets 2n stored ones (``replay_ratio=2``), drawn by walking a random permutation.
- ewc: the penalty ``(lambda/2) * sum F (theta - theta*)^2`` written the obvious way, per parameter
  tensor (lambda 1000; classic EWC's per-task terms folded into one, as the strategy does, and the
  weights capped where an SGD step lands on the anchor, as the strategy does). Penalty only: both
  sides compute the Fisher after each task, and that time is left out of both timings.
- lwf: a frozen copy of the previous model, one extra forward per batch, KL at temperature 2 on the
  earlier tasks' classes, mixed 0.5/0.5 with cross-entropy.
- der++: a stream-wise 200-sample reservoir of (x, y, logits); each step replays 64 stored samples in
  one forward: MSE to the stored logits on half (alpha 0.5), cross-entropy on the other half (beta 2).

The bare loops use nothing of lifelong's but the data (the stream's tensors): even the MLP is built
by hand. Both sides draw from one seeded generator in the same order, so they train on the same batches and
replay the same samples; ``|d acc|``, the largest difference of their accuracy matrices over all
pairs, checks it (ewc's penalty and lwf's KL are computed differently on the two sides, so there
they may differ by rounding). The pairs alternate, and which side goes first, so machine drift hits
both alike; the median of the per-pair ratios of wall time is printed with its min and max, and the
median ratio of process CPU time beside it (steadier when other jobs share the machine). Torch runs
on one thread unless ``--threads`` says otherwise.

``--best-of K`` runs each side of a pair K times in a row and keeps its fastest: on a machine shared
with other jobs single runs of 0.2 s vary by up to 40% (the noise only adds time), and the fastest of
a few is the steadier estimate of each side's own cost.

    python bench/overhead.py [--repeats 21] [--best-of 1] [--strategies naive,replay,ewc,lwf,der++] [--threads 1]
                             [--device cpu]
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from lifelong import Learner, build_benchmark, build_model, build_strategies
from lifelong.core.learner import resolve_device
from lifelong.core.stream import Stream, Task

EPOCHS, BATCH, LR = 5, 32, 0.05
BUFFER, REPLAY_RATIO = 200, 2  # the strategies' defaults, spelled out for both sides
LAMBDA, FISHER_CHUNK = 1000.0, 64
ALPHA, TEMPERATURE = 0.5, 2.0
DER_ALPHA, DER_BETA, DER_MINIBATCH = 0.5, 2.0, 32
SPECS = {  # what the Learner runs; each bare loop below does the same by hand
    "naive": "naive",
    "replay": f"replay:buffer_size={BUFFER},policy=reservoir,replay_ratio={REPLAY_RATIO}",
    "ewc": f"ewc:lambda={LAMBDA},fisher=empirical,mode=classic,chunk_size={FISHER_CHUNK}",
    "lwf": f"lwf:alpha={ALPHA},temperature={TEMPERATURE}",
    "der++": f"der++:alpha={DER_ALPHA},beta={DER_BETA},buffer_size={BUFFER},minibatch_size={DER_MINIBATCH}",
}


DEVICE = torch.device("cpu")  # where both sides train: --device


def where(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU, {torch.get_num_threads()} thread(s)"


def on_device(data: object) -> tuple[torch.Tensor, torch.Tensor]:
    """A task's (inputs, labels) on `DEVICE`: once per task, as the Learner moves them."""
    x, y = data.tensors  # type: ignore[attr-defined]
    return x.to(DEVICE), y.to(DEVICE)


def synchronize() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)


def now() -> np.ndarray:
    """(wall, process CPU) seconds."""
    return np.array([time.perf_counter(), time.process_time()])


class Clock:
    """(wall, CPU) seconds spent in code left out of a timing (ewc's Fisher), on either side."""

    def __init__(self) -> None:
        self.seconds = np.zeros(2)

    def run(self, fn: Callable[..., object], *args: object) -> None:
        synchronize()  # the training queued before it is not the Fisher's
        started = now()
        fn(*args)
        synchronize()
        self.seconds += now() - started


# ---- the bare loops ---------------------------------------------------------------------------------


class Memory:
    """A hand-written reservoir: preallocated tensors, algorithm R, draws that walk a permutation."""

    def __init__(self, generator: torch.Generator, **columns: torch.Tensor) -> None:
        self.generator, self.seen, self.size = generator, 0, 0
        self.columns = {
            k: torch.zeros(BUFFER, *v.shape[1:], dtype=v.dtype, device=DEVICE) for k, v in columns.items()
        }
        self.perm, self.cursor = torch.empty(0, dtype=torch.long), 0

    def add(self, **columns: torch.Tensor) -> None:
        n = len(next(iter(columns.values())))
        if self.seen + n <= BUFFER:  # still filling: in arrival order
            rows, src = torch.arange(self.seen, self.seen + n), torch.arange(n)
        else:  # sample i of the batch takes a uniform row in [0, seen + i] and is kept if it exists
            u = torch.rand(n, generator=self.generator, dtype=torch.float64).numpy()
            j = (u * np.arange(self.seen + 1, self.seen + n + 1)).astype(np.int64)
            j[: max(BUFFER - self.seen, 0)] = np.arange(self.seen, BUFFER)[:n]
            winner = np.full(BUFFER + 1, -1)
            np.maximum.at(winner, np.minimum(j, BUFFER), np.arange(n))  # the latest to draw a row wins it
            r = np.flatnonzero(winner[:BUFFER] >= 0)
            rows, src = torch.from_numpy(r), torch.from_numpy(winner[r])
        rows, src = rows.to(DEVICE), src.to(DEVICE)
        for k, v in columns.items():
            self.columns[k].index_copy_(0, rows, v.index_select(0, src))
        self.seen += n
        self.size = min(BUFFER, self.size + n)

    def draw(self, n: int) -> dict[str, torch.Tensor]:
        n = min(n, self.size)
        if len(self.perm) != self.size or self.cursor + n > self.size:
            self.perm, self.cursor = torch.randperm(self.size, generator=self.generator), 0
        idx = self.perm[self.cursor : self.cursor + n].to(DEVICE)
        self.cursor += n
        return {k: v.index_select(0, idx) for k, v in self.columns.items()}


def mlp(inputs: int, classes: int) -> nn.Module:
    """The MLP by hand: the same layers in the same order as ``build_model("mlp")``, so one seed gives
    both sides the same initial weights."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(inputs, 256),
        nn.ReLU(),
        nn.Linear(256, 256),
        nn.ReLU(),
        nn.Linear(256, classes),
    )


class Bare:
    """The loop a user writes by hand: index slicing, cross-entropy, SGD, evaluation after each task.
    A strategy adds its work in `start` / `mix` / `loss` / `end` (one call each: no framework)."""

    def __init__(self, stream: Stream, seed: int, clock: Clock) -> None:
        torch.manual_seed(seed)
        self.stream, self.clock = stream, clock
        self.model = mlp(math.prod(stream.input_shape), stream.num_classes).to(DEVICE)
        self.generator = torch.Generator().manual_seed(seed)

    def start(self, task: Task) -> None: ...

    def mix(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x, y

    def loss(self, logits: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, y)

    def end(self, task: Task, x: torch.Tensor, y: torch.Tensor) -> None: ...

    def fit(self) -> list[list[float]]:
        model = self.model
        tests = [on_device(t.test) for t in self.stream]

        def evaluate() -> list[float]:
            model.eval()
            with torch.inference_mode():
                row = [int((model(x).argmax(1) == y).sum()) / len(y) for x, y in tests]
            model.train()
            return row

        evaluate()  # the Learner scores the untrained model once, for forward transfer
        matrix = []
        for task in self.stream:
            x, y = on_device(task.train)
            self.start(task)
            optimizer = torch.optim.SGD(model.parameters(), lr=LR)
            for _ in range(EPOCHS):
                order = torch.randperm(len(y), generator=self.generator).to(DEVICE)
                for first in range(0, len(y), BATCH):
                    idx = order[first : first + BATCH]
                    bx, by = self.mix(x[idx], y[idx])
                    loss = self.loss(model(bx), bx, by)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
            self.end(task, x, y)
            matrix.append(evaluate())
        return matrix


class BareReplay(Bare):
    """The task's samples offered to the reservoir after it; 2 stored ones per new one in each batch."""

    def start(self, task: Task) -> None:
        if task.index == 0:
            x, y = on_device(task.train)
            self.memory = Memory(self.generator, x=x, y=y)

    def mix(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.memory.size:
            return x, y
        old = self.memory.draw(REPLAY_RATIO * len(y))
        return torch.cat([x, old["x"]]), torch.cat([y, old["y"]])

    def end(self, task: Task, x: torch.Tensor, y: torch.Tensor) -> None:
        self.memory.add(x=x, y=y)


class BareEWC(Bare):
    """The penalty by hand; the Fisher (also by hand, with torch.func) is timed apart and left out."""

    def __init__(self, stream: Stream, seed: int, clock: Clock) -> None:
        super().__init__(stream, seed, clock)
        self.params = list(self.model.parameters())
        self.terms: list[tuple[list[torch.Tensor], list[torch.Tensor]]] = []
        self.weights: list[torch.Tensor] = []

    def loss(self, logits: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = F.cross_entropy(logits, y)
        if not self.weights:
            return loss
        penalty = sum(
            (w * (p - c) ** 2).sum() for p, w, c in zip(self.params, self.weights, self.centers, strict=True)
        )
        return loss + LAMBDA / 2 * penalty + self.const

    def end(self, task: Task, x: torch.Tensor, y: torch.Tensor) -> None:
        self.clock.run(self.consolidate, x, y)

    def consolidate(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Empirical Fisher, then sum_t F_t (theta - c_t)^2 folded into W (theta - C)^2 + const."""
        names = [n for n, _ in self.model.named_parameters()]
        params = {n: p.detach() for n, p in self.model.named_parameters()}

        def one(p: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(functional_call(self.model, p, (xi[None],)), yi[None])

        self.model.eval()
        fisher = [torch.zeros_like(p) for p in self.params]
        for xs, ys in zip(x.split(FISHER_CHUNK), y.split(FISHER_CHUNK), strict=True):
            grads = vmap(grad(one), in_dims=(None, 0, 0))(params, xs, ys)
            for f, n in zip(fisher, names, strict=True):
                f += grads[n].square().sum(0)
        self.model.train()
        self.terms.append(([f / len(y) for f in fisher], [p.detach().clone() for p in self.params]))
        cap = 1 / (2 * (LAMBDA / 2) * LR)  # beyond it one SGD step overshoots the anchor
        self.weights, self.centers, square = [], [], 0.0
        for k in range(len(self.params)):  # in float64: the constant is a difference of near-equal sums
            f = torch.stack([term[0][k] for term in self.terms]).double()  # [tasks, *shape]
            c = torch.stack([term[1][k] for term in self.terms]).double()
            w = f.sum(0)
            center = torch.where(w > 0, (f * c).sum(0) / w.clamp_min(1e-300), c[-1])
            square += float((f * c * c).sum() - (w * center * center).sum())
            self.weights.append(w.clamp(0, cap).float())
            self.centers.append(center.float())
        self.const = LAMBDA / 2 * max(square, 0.0) if len(self.terms) > 1 else 0.0


class BareLwF(Bare):
    """A frozen copy of the model from before the task; KL to it on the earlier tasks' classes."""

    def start(self, task: Task) -> None:
        self.teacher = None
        if task.index > 0:
            self.teacher = copy.deepcopy(self.model).eval().requires_grad_(False)
            self.old = self.stream.class_mask()[: task.index].any(0).nonzero().squeeze(1).to(DEVICE)

    def loss(self, logits: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        ce = F.cross_entropy(logits, y)
        if self.teacher is None:
            return ce
        with torch.no_grad():
            target = F.log_softmax(self.teacher(x)[:, self.old] / TEMPERATURE, dim=1)
        log_q = F.log_softmax(logits[:, self.old] / TEMPERATURE, dim=1)
        kd = F.kl_div(log_q, target, reduction="batchmean", log_target=True)
        return ALPHA * TEMPERATURE**2 * kd + (1 - ALPHA) * ce


class BareDERPP(Bare):
    """Each batch offered to the reservoir with its logits; 64 stored samples replayed per step."""

    def start(self, task: Task) -> None:
        if task.index == 0:
            x, y = on_device(task.train)
            logits = torch.zeros(1, self.stream.num_classes, device=DEVICE)
            self.memory = Memory(self.generator, x=x, y=y, logits=logits)

    def loss(self, logits: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = F.cross_entropy(logits, y)
        if self.memory.size:
            old = self.memory.draw(2 * DER_MINIBATCH)
            out, k = self.model(old["x"]), (len(old["y"]) + 1) // 2
            loss = loss + DER_ALPHA * F.mse_loss(out[:k], old["logits"][:k])
            if k < len(out):
                loss = loss + DER_BETA * F.cross_entropy(out[k:], old["y"][k:])
        self.memory.add(x=x, y=y, logits=logits.detach())
        return loss


BARE: dict[str, type[Bare]] = {
    "naive": Bare,
    "replay": BareReplay,
    "ewc": BareEWC,
    "lwf": BareLwF,
    "der++": BareDERPP,
}


# ---- the library --------------------------------------------------------------------------------


def learner_fit(stream: Stream, seed: int, clock: Clock, strategy: str) -> list[list[float]]:
    torch.manual_seed(seed)
    model = build_model("mlp", stream.input_shape, stream.num_classes)
    strategies = build_strategies(SPECS[strategy])
    if strategy == "ewc":  # the Fisher is timed apart, as on the bare side
        (ewc,) = strategies
        after_task = ewc.after_task
        ewc.after_task = lambda learner, task: clock.run(after_task, learner, task)  # type: ignore[method-assign]
    learner = Learner(
        model, strategies, epochs=EPOCHS, batch_size=BATCH, lr=LR, optimizer="sgd", seed=seed, device=DEVICE
    )
    return learner.fit(stream).matrix


def bare_fit(stream: Stream, seed: int, clock: Clock, strategy: str) -> list[list[float]]:
    return BARE[strategy](stream, seed, clock).fit()


def timed(
    fit: Callable[..., list[list[float]]], stream: Stream, seed: int, strategy: str
) -> tuple[np.ndarray, list[list[float]]]:
    """((wall, CPU) seconds less the time left out, accuracy matrix)."""
    clock = Clock()
    started = now()
    matrix = fit(stream, seed, clock, strategy)
    return now() - started - clock.seconds, matrix


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--strategies", default=",".join(SPECS))
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (0: torch's default)")
    parser.add_argument("--device", default="cpu", help="where both sides train: cpu, cuda")
    parser.add_argument(
        "--best-of",
        type=int,
        default=1,
        help="runs per side of each pair, its fastest kept (other jobs on the machine only add time)",
    )
    args = parser.parse_args()
    if args.best_of < 1:
        parser.error("--best-of must be at least 1")
    strategies = args.strategies.split(",")
    unknown = sorted(set(strategies) - set(BARE))
    if unknown:
        parser.error(f"no bare loop for {', '.join(unknown)}; choose from {', '.join(BARE)}")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    global DEVICE
    DEVICE = resolve_device(args.device)
    stream = build_benchmark("split-digits", seed=0)
    for s in strategies:  # warm-up: first calls pay for lazy initialisation
        timed(bare_fit, stream, 0, s), timed(learner_fit, stream, 0, s)

    bare: dict[str, list[np.ndarray]] = {s: [] for s in strategies}
    lib: dict[str, list[np.ndarray]] = {s: [] for s in strategies}
    drift: dict[str, float] = dict.fromkeys(strategies, 0.0)
    for repeat in range(args.repeats):
        for s in strategies:
            sides = [(bare_fit, bare[s]), (learner_fit, lib[s])]
            matrices = []
            for fit, times in sides if repeat % 2 == 0 else sides[::-1]:
                runs = [timed(fit, stream, repeat, s) for _ in range(args.best_of)]
                seconds, matrix = min(runs, key=lambda run: run[0][0])  # the fastest run's wall and CPU
                times.append(seconds)
                matrices.append(np.array(matrix))
            drift[s] = max(drift[s], float(np.abs(matrices[0] - matrices[1]).max()))

    print(
        f"torch {torch.__version__}, {where(DEVICE)}, {args.repeats} alternating pairs "
        f"per strategy, each side the fastest of {args.best_of} run(s); ewc: Fisher left out of both sides"
    )
    header = (
        f"{'strategy':<10}{'bare s':>9}{'lifelong s':>12}{'ratio':>8}{'min':>8}{'max':>8}{'cpu ratio':>11}"
    )
    print(header + f"{'|d acc|':>10}")
    for s in strategies:
        wall = [lt[0] / b[0] for b, lt in zip(bare[s], lib[s], strict=True)]
        cpu = [lt[1] / b[1] for b, lt in zip(bare[s], lib[s], strict=True)]
        print(
            f"{s:<10}{statistics.median(b[0] for b in bare[s]):9.3f}{statistics.median(t[0] for t in lib[s]):12.3f}"
            f"{statistics.median(wall):8.3f}{min(wall):8.3f}{max(wall):8.3f}{statistics.median(cpu):11.3f}"
            f"{drift[s]:10.4f}"
        )
    print(
        "ratio: median (min, max) of the per-pair lifelong / bare wall times (target <= 1.05); "
        "cpu ratio: the same for process CPU time, steadier on a shared machine"
    )


if __name__ == "__main__":
    main()
