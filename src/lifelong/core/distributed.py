"""Several processes, one run: what the Learner and the strategies need from Accelerate.

Launched by ``accelerate launch``, ``torchrun`` or ``lifelong run --processes N``, every process
trains the same model on its share of each global batch; DDP averages the gradients, so N processes
with global batch B follow the single-process run with batch B. One process without mixed precision
(the usual case) takes no detour at all: no Accelerator is built and every helper is the identity.

Strategies stay correct without knowing any of this: data reaches them through ``Learner.batches``
(already sharded), and sums over a task's data (Fisher, importances, reference gradients) go through
`all_reduce_sum`, which is a no-op in one process.
"""

from __future__ import annotations

import contextlib
import gc
import os
from typing import Any, Literal, TypeVar

import torch
from torch import nn

from lifelong.errors import LifelongError

Precision = Literal["no", "bf16", "fp16"]
PRECISIONS: tuple[str, ...] = ("no", "bf16", "fp16")
T = TypeVar("T", torch.Tensor, dict[str, torch.Tensor])


def check_precision(precision: str) -> None:
    """One of `PRECISIONS`, or one line saying which there are."""
    if precision not in PRECISIONS:
        raise LifelongError(f"unknown precision '{precision}'; choose one of: {', '.join(PRECISIONS)}")


def world_size() -> int:
    """Processes in this run, as the launcher announced them (before any process group exists)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main_process() -> bool:
    return rank() == 0


def group_size() -> int:
    """Processes that take part in collectives: 1 unless a process group is running."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return 1


def group_rank() -> int:
    """This process's rank among those of the running process group (0 without one)."""
    if group_size() > 1:
        return torch.distributed.get_rank()
    return 0


def all_reduce_sum(value: T) -> T:
    """The sum over processes of a tensor or a dict of tensors, in place; unchanged in one process.

    Plain ``torch.distributed``, so it also serves users who call `EWC.compute_fisher` inside their
    own DDP loop without Accelerate.
    """
    if group_size() == 1:
        return value
    for tensor in value.values() if isinstance(value, dict) else [value]:
        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.SUM)
    return value


def sum_over_processes(total: dict[str, torch.Tensor], count: int) -> tuple[dict[str, torch.Tensor], int]:
    """A per-process sum over samples and its sample count, summed over every process: each one
    saw its own shard, so the run's estimate (Fisher, importance) is total / count of these."""
    if group_size() == 1:
        return total, count
    counted = all_reduce_sum(torch.tensor(float(count), device=next(iter(total.values())).device))
    return all_reduce_sum(total), int(counted.item())


def shutdown() -> None:
    """End of a multi-process run: wait for every process, then close the process group (a process
    leaving with the group open can abort in the collective library's threads at exit).

    Call it once the run's objects are gone. A DDP wrapper left in a reference cycle would otherwise
    be freed only at interpreter exit, with gloo work still holding tensors: an intermittent SIGABRT
    ("terminate called without an active exception"). So the cycles are collected first.
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        gc.collect()
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def local_share(total: int) -> int:
    """This process's part of a size split over the processes (a replay buffer's slots)."""
    return total // world_size() + (rank() < total % world_size())


_NO_AUTOCAST = contextlib.nullcontext()  # reusable: one process in full precision enters it every step


class Processes:
    """This process's place in the run and the Accelerate calls the training loop makes."""

    def __init__(self, device: str | torch.device = "auto", precision: str = "no") -> None:
        check_precision(precision)
        self.accelerator: Any = None
        if world_size() > 1 or precision != "no":
            self.accelerator = _accelerator(device, precision)
            self.device = resolve_device(self.accelerator.device)  # one process: a bare 'cuda'
            self.rank, self.world = self.accelerator.process_index, self.accelerator.num_processes
        else:
            self.device = resolve_device(device)
            self.rank, self.world = 0, 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def share(self, indices: torch.Tensor) -> torch.Tensor:
        """This process's part of a global batch of sample indices (every process draws the same ones)."""
        return indices if self.world == 1 else indices[self.rank :: self.world]

    def prepare(
        self, model: nn.Module, optimizer: torch.optim.Optimizer
    ) -> tuple[nn.Module, torch.optim.Optimizer]:
        """The module to train through (DDP-wrapped, autocast) and the optimizer to step (loss scaling).

        Done per task because strategies may change which parameters train (adapters, freezing).
        """
        if self.accelerator is None:
            return model, optimizer
        prepared_model, prepared_optimizer = self.accelerator.prepare(model, optimizer)
        return prepared_model, prepared_optimizer

    def release(self, prepared: nn.Module) -> None:
        """End of a task: restore the model's own forward and drop Accelerate's references."""
        if self.accelerator is not None:
            self.accelerator.unwrap_model(prepared, keep_fp32_wrapper=False)
            # What `free_memory` drops, without its full garbage collection (0.2 s a task here).
            for kept in (self.accelerator._models, self.accelerator._optimizers):
                kept.clear()

    def backward(self, loss: torch.Tensor) -> None:
        if self.accelerator is None:
            loss.backward()
        else:
            self.accelerator.backward(loss)

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        return _NO_AUTOCAST if self.accelerator is None else self.accelerator.autocast()

    def wait(self) -> None:
        """All processes reach this point before any goes on (e.g. the main one wrote a file)."""
        if self.accelerator is not None:
            self.accelerator.wait_for_everyone()


def resolve_device(device: str | torch.device) -> torch.device:
    """The device named, with its index where it has one: a tensor on a GPU reports ``cuda:0``, never
    ``cuda``, so a bare ``cuda`` would compare unequal to every tensor on it (and move them again)."""
    if str(device) == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise LifelongError(
            "--device cuda was asked for but no CUDA GPU is visible; use --device cpu or auto"
        )
    if resolved.type == "cuda" and resolved.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return resolved


def _accelerator(device: str | torch.device, precision: str) -> Any:
    from accelerate import Accelerator

    cpu = resolve_device(device).type == "cpu"
    try:
        return Accelerator(cpu=cpu, mixed_precision=precision)
    except (ValueError, RuntimeError) as err:  # e.g. fp16 on a CPU, or a second precision in one process
        raise LifelongError(
            f"precision '{precision}' cannot be used here ({str(err).splitlines()[0]}); try --precision bf16 or no"
        ) from None


def launch(num_processes: int, argv: list[str]) -> int:
    """Run ``lifelong ARGV`` in ``num_processes`` processes on this machine, as ``torchrun
    --standalone`` does; returns the exit status (the main process's error line is already printed)."""
    import logging
    import sys
    import uuid

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    # The launcher's own failure report repeats, as a traceback, the one line the main process printed.
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    # Threads beyond the cores only make the processes wait for each other.
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // num_processes)))
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=num_processes,
        run_id=str(uuid.uuid4()),
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",
        max_restarts=0,
        monitor_interval=0.1,
    )
    try:
        elastic_launch(config, sys.executable)("-m", "lifelong", *argv)
    except ChildFailedError as err:
        # The first process to fail stops the others with SIGTERM (a negative status): report its own.
        own = [failure.exitcode for _, failure in sorted(err.failures.items()) if failure.exitcode > 0]
        return own[0] if own else 1
    return 0


def without_option(argv: list[str], option: str) -> list[str]:
    """``argv`` without ``option VALUE`` or ``option=VALUE`` (how --processes is kept from the children)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == option:
            skip = True
        elif not arg.startswith(option + "="):
            out.append(arg)
    return out
