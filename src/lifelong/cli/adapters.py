"""`lifelong adapters ...`: per-task LoRA adapters from the command line, a thin shell over `AdapterLibrary`.

Every command takes ``--root`` (the folder of adapters, default ``adapters``); those that run the model
also take ``--base`` (a saved Hugging Face model folder or smollm2-135m, loaded offline). Tables are
Rich; ``--json`` prints plain JSON for scripts. Errors are `LifelongError`s: the `lifelong` entry
point prints them on one line and exits with status 2.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from lifelong.adapters import (
    CONFIG_FILE,
    AdapterInfo,
    AdapterLibrary,
    adapter_folder,
    check_deletable,
    delete_adapter,
    inspect_adapter,
    list_adapters,
    read_meta,
)
from lifelong.cli.options import AllowPickle
from lifelong.data.jsonl import json_lines, parse_json
from lifelong.errors import LifelongError
from lifelong.llm.corpora import read_text
from lifelong.report.text import safe_text, terminal, visible

adapters_app = typer.Typer(
    no_args_is_help=True,
    help="Per-task LoRA adapters on one frozen base model: train, list, show, merge, route, export, delete.",
)
console = terminal()

Root = Annotated[Path, typer.Option("--root", help="Folder that holds the adapters.")]
Base = Annotated[
    Path, typer.Option("--base", help="Base model: a saved Hugging Face model folder, or smollm2-135m.")
]
Json = Annotated[bool, typer.Option("--json", help="Print JSON for scripts instead of a table.")]
Kind = Annotated[
    str | None,
    typer.Option(help="causal-lm or classification, for a base whose class does not say (a bare encoder)."),
]
Labels = Annotated[
    int | None, typer.Option(help="Number of labels when --kind classification loads an encoder.")
]


def _library(
    base: Path,
    root: Path,
    kind: str | None = None,
    num_labels: int | None = None,
    allow_pickle: bool = False,
) -> AdapterLibrary:

    if kind not in (None, "causal-lm", "classification"):
        raise LifelongError(f"unknown --kind '{kind}'; use causal-lm or classification")
    return AdapterLibrary(base, root, kind=kind, num_labels=num_labels, allow_pickle=allow_pickle)  # type: ignore[arg-type]


def read_examples(path: Path) -> list[Any]:
    """Examples from a file: JSON Lines or a JSON list of {"text"|"input_ids", "label"} rows, or plain
    text with one example per non-empty line."""
    text = read_text(path)  # as finetune reads its files: a BOM dropped, a folder or pipe named as such
    if path.suffix == ".jsonl":
        rows: list[Any] = [parse_json(line, f"{path} line {n}") for n, line in json_lines(text)]
    elif path.suffix == ".json":
        rows = parse_json(text, str(path), "fix its syntax")
        if not isinstance(rows, list):
            raise LifelongError(f"{path} must hold a JSON list of examples")
    else:
        rows = [line for _, line in json_lines(text)]
    if not rows:
        raise LifelongError(f"{path} has no examples")
    return rows


def _echo_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2, default=str))


def _eval_text(info: AdapterInfo) -> str:
    if not info.eval or info.eval.get("value") is None:
        return "—"
    return safe_text(f"{info.eval.get('metric')} {info.eval['value']:.3g}")


def _table(infos: list[AdapterInfo], title: str) -> Table:
    """One row per adapter; narrow enough for an 80-column terminal (`show` and `--json` have the rest)."""
    table = Table(title=safe_text(title))
    table.add_column("task", no_wrap=True)
    table.add_column("kind")
    table.add_column("r/alpha", justify="right")
    table.add_column("targets")
    table.add_column("data", justify="right")
    table.add_column("eval")
    table.add_column("size", justify="right")
    table.add_column("created")
    table.add_column("status")
    for info in infos:
        kind = info.kind if not info.parents else f"{info.method}({'+'.join(info.parents)})"
        cells = (
            info.task,
            kind,
            f"{info.r}/{info.alpha:g}" if info.r is not None and info.alpha is not None else "—",
            ",".join(info.target_modules) or "—",
            str(info.data_size if info.data_size is not None else "—"),
        )
        table.add_row(
            *map(safe_text, cells),
            _eval_text(info),
            f"{info.size_bytes / 1024:.0f} KiB" if info.size_bytes else "—",
            safe_text(info.created[:10]) or "—",
            "ok" if info.ok else f"[red]{safe_text(info.problem)}[/]",
        )
    return table


@adapters_app.command("list")
def list_command(
    root: Root = Path("adapters"),
    base: Annotated[
        Path | None, typer.Option("--base", help="Also check each adapter fits this base.")
    ] = None,
    kind: Kind = None,
    num_labels: Labels = None,
    json_: Json = False,
    allow_pickle: AllowPickle = False,
) -> None:
    """The adapters in --root: rank, targets, data size, eval score, size, and any problem."""

    infos = (
        _library(base, root, kind, num_labels, allow_pickle).list()
        if base is not None
        else list_adapters(root)
    )
    if json_:
        _echo_json([i.to_json() for i in infos])
    elif not infos:
        console.print(f"no adapters in {safe_text(root)}")
    else:
        console.print(_table(infos, f"adapters in {root}"))


@adapters_app.command("show")
def show(task: str, root: Root = Path("adapters"), json_: Json = False) -> None:
    """Everything recorded about one adapter (its lifelong.json and PEFT config)."""

    folder = adapter_folder(root, task)
    meta = read_meta(folder)
    try:
        peft_config = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        peft_config = None
    if json_:
        _echo_json({"lifelong": meta, "adapter_config": peft_config, "path": str(folder)})
        return
    info = inspect_adapter(folder)
    console.print(_table([info], f"adapter {task}"))
    table = Table(show_header=False, title="record")
    for key in ("base", "training", "eval", "labels", "parents", "weights", "method", "density", "versions"):
        if meta.get(key) is not None:
            table.add_row(key, safe_text(json.dumps(meta[key])))
    console.print(table)


@adapters_app.command("train")
def train(
    task: str,
    data: Annotated[
        Path, typer.Option(help="Examples: .jsonl/.json rows {text|input_ids, label} or .txt lines.")
    ],
    base: Base,
    root: Root = Path("adapters"),
    eval_data: Annotated[
        Path | None, typer.Option(help="Held-out examples for the recorded eval score.")
    ] = None,
    r: Annotated[int, typer.Option(help="LoRA rank.")] = 16,
    alpha: Annotated[int, typer.Option(help="LoRA alpha (scale = alpha / r).")] = 32,
    dropout: Annotated[float, typer.Option(help="LoRA dropout.")] = 0.05,
    targets: Annotated[
        str | None, typer.Option(help="Comma-separated module names.  [default: by architecture]")
    ] = None,
    epochs: Annotated[int, typer.Option(help="Epochs.")] = 3,
    lr: Annotated[float, typer.Option(help="Learning rate (AdamW).")] = 5e-4,
    batch_size: Annotated[int, typer.Option(help="Batch size.")] = 8,
    max_length: Annotated[int, typer.Option(help="Tokens kept per example.")] = 128,
    seed: Annotated[
        int, typer.Option(help="Seed for the adapter's initialisation, dropout and batches.")
    ] = 0,
    kind: Kind = None,
    num_labels: Labels = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing adapter for TASK.")
    ] = False,
    json_: Json = False,
    allow_pickle: AllowPickle = False,
) -> None:
    """Train one LoRA adapter for TASK on the frozen --base and save it in --root/TASK."""
    library = _library(base, root, kind, num_labels, allow_pickle)
    lora: dict[str, Any] = {"r": r, "lora_alpha": alpha, "lora_dropout": dropout}
    if targets:
        lora["target_modules"] = [t.strip() for t in targets.split(",") if t.strip()]
    info = library.train(
        task,
        read_examples(data),
        lora,
        eval_dataset=read_examples(eval_data) if eval_data is not None else None,
        overwrite=overwrite,
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        max_length=max_length,
        seed=seed,
    )
    if json_:
        _echo_json(info.to_json())
    else:
        console.print(_table([info], f"trained adapter {task}"))


@adapters_app.command("merge")
def merge(
    tasks: Annotated[list[str], typer.Argument(help="Adapters to merge.")],
    base: Base,
    root: Root = Path("adapters"),
    method: Annotated[
        str,
        typer.Option(
            help="cat (exact, default), linear, svd, ties, dare_ties, dare_linear, magnitude_prune."
        ),
    ] = "cat",
    weights: Annotated[
        str | None, typer.Option(help="Comma-separated weights, one per task.  [default: 1/n each]")
    ] = None,
    name: Annotated[
        str | None, typer.Option(help="Name of the merged adapter.  [default: a-b-method]")
    ] = None,
    density: Annotated[float | None, typer.Option(help="Share kept by ties/dare/magnitude_prune.")] = None,
    json_: Json = False,
    allow_pickle: AllowPickle = False,
) -> None:
    """Merge adapters into a new one (PEFT add_weighted_adapter) and save it like any other."""
    parsed = None
    if weights is not None:
        try:
            parsed = [float(w) for w in weights.split(",")]
        except ValueError:
            raise LifelongError(f"--weights must be comma-separated numbers, got '{weights}'") from None
    info = _library(base, root, allow_pickle=allow_pickle).merge(tasks, parsed, method, name, density=density)  # type: ignore[arg-type]
    if json_:
        _echo_json(info.to_json())
    else:
        console.print(_table([info], f"merged adapter {info.task}"))


@adapters_app.command("route")
def route(
    base: Base,
    root: Root = Path("adapters"),
    text: Annotated[
        list[str] | None, typer.Option("--text", help="An example to route (repeatable).")
    ] = None,
    data: Annotated[Path | None, typer.Option(help="A file of examples to route.")] = None,
    tasks: Annotated[
        str | None, typer.Option(help="Comma-separated candidates.  [default: all trained]")
    ] = None,
    by: Annotated[
        str,
        typer.Option(
            help="loss: each adapter's loss (causal LM) or confidence (classifier); prompts (causal LM): "
            "nearest adapter's training prompts, else the bare base (__base__)."
        ),
    ] = "loss",
    kind: Kind = None,
    num_labels: Labels = None,
    json_: Json = False,
    allow_pickle: AllowPickle = False,
) -> None:
    """Pick the adapter for each example: lowest loss (causal LM), highest confidence (classifier), or
    with --by prompts the adapter trained on prompts like it, else the bare base."""
    if by not in ("loss", "prompts"):
        raise LifelongError(f"--by must be loss or prompts, got {by!r}")
    examples: list[Any] = list(text or [])
    if data is not None:
        examples += read_examples(data)
    if not examples:
        raise LifelongError("nothing to route; give --text or --data")
    candidates = [t.strip() for t in tasks.split(",") if t.strip()] if tasks else None
    result = _library(base, root, kind, num_labels, allow_pickle).route(examples, candidates, by=by)  # type: ignore[arg-type]
    if json_:
        _echo_json(result.to_json())
        return
    wins = "higher" if result.metric == "confidence" else "lower"
    table = Table(title=f"routing ({safe_text(result.metric)}: {wins} wins)")
    for column in ("#", "example", "adapter", result.metric, *(["prediction"] if result.predictions else [])):
        table.add_column(column)
    for i, choice in enumerate(result.choices):
        shown = examples[i] if isinstance(examples[i], str) else json.dumps(examples[i])
        row = [str(i), safe_text(shown[:60] + ("…" if len(shown) > 60 else "")), safe_text(choice)]
        row.append(f"{result.scores[i]:.4f}")
        if result.predictions is not None:
            row.append(safe_text(result.predictions[i]))
        table.add_row(*row)
    console.print(table)


@adapters_app.command("export")
def export(
    task: str,
    base: Base,
    root: Root = Path("adapters"),
    out: Annotated[Path | None, typer.Option(help="Output folder.  [default: ROOT/_exports/TASK]")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a non-empty --out.")] = False,
    json_: Json = False,
    allow_pickle: AllowPickle = False,
) -> None:
    """Fold TASK's adapter into the base and write a standalone model folder (no PEFT needed)."""
    path = _library(base, root, allow_pickle=allow_pickle).merge_and_unload(task, out, overwrite=overwrite)
    if json_:
        _echo_json({"task": task, "path": str(path)})
    else:
        console.print(f"exported {safe_text(task)} to {safe_text(path)}")


@adapters_app.command("delete")
def delete(
    task: str,
    root: Root = Path("adapters"),
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    json_: Json = False,
) -> None:
    """Delete TASK's adapter folder."""

    folder = adapter_folder(root, task)
    check_deletable(folder)  # before asking: the answer would not matter
    if not yes and not typer.confirm(f"delete adapter {visible(folder)}?"):
        raise typer.Exit(1)
    delete_adapter(root, task)
    if json_:
        _echo_json({"deleted": task, "path": str(folder)})
    else:
        console.print(f"deleted {safe_text(folder)}")
