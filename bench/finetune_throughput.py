"""Training tokens per second of `lifelong finetune` (naive, replay) against a plain ``transformers.Trainer``.

One process, one model (``smollm2-135m`` by default), the same instruction examples (tokenized once
through the model's chat template, answer-only labels), batch size, epochs and learning rate. The
plain loop is what a user would write: ``Trainer`` with ``DataCollatorForSeq2Seq``. Each `finetune`
call is the whole command in Python (load, score before, train, score after, checkpoint, results);
its own ``train_seconds`` (trainer built to trained, as the plain loop is timed) gives the
training speed, and ``eval_seconds`` / ``wall_seconds`` the evaluation's share of the run. Runs
alternate in a rotating order so machine drift hits all alike; the median of per-round ratios is
printed. Replay trains on the new examples plus ``--replay-ratio`` replayed ones: its cost is set
beside its extra tokens.

    python bench/finetune_throughput.py [--model smollm2-135m] [--examples 16] [--rounds 3] [--threads 1]
    python bench/finetune_throughput.py --threads-sweep 1,2   # the plain loop alone at each thread count

Target (issue 14): finetune naive >= 0.95 of the plain Trainer's tokens/s; replay's time within its tokens.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from transformers import AutoModelForCausalLM, DataCollatorForSeq2Seq, Trainer, TrainingArguments
from transformers.trainer_callback import PrinterCallback

from lifelong.llm.corpora import split_documents
from lifelong.llm.finetune import finetune
from lifelong.llm.finetune_data import FinetuneSettings, prepare
from lifelong.llm.instruct import Example, load_task
from lifelong.llm.models import load_model, offline, resolve_model_folder
from lifelong.llm.plans import replayed_examples

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


def plain(
    folder: Path, tokenizer: Any, examples: list[Example], settings: FinetuneSettings, out: Path
) -> float:
    """Seconds of a plain Trainer on ``examples``, from building it to the end of training; the model
    loaded fresh from ``folder`` before, as `finetune` loads it."""
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
        use_cpu=True,
        seed=settings.seed,
        data_seed=settings.seed,
    )
    with offline():
        model = AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True)
    started = time.perf_counter()
    with offline():
        trainer = Trainer(
            model=model,
            args=arguments,
            train_dataset=data,
            data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100),
        )
        trainer.remove_callback(PrinterCallback)
        trainer.train()
    return time.perf_counter() - started


def ours(strategy: str, options: argparse.Namespace, tasks: tuple[Path, Path], out: Path) -> dict[str, float]:
    """`finetune` with ``strategy``: its training seconds, evaluation seconds and whole wall time."""
    new, old = tasks
    document = finetune(
        options.model,
        [new],
        out,
        strategies=strategy,
        replay=[old] if strategy == "replay" else None,
        replay_ratio=options.replay_ratio,
        settings=settings_of(options),
        overwrite=True,
        console=Console(file=io.StringIO()),
    )
    record = document["results"][0]
    return {
        "train": record["train_seconds"],
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
        device="cpu",
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
            seconds[n].append(plain(folder, tokenizer, examples, settings_of(options), out))
            print(
                f"  round {round_ + 1}: {n} threads {tokens(examples) / seconds[n][-1]:,.0f} tok/s",
                flush=True,
            )
    for n in counts:
        print(f"{n} threads: median {tokens(examples) / statistics.median(seconds[n]):,.0f} tok/s")


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
            f"replay adds {len(replayed)} ({tokens(replayed)} tokens); {options.rounds} rounds"
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
                    rows[kind].append(
                        {"train": plain(model_folder, tokenizer, new, settings, folder / "plain")}
                    )
                else:
                    rows[kind].append(ours(kind, options, tasks, folder / kind))
            speed = {kind: row[-1]["train"] for kind, row in rows.items()}
            print(
                f"  round {round_ + 1}: train seconds plain {speed['plain']:.1f}, naive {speed['naive']:.1f}, "
                f"replay {speed['replay']:.1f}",
                flush=True,
            )
        report(rows, tokens(new), tokens(replayed))


def report(rows: dict[str, list[dict[str, float]]], new_tokens: int, replay_tokens: int) -> None:
    naive = statistics.median(
        p["train"] / n["train"] for p, n in zip(rows["plain"], rows["naive"], strict=True)
    )
    cost = statistics.median(
        r["train"] / n["train"] for r, n in zip(rows["replay"], rows["naive"], strict=True)
    )
    plain_speed = new_tokens / statistics.median(r["train"] for r in rows["plain"])
    print(f"plain Trainer: {plain_speed:,.0f} tok/s")
    print(
        f"finetune naive / plain tokens/s: median ratio {naive:.3f}  (target >= 0.95: {'met' if naive >= 0.95 else 'NOT met'})"
    )
    extra = (new_tokens + replay_tokens) / new_tokens
    print(
        f"replay / naive training time: {cost:.3f} for {extra:.3f}x the tokens ({'within' if cost <= extra * 1.05 else 'beyond'})"
    )
    for kind in ("naive", "replay"):
        share = statistics.median(r["eval"] / r["wall"] for r in rows[kind])
        train = statistics.median(r["train"] / r["wall"] for r in rows[kind])
        wall = statistics.median(r["wall"] for r in rows[kind])
        print(
            f"finetune {kind}: wall {wall:.1f}s; training {train:.0%}, evaluation {share:.0%}, the rest {1 - train - share:.0%}"
        )


if __name__ == "__main__":
    main()
