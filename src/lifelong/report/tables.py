"""The tables a run prints when it ends: each strategy's accuracy matrix and metrics, then a
comparison across strategies."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from lifelong.report.text import safe_text

METRIC_LABELS = {
    "average_accuracy": "avg acc",
    "average_incremental_accuracy": "avg inc acc",
    "forgetting": "forgetting",
    "bwt": "BWT",
    "fwt": "FWT",
}


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def matrix_table(result: dict[str, Any], task_names: list[str]) -> Table:
    strategy = safe_text(result["strategy"])
    table = Table(title=f"{strategy}: accuracy matrix (row = after training, column = task)")
    table.add_column("after", style="bold")
    for name in task_names:
        table.add_column(safe_text(name), justify="right")
    for name, row in zip(task_names, result["accuracy_matrix"], strict=True):
        table.add_row(safe_text(name), *(_fmt(v) for v in row))
    return table


def metrics_table(result: dict[str, Any]) -> Table:
    table = Table(title=f"{safe_text(result['strategy'])}: metrics")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, label in METRIC_LABELS.items():
        table.add_row(label, _fmt(result["metrics"][key]))
    rates = result["metrics"]["forgetting_rate"]
    table.add_row("forgetting rate", ", ".join(f"{safe_text(k)}={_fmt(v)}" for k, v in rates.items()))
    table.add_row("train seconds", f"{result['train_seconds']:.2f}")
    return table


def comparison_table(results: list[dict[str, Any]]) -> Table:
    table = Table(title="comparison across strategies")
    table.add_column("strategy", style="bold")
    for label in METRIC_LABELS.values():
        table.add_column(label, justify="right")
    table.add_column("train s", justify="right")
    for result in results:
        metrics = result["metrics"]
        table.add_row(
            safe_text(result["strategy"]),
            *(_fmt(metrics[key]) for key in METRIC_LABELS),
            f"{result['train_seconds']:.2f}",
        )
    return table


def print_results(console: Console, document: dict[str, Any], task_names: list[str]) -> None:
    for result in document["results"]:
        console.print(matrix_table(result, task_names))
        console.print(metrics_table(result))
    if len(document["results"]) > 1:
        console.print(comparison_table(document["results"]))
