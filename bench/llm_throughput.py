"""Tokens per second of `ContinualTrainer` against a plain ``transformers.Trainer``, in one process.

Same model (copies of one initial state), same data (the built-in code corpus with 20% prose
replayed, mixed once by token share; with ``--epochs`` E above 1, the first blocks of it, as many
as make ``--steps`` steps in E epochs), same batch, same optimizer and schedule. Runs alternate
(plain, ours, ours, plain, ...) so machine drift hits both alike, and the median of the per-round
ratios is printed. A run's speed is its tokens over its estimated time: per epoch, its fastest step
(after a few warm-up steps) times that epoch's steps. Other jobs on a shared machine only ever add
time to a step, and by as much as a third on this one, so the fastest is the closest to the step's
own cost (as ``timeit`` advises); a cached epoch and the epoch that fills the cache each count for
what they are. Printed beside the median of the per-round ratios: the same ratio from each side's
fastest estimate of each epoch over all rounds (a round's runs of a few seconds still moved by
+-15% when the machine was shared). Steps are timed on process CPU time on a CPU (steadier when other
jobs share the machine; ``--clock wall`` for wall time) and on wall time on a GPU.

Variants against the plain Trainer: no penalty; distillation (LwF, T=2, alpha=0.5) with the teacher
run every step (``cache=none``); the same with the teacher's top-k logits cached once per example
(``cache=topk``: the top 32 tokens and 32 drawn from the rest). Then how far the kept KL is from the
full one, in value and in the direction of its gradient, with the rest lumped (samples=0) or drawn:
tiny-llama trained on prose is the teacher, the same trained on code after it the student, on
held-out code blocks. The drawn estimate is unbiased but noisy, so one draw's gradient points away
from the exact one by more than its average does; what that does to forgetting is in the README.

    python bench/llm_throughput.py [--model tiny-llama|DIR] [--steps 39] [--epochs 3] [--rounds 7]

Targets: no penalty >= 0.95 of the plain Trainer (issue 5); distillation with the cache >= 0.75 of
no penalty where epochs > 1 (issue 16: ``--baseline continual --kinds distill-topk``).
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
from lifelong.llm.data import CausalCollator, blocks_dataset, mix_by_token_share, pack
from lifelong.llm.models import load_model, vocab_size
from lifelong.llm.trainer import ContinualTrainer
from lifelong.models.hf import offline
from lifelong.strategies import LwF
from lifelong.strategies.teacher_cache import distilled_rows, kept_distillation, topk_targets

WARMUP_STEPS = 3
KL_CHECKS = [(16, 0), (64, 0), (256, 0), (32, 32), (64, 64)]  # (k, samples) of the top-k KL check
VARIANTS = {  # what each kind adds to ContinualTrainer
    "continual": [],
    "distill": ["lwf:alpha=0.5,temperature=2.0"],
    "distill-topk": ["lwf:alpha=0.5,temperature=2.0,cache=topk,k=32,samples=32"],
}


class StepClock(TrainerCallback):
    """The clock at the end of every optimizer step: the loop alone, not setup or teardown."""

    def __init__(self, clock: str) -> None:
        self.read = time.process_time if clock == "cpu" else time.perf_counter
        self.times: list[float] = []

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.times.append(self.read())

    def epochs(self, steps_per_epoch: int) -> list[float]:
        """Estimated time of each epoch: its fastest step times its steps."""
        steps = [b - a for a, b in zip(self.times, self.times[1:], strict=False)]  # step i + 1's duration
        seconds = []
        for start in range(0, len(self.times), steps_per_epoch):
            timed = steps[max(start - 1, WARMUP_STEPS) : start + steps_per_epoch - 1]
            seconds.append(min(timed) * min(steps_per_epoch, len(self.times) - start))
        return seconds


def run(kind: str, initial: Any, data: Any, options: argparse.Namespace, out: Path) -> list[float]:
    """Estimated seconds of each epoch of one training run of ``kind`` (plain, or one of `VARIANTS`)."""
    model = copy.deepcopy(initial)
    clock = StepClock(options.clock)
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
            trainer = ContinualTrainer(**common, strategies="+".join(VARIANTS[kind]) or None)
        trainer.remove_callback(PrinterCallback)  # it prints each run's summary dict
        trainer.train()
    return clock.epochs(min(options.steps, -(-len(data) // options.batch_size)))


def compare(kind: str, initial: Any, data: Any, options: argparse.Namespace, out: Path) -> float:
    """The median over alternating rounds of ``kind``'s tokens/s over the baseline's (the plain
    Trainer, or `--baseline`; the whole run, and with several epochs the first and the later ones
    apart)."""
    base = options.baseline
    parts: dict[str, list[float]] = {"whole": [], "epoch 1": [], "later epochs": []}
    tokens = options.steps * options.batch_size * options.block_size
    every: dict[str, list[list[float]]] = {base: [], kind: []}  # each round's epoch estimates
    for round_ in range(options.rounds):
        order = (base, kind) if round_ % 2 == 0 else (kind, base)
        seconds = {name: run(name, initial, data, options, out) for name in order}
        for name, epochs in seconds.items():
            every[name].append(epochs)
        theirs, ours = seconds[base], seconds[kind]
        parts["whole"].append(sum(theirs) / sum(ours))
        if len(ours) > 1:
            parts["epoch 1"].append(theirs[0] / ours[0])
            parts["later epochs"].append(sum(theirs[1:]) / sum(ours[1:]))
        print(
            f"  round {round_ + 1}: {base} {tokens / sum(theirs):,.0f} tok/s, {kind} {tokens / sum(ours):,.0f} "
            f"tok/s, ratio {parts['whole'][-1]:.3f}",
            flush=True,
        )
    if parts["epoch 1"]:
        print(
            f"  by epoch (medians): epoch 1 {statistics.median(parts['epoch 1']):.3f}, "
            f"later epochs {statistics.median(parts['later epochs']):.3f}"
        )
    floor = {name: sum(map(min, zip(*runs, strict=True))) for name, runs in every.items()}
    print(f"  fastest over all rounds, epoch by epoch: ratio {floor[base] / floor[kind]:.3f}")
    return statistics.median(parts["whole"])


def trained(model: Any, blocks: torch.Tensor, steps: int, options: argparse.Namespace) -> Any:
    """A copy of ``model`` after ``steps`` AdamW steps on ``blocks`` (a plain loop: only the weights matter)."""
    model = copy.deepcopy(model).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3 * options.lr)
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        batch = blocks[torch.randint(len(blocks), (options.batch_size,), generator=generator)]
        model(input_ids=batch, labels=batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.eval()


def kl_error(initial: Any, old: Any, new: Any, options: argparse.Namespace) -> None:
    """How far the kept KL (float16 as cached) is from the full KL, per k and samples (one draw): the
    value, and the cosine between the two gradients with respect to the student's logits."""
    teacher = trained(initial, old.train, options.kl_steps, options)
    student = trained(teacher, new.train, options.kl_steps // 3, options)
    blocks = new.heldout[: options.batch_size]
    with torch.no_grad():
        z_t, z_s = teacher(input_ids=blocks).logits, student(input_ids=blocks).logits
        perplexity = float(teacher(input_ids=old.heldout, labels=old.heldout).loss.exp())
    print(
        f"top-k KL against the full KL: teacher trained {options.kl_steps} steps on prose (held-out "
        f"perplexity {perplexity:.0f}), student {options.kl_steps // 3} more on code; "
        f"{z_t[:, :-1].shape[:2].numel()} held-out code positions"
    )
    for temperature in (1.0, 2.0):
        student_logits = z_s.clone().requires_grad_()
        full, _ = LwF.token_distillation(student_logits, z_t, None, temperature)
        (exact,) = torch.autograd.grad(full, student_logits)
        print(f"  T={temperature:g}: full KL {full.item():.4f} per token")
        for k, samples in KL_CHECKS:
            torch.manual_seed(0)
            kept = topk_targets(distilled_rows(z_t, None), k, samples, temperature).to(torch.float16)
            approx = kept_distillation(student_logits, None, kept, temperature)
            (grad,) = torch.autograd.grad(approx, student_logits)
            cosine = float(torch.nn.functional.cosine_similarity(grad.flatten(), exact.flatten(), dim=0))
            print(
                f"    k={k:<4} samples={samples:<3} {approx.item():.4f} ({(approx / full - 1).item():+.1%}), "
                f"gradient cosine {cosine:.3f}; teacher's rest mass {float(kept.rest[:, 0].float().exp().mean()):.1%}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-llama")
    parser.add_argument("--steps", type=int, default=39)
    parser.add_argument("--epochs", type=int, default=3, help="passes over the data in --steps steps")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--block-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--replay-ratio", type=float, default=0.2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--clock", choices=("cpu", "wall"), default=None, help="default: cpu on a CPU")
    parser.add_argument(
        "--baseline",
        choices=("plain", *VARIANTS),
        default="plain",
        help="what each kind is compared with: the plain Trainer, or a ContinualTrainer variant "
        "(continual: no penalty, issue 16's reference for distillation)",
    )
    parser.add_argument(
        "--kinds", default=",".join(VARIANTS), help="variants to compare, comma-separated (empty: none)"
    )
    parser.add_argument("--skip-kl", action="store_true", help="skip the top-k KL error check")
    parser.add_argument("--kl-steps", type=int, default=300, help="training steps of the KL check's teacher")
    options = parser.parse_args()
    options.clock = options.clock or ("cpu" if options.device == "cpu" else "wall")
    if options.steps // options.epochs <= WARMUP_STEPS + 1:
        parser.error(
            f"--steps / --epochs must exceed {WARMUP_STEPS + 1}: the first epoch's warm-up steps are not timed"
        )

    initial, tokenizer = load_model(options.model)
    vocab = vocab_size(initial)
    new = pack(load_corpus("code"), tokenizer, options.block_size, vocab)
    old = pack(load_corpus("prose"), tokenizer, options.block_size, vocab)
    data = mix_by_token_share(new.train, old.train, options.replay_ratio, seed=0)
    if options.epochs > 1:  # the same examples every epoch: what a teacher cache is for
        data = blocks_dataset(
            torch.as_tensor(data[: options.steps // options.epochs * options.batch_size]["input_ids"])
        )
    print(
        f"model {options.model}, {initial.num_parameters():,} parameters, vocabulary {vocab}, device "
        f"{options.device}, torch threads {torch.get_num_threads()}, {options.clock} clock; batch "
        f"{options.batch_size} x {options.block_size} tokens, {options.steps} steps per run "
        f"({WARMUP_STEPS} warm-up) over {options.epochs} epoch(s) of {len(data)} blocks (code + "
        f"{options.replay_ratio:.0%} prose replay), {options.rounds} rounds"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for kind in [k for k in options.kinds.split(",") if k and k != options.baseline]:
            against = (
                "plain Trainer" if options.baseline == "plain" else f"ContinualTrainer, {options.baseline}"
            )
            print(f"ContinualTrainer, {kind} ({' '.join(VARIANTS[kind]) or 'no penalty'}) vs {against}:")
            median = compare(kind, initial, data, options, Path(tmp))
            print(f"  median ratio {median:.3f}", flush=True)
    if not options.skip_kl:
        kl_error(initial, old, new, options)


if __name__ == "__main__":
    main()
