"""Tokens per second of `ContinualTrainer` against a plain ``transformers.Trainer``, in one process.

Same model (copies of one initial state), same data (the built-in code corpus with 20% prose
replayed, mixed once by token share), same batch, same optimizer and schedule. Runs alternate
(plain, ours, ours, plain, ...) so machine drift hits both alike; each run times its steps after a
few warm-up steps (tokens per second of its median step), and the median of the per-round ratios is
printed. Then the same against
``ContinualTrainer`` with distillation (one extra, no-grad forward of the frozen teacher per step).

    python bench/llm_throughput.py [--model tiny-llama|DIR] [--steps 40] [--rounds 7] [--device cpu]

Target (issue 5): replay mixing with no penalty >= 0.95 of the plain Trainer.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_callback import PrinterCallback

from lifelong.llm.corpora import load_corpus
from lifelong.llm.data import CausalCollator, mix_by_token_share, pack
from lifelong.llm.models import load_model, vocab_size
from lifelong.llm.trainer import ContinualTrainer
from lifelong.models.hf import offline
from lifelong.strategies import LwF

WARMUP_STEPS = 3


class StepClock(TrainerCallback):
    """Wall time at the end of every optimizer step: the loop alone, not setup or teardown."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.times.append(time.perf_counter())


def run(kind: str, initial: Any, data: Any, options: argparse.Namespace, out: Path) -> float:
    """Tokens per second of one training run of ``kind`` (plain, continual, distill)."""
    model = copy.deepcopy(initial)
    clock = StepClock()
    training = TrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=options.batch_size,
        max_steps=options.steps,
        learning_rate=options.lr,
        warmup_steps=0.1,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        logging_steps=10_000,
        use_cpu=options.device == "cpu",
        seed=0,
    )
    common: dict[str, Any] = {
        "model": model,
        "args": training,
        "train_dataset": data,
        "data_collator": CausalCollator(),
        "callbacks": [clock],
    }
    with offline():
        if kind == "plain":
            trainer: Trainer = Trainer(**common)
        else:
            strategies = [LwF(alpha=0.5, temperature=2.0)] if kind == "distill" else []
            trainer = ContinualTrainer(**common, strategies=strategies)
        trainer.remove_callback(PrinterCallback)  # it prints each run's summary dict
        trainer.train()
    # The median step, not the mean: on a shared machine another process's burst lands on a few
    # steps of one run, and would otherwise decide the ratio.
    steps = [b - a for a, b in zip(clock.times[WARMUP_STEPS:], clock.times[WARMUP_STEPS + 1 :], strict=False)]
    return options.batch_size * options.block_size / statistics.median(steps)


def compare(kind: str, initial: Any, data: Any, options: argparse.Namespace, out: Path) -> list[float]:
    ratios = []
    for round_ in range(options.rounds):
        order = ("plain", kind) if round_ % 2 == 0 else (kind, "plain")
        speed = {name: run(name, initial, data, options, out) for name in order}
        ratios.append(speed[kind] / speed["plain"])
        print(
            f"  round {round_ + 1}: plain {speed['plain']:,.0f} tok/s, {kind} {speed[kind]:,.0f} tok/s, "
            f"ratio {ratios[-1]:.3f}",
            flush=True,
        )
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-llama")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--block-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--replay-ratio", type=float, default=0.2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--skip-distill", action="store_true")
    options = parser.parse_args()

    initial, tokenizer = load_model(options.model)
    vocab = vocab_size(initial)
    new = pack(load_corpus("code"), tokenizer, options.block_size, vocab)
    old = pack(load_corpus("prose"), tokenizer, options.block_size, vocab)
    data = mix_by_token_share(new.train, old.train, options.replay_ratio, seed=0)
    print(
        f"model {options.model}, {initial.num_parameters():,} parameters, device {options.device}, "
        f"torch threads {torch.get_num_threads()}; batch {options.batch_size} x {options.block_size} tokens, "
        f"{options.steps} steps per run ({WARMUP_STEPS} warm-up), {options.rounds} rounds; "
        f"data: code + {options.replay_ratio:.0%} prose replay ({len(data)} blocks)"
    )
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        print("ContinualTrainer, replay mixing, no penalty vs plain Trainer:")
        ratios = compare("continual", initial, data, options, out)
        median = statistics.median(ratios)
        print(f"  median ratio {median:.3f}  (target >= 0.95: {'met' if median >= 0.95 else 'NOT met'})")
        if not options.skip_distill:
            print("ContinualTrainer with distillation (LwF, T=2, alpha=0.5) vs plain Trainer:")
            distill = statistics.median(compare("distill", initial, data, options, out))
            print(f"  median ratio {distill:.3f}  (one extra no-grad teacher forward per step is expected)")


if __name__ == "__main__":
    main()
