"""Trains the first split-digits task with EWC under a launcher and saves what each process holds.

Launched by tests/test_distributed.py as ``torchrun --standalone --nproc-per-node 2 THIS OUT_DIR``.
Each process writes ``rank<r>.safetensors``: its weights after the task and the Fisher it holds.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from lifelong import Learner, build_benchmark, build_model
from lifelong.core.distributed import Processes, shutdown
from lifelong.strategies.ewc import EWC


def main() -> None:
    torch.set_num_threads(1)
    out = Path(sys.argv[1])
    stream = build_benchmark("split-digits:tasks=2", seed=0)
    torch.manual_seed(0)
    model = build_model("mlp", stream.input_shape, stream.num_classes)
    ewc = EWC(lambda_ewc=100.0)
    processes = Processes("cpu")
    learner = Learner(model, [ewc], epochs=2, batch_size=32, device="cpu", processes=processes)
    learner.stream = stream
    learner.train_task(stream.tasks[0])  # after_task computes the Fisher over this process's shard
    fisher, _ = ewc.terms[-1]
    tensors = {f"weight.{k}": v.detach() for k, v in model.state_dict().items()}
    tensors |= {f"fisher.{k}": v for k, v in fisher.items()}
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / f"rank{processes.rank}.safetensors"))


main()  # its objects are gone before the process group closes
shutdown()
