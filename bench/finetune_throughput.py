"""Training tokens per second of `lifelong finetune` (naive, replay) against a plain ``transformers.Trainer``.

One process, one model (``smollm2-135m`` by default), the same instruction examples (tokenized once
through the model's chat template, answer-only labels), batch size, epochs and learning rate. The
plain loop is what a user would write: ``Trainer`` with ``DataCollatorForSeq2Seq``. Each `finetune`
call is the whole command in Python (load, score before, train, score after, checkpoint, results);
its own ``train_seconds`` (its trainer's training, as the plain loop's ``train()`` is timed) gives
the training speed, in wall time and in this process's CPU time (which other jobs on a shared
machine hardly move), and ``eval_seconds`` / ``wall_seconds`` the evaluation's share of the run.
Runs alternate in a rotating order so machine drift hits all alike; the median of per-round ratios
is printed. Replay trains on the new examples plus ``--replay-ratio`` replayed ones: its cost is
set beside its extra tokens.

    python bench/finetune_throughput.py [--model smollm2-135m] [--examples 16] [--rounds 3] [--threads 1]
                                        [--device cpu] [--precision no]
    python bench/finetune_throughput.py --threads-sweep 1,2   # the plain loop alone at each thread count

Target (issue 14): finetune naive >= 0.95 of the plain Trainer's tokens/s; replay's time within its tokens.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from transformers import AutoModelForCausalLM, DataCollatorForSeq2Seq, Trainer, TrainingArguments
from transformers.trainer_callback import PrinterCallback

from lifelong.core.distributed import PRECISIONS
from lifelong.llm.corpora import split_documents
from lifelong.llm.finetune import finetune
from lifelong.llm.finetune_data import FinetuneSettings, prepare
from lifelong.llm.instruct import Example, load_task
from lifelong.llm.models import load_model, offline, resolve_model_folder
from lifelong.llm.plans import replayed_examples
from lifelong.llm.trainer import ContinualTrainer

WORDS = ["river", "garden", "lantern", "pepper", "marble", "window", "candle", "silver", "orange", "meadow"]


def write_tasks(folder: Path, examples: int) -> tuple[Path, Path]:
    """A new task (spell a word backwards) and known data (sums), each with ``examples`` training records."""
    count = next(
        n for n in range(examples, 2 * examples + 2) if len(split_documents(range(n))[0]) == examples
    )
    new = [chat(f"Spell '{WORDS[i % 10]}{i}' backwards.", f"{WORDS[i % 10]}{i}"[::-1]) for i in range(count)]
    old = [chat(f"What is {i} + {2 * i + 3}?", str(3 * i + 3)) for i in range(count)]
    paths = folder / "backwards.jsonl", folder / "sums.jsonl"
    for path, records in zip(paths, (new, old), strict=True):
        path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return paths


def chat(question: str, answer: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


class Clock:
    """Wall and process CPU seconds of what runs under it. On a machine shared with other jobs the CPU
    time of a one-thread run hardly moves when they take the cores; the wall time does."""

    def __enter__(self) -> Clock:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.spans = {"train": time.perf_counter() - self.wall, "cpu": time.process_time() - self.cpu}


@contextlib.contextmanager
def cpu_of_tasks() -> Iterator[list[float]]:
    """The process CPU seconds of every `ContinualTrainer.train_task` under it (the span `finetune` times)."""
    spans: list[float] = []
    task = ContinualTrainer.train_task

    def timed(self: ContinualTrainer, *args: Any, **kwargs: Any) -> Any:
        started = time.process_time()
        try:
            return task(self, *args, **kwargs)
        finally:
            spans.append(time.process_time() - started)

    ContinualTrainer.train_task = timed  # type: ignore[method-assign]
    try:
        yield spans
    finally:
        ContinualTrainer.train_task = task  # type: ignore[method-assign]


def plain(
    folder: Path, tokenizer: Any, examples: list[Example], settings: FinetuneSettings, out: Path
) -> dict[str, float]:
    """Wall and CPU seconds of a plain Trainer's ``train()`` on ``examples`` (built first, as `finetune`
    builds its trainer before timing it), the model loaded fresh from ``folder`` as `finetune` loads it."""
    from datasets import Dataset

    data = Dataset.from_dict(
        {"input_ids": [e.input_ids for e in examples], "labels": [e.labels for e in examples]}
    )
    arguments = TrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=settings.batch_size,
        num_train_epochs=settings.epochs,
        learning_rate=settings.learning_rate or 1e-5,
        warmup_steps=settings.warmup_ratio,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        logging_steps=50,
        use_cpu=settings.device == "cpu",
        bf16=settings.precision == "bf16",
        fp16=settings.precision == "fp16",
        seed=settings.seed,
        data_seed=settings.seed,
    )
    with offline():
        model = AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True)
    with offline():
        trainer = Trainer(
            model=model,
            args=arguments,
            train_dataset=data,
            data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100),
        )
        trainer.remove_callback(PrinterCallback)
        with Clock() as clock:
            trainer.train()
    return clock.spans


def ours(strategy: str, options: argparse.Namespace, tasks: tuple[Path, Path], out: Path) -> dict[str, float]:
    """`finetune` with ``strategy``: its training seconds (wall and CPU), evaluation seconds and whole wall time."""
    new, old = tasks
    with cpu_of_tasks() as cpu:
        document = finetune(
            options.model,
            [new],
            out,
            strategies=strategy,
            replay=[old] if strategy == "replay" else None,
            replay_ratio=options.replay_ratio,
            settings=settings_of(options),
            watch=options.watch.split(",") if options.watch else None,
            overwrite=True,
            console=Console(file=io.StringIO()),
        )
    record = document["results"][0]
    return {
        "train": record["train_seconds"],
        "cpu": sum(cpu),
        "eval": record["eval_seconds"],
        "wall": document["wall_seconds"],
    }


def settings_of(options: argparse.Namespace) -> FinetuneSettings:
    return FinetuneSettings(
        batch_size=options.batch_size,
        epochs=1.0,
        learning_rate=1e-5,
        max_length=options.max_length,
        max_new_tokens=16,
        eval_examples=options.eval_examples,
        device=options.device,
        precision=options.precision,
    )


def tokens(examples: list[Example]) -> int:
    return sum(len(e.input_ids) for e in examples)


def sweep(
    folder: Path, tokenizer: Any, examples: list[Example], options: argparse.Namespace, out: Path
) -> None:
    counts = [int(n) for n in options.threads_sweep.split(",")]
    seconds: dict[int, list[float]] = {n: [] for n in counts}
    for round_ in range(options.rounds):
        for n in counts if round_ % 2 == 0 else counts[::-1]:
            torch.set_num_threads(n)
            seconds[n].append(plain(folder, tokenizer, examples, settings_of(options), out)["train"])
            print(
                f"  round {round_ + 1}: {n} threads {tokens(examples) / seconds[n][-1]:,.0f} tok/s",
                flush=True,
            )
    for n in counts:
        print(f"{n} threads: median {tokens(examples) / statistics.median(seconds[n]):,.0f} tok/s (wall)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--examples", type=int, default=16, help="training examples of the new task")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--eval-examples", type=int, default=4)
    parser.add_argument("--replay-ratio", type=float, default=0.25)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--watch", default=None, help="finetune's watch sets (default: its own; none: none)")
    parser.add_argument("--precision", default="no", choices=PRECISIONS, help="both sides alike")
    parser.add_argument("--threads-sweep", default=None, help="e.g. 1,2: the plain loop alone at each count")
    options = parser.parse_args()
    torch.set_num_threads(options.threads)

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        tasks = write_tasks(folder, options.examples)
        initial, tokenizer = load_model(options.model)
        model_folder = resolve_model_folder(options.model)
        settings = settings_of(options)
        new = prepare(load_task(tasks[0]), tokenizer, settings, keep=0).train
        old = prepare(load_task(tasks[1]), tokenizer, settings, keep=0).train
        replayed = replayed_examples(old, len(new), options.replay_ratio, settings.seed + 1)
        print(
            f"model {options.model}, {initial.num_parameters():,} parameters, torch threads "
            f"{torch.get_num_threads()}; {len(new)} examples ({tokens(new)} tokens, "
            f"{tokens(new) / len(new):.0f} a row) in batches of {options.batch_size}, one epoch; "
            f"replay adds {len(replayed)} ({tokens(replayed)} tokens); {options.rounds} rounds; "
            f"device {torch.cuda.get_device_name() if options.device == 'cuda' else 'cpu'}, "
            f"precision {options.precision}"
        )
        del initial
        if options.threads_sweep:
            sweep(model_folder, tokenizer, new, options, folder / "plain")
            return
        kinds = ["plain", "naive", "replay"]
        rows: dict[str, list[dict[str, float]]] = {kind: [] for kind in kinds}
        for round_ in range(options.rounds):
            for kind in kinds[round_ % 3 :] + kinds[: round_ % 3]:
                if kind == "plain":
                    rows[kind].append(plain(model_folder, tokenizer, new, settings, folder / "plain"))
                else:
                    rows[kind].append(ours(kind, options, tasks, folder / kind))
            print(
                f"  round {round_ + 1}: training seconds, wall (CPU): "
                + ", ".join(
                    f"{kind} {row[-1]['train']:.1f} ({row[-1]['cpu']:.1f})" for kind, row in rows.items()
                ),
                flush=True,
            )
        report(rows, tokens(new), tokens(replayed))


def report(rows: dict[str, list[dict[str, float]]], new_tokens: int, replay_tokens: int) -> None:
    def ratio(top: str, bottom: str, clock: str) -> float:
        pairs = zip(rows[top], rows[bottom], strict=True)
        return statistics.median(a[clock] / b[clock] for a, b in pairs)

    for clock in ("train", "cpu"):
        naive = ratio("plain", "naive", clock)
        plain_speed = new_tokens / statistics.median(r[clock] for r in rows["plain"])
        print(
            f"{'wall' if clock == 'train' else 'CPU'}: plain Trainer {plain_speed:,.1f} tok/s; finetune naive / plain "
            f"tokens/s, median ratio {naive:.3f} (target >= 0.95: {'met' if naive >= 0.95 else 'NOT met'}); "
            f"replay / naive time {ratio('replay', 'naive', clock):.3f} for "
            f"{(new_tokens + replay_tokens) / new_tokens:.3f}x the tokens"
        )
    for kind in ("naive", "replay"):
        share = statistics.median(r["eval"] / r["wall"] for r in rows[kind])
        train = statistics.median(r["train"] / r["wall"] for r in rows[kind])
        wall = statistics.median(r["wall"] for r in rows[kind])
        print(
            f"finetune {kind}: wall {wall:.1f}s; training {train:.0%}, evaluation {share:.0%}, "
            f"the rest (load, checkpoints, results) {1 - train - share:.0%}"
        )


if __name__ == "__main__":
    main()
