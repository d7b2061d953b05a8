"""Forgetting in continual instruction tuning, and what replay, distillation and self-replay do about it.

tiny-llama (a 0.7M-parameter Llama built locally, with a BPE tokenizer trained on the built-in
corpora) learns the built-in ``skills`` one after the other: upper-casing a word, reversing a word,
moving each letter one on. Plain sequential fine-tuning forgets the first skill; this script prints by how
much exact match drops for it, and how much of that drop each strategy cuts. The same as::

    lifelong finetune --data skills -s naive -s replay -s lwf -s lwf:prompts=earlier -s self-replay \
        --out runs/finetune-skills

``replay`` replays 10% of the training examples from earlier skills; ``self-replay`` replays 10% too,
but of the model's own answers to earlier skills' prompts, so it never reads their answers again.
``lwf`` distills the previous model on the new skill's prompts, as published; with
``prompts=earlier`` it distills it instead on its own answers to earlier skills' prompts (10% of the
examples, no label on them). The first skill is trained once and shared by all. About ten to eleven minutes
on one CPU core.

    python examples/finetune_skills.py [--out runs/finetune-skills]
"""

from __future__ import annotations

import argparse
import time

import torch
from rich.console import Console

from lifelong.llm.finetune import finetune, forgetting_rows, tiny_skills_settings


def main() -> None:
    parser = argparse.ArgumentParser(description="skills with tiny-llama: forgetting per strategy")
    parser.add_argument("--out", default="runs/finetune-skills")
    parser.add_argument("--replay-ratio", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    options = parser.parse_args()
    torch.set_num_threads(1)  # a 0.7M-parameter model: more threads mostly wait for each other

    console = Console()
    started = time.perf_counter()
    document = finetune(
        "tiny-llama",
        "skills",
        options.out,
        strategies=["naive", "replay", "lwf", "lwf:prompts=earlier", "self-replay"],
        replay_ratio=options.replay_ratio,
        settings=tiny_skills_settings(seed=options.seed),
        overwrite=True,
        console=console,
    )
    rows = {row["strategy"]: row for row in forgetting_rows(document)}
    ratio = f"ratio={options.replay_ratio:g}"

    def cut(label: str) -> float:
        return rows[label]["cut"] or 0.0

    checks = [
        ("naive forgets the first skill (exact-match drop >= 0.3)", (rows["naive"]["drop"] or 0) >= 0.3),
        ("replay cuts that drop by >= 50%", cut(f"replay:{ratio}") >= 0.5),
        ("lwf on earlier prompts cuts it by >= 50%", cut(f"lwf:prompts=earlier,{ratio}") >= 0.5),
        ("self-replay cuts it by >= 25%", cut(f"self-replay:{ratio}") >= 0.25),
    ]
    console.print(f"lwf on the new skill's prompts (as published) cuts it by {cut('lwf'):.0%}")
    for text, ok in checks:
        console.print(f"{'[green]yes[/]' if ok else '[red]no[/]'}  {text}")
    console.print(f"wall time {time.perf_counter() - started:.0f}s")


if __name__ == "__main__":
    main()
