"""What `lifelong pretrain` and `lifelong finetune` print at the end: each composition's matrix, and
how much of naive's forgetting each one cuts. Names of tasks and compositions come from users' files
and flags, so they are printed escaped."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from lifelong.report.noise import WATCH_HEADER, noise_lines, watch_rows
from lifelong.report.text import safe_text
from lifelong.report.view import view_of

if TYPE_CHECKING:
    from rich.console import Console


def forgetting_summary(document: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per strategy: old domains' perplexity rise, the last domain's perplexity, and both against naive.

    ``rise`` is the mean over old domains of (final perplexity - perplexity right after learning it);
    ``cut`` is ``1 - rise / naive's rise`` (0.5 = half the forgetting); ``last_vs_naive`` is the
    relative change of the last domain's perplexity against naive (+0.05 = 5% worse).
    """
    rows = []
    for result in document["results"]:
        r = result["accuracy_matrix"]
        t = len(r)
        rise = sum(r[t - 1][j] - r[j][j] for j in range(t - 1)) / (t - 1) if t > 1 else None
        rows.append({"strategy": result["strategy"], "rise": rise, "last": r[t - 1][t - 1]})
    naive = next((row for row in rows if row["strategy"] == "naive"), None)
    for row in rows:
        row["cut"] = row["last_vs_naive"] = None
        # A cut is only meaningful against forgetting: if naive's old domains did not get worse, none.
        if naive is not None and naive["rise"] is not None and naive["rise"] > 0 and row["rise"] is not None:
            row["cut"] = 1 - row["rise"] / naive["rise"]
        if naive is not None:
            row["last_vs_naive"] = row["last"] / naive["last"] - 1
    return rows


def print_pretrain_results(console: Console, document: Mapping[str, Any]) -> None:
    from rich.table import Table

    names = document["tasks"]
    for result in document["results"]:
        table = Table(
            title=f"{safe_text(result['strategy'])}: perplexity (row = after training, column = domain; lower is better)",
            min_width=72,  # wide enough for the title on one line
        )
        table.add_column("after", style="bold")
        for name in names:
            table.add_column(safe_text(name), justify="right")
        start_se = result.get("initial_scores_se") or [None] * len(names)
        table.add_row("(start)", *map(_with_se, result["initial_scores"], start_se))
        errors = result.get("accuracy_matrix_se") or [[None] * len(names)] * len(names)
        for name, row, row_se in zip(names, result["accuracy_matrix"], errors, strict=True):
            table.add_row(safe_text(name), *map(_with_se, row, row_se))
        console.print(table)
    print_watch(console, document)
    if len(names) < 2:
        return
    table = Table(title="forgetting: old domains' perplexity rise after the later ones (lower is better)")
    table.add_column("strategy", no_wrap=True)
    for column in ("old-domain rise", "cut vs naive", f"{safe_text(names[-1])} ppl", "vs naive", "train s"):
        table.add_column(column, justify="right")
    for row, result in zip(forgetting_summary(document), document["results"], strict=True):
        table.add_row(
            safe_text(row["strategy"]),
            f"{row['rise']:+.2f}",
            "—" if row["cut"] is None else f"{row['cut']:.0%}",
            f"{row['last']:.2f}",
            "—" if row["last_vs_naive"] is None else f"{row['last_vs_naive']:+.1%}",
            f"{result['train_seconds']:.1f}",
        )
    console.print(table)


def forgetting_rows(document: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per composition, for the first task: its score drop (right after it, or as given for replay data,
    minus final), its answer-loss rise, and the share of naive's drop and rise each cuts."""
    rows = []
    sign = 1 if document.get("higher_is_better", True) else -1
    for result in document["results"]:
        r, loss = result["accuracy_matrix"], result["loss_matrix"]
        several = len(r) > 1
        rows.append(
            {
                "strategy": result["strategy"],
                "first": document["tasks"][0],
                "drop": sign * (r[0][0] - r[-1][0]) if several else None,
                "loss_rise": loss[-1][0] - loss[0][0] if several else None,
                "final_mean": sum(r[-1]) / len(r[-1]),
                "train_seconds": result["train_seconds"],
            }
        )
    naive = next((row for row in rows if row["strategy"] == "naive"), None)
    for row in rows:
        for key, cut in (("drop", "cut"), ("loss_rise", "loss_cut")):
            row[cut] = None
            # A cut only means something against forgetting: if naive did not forget, there is none.
            if naive is not None and naive[key] is not None and naive[key] > 0 and row[key] is not None:
                row[cut] = 1 - row[key] / naive[key]
    return rows


def print_finetune_results(console: Console, document: Mapping[str, Any]) -> None:
    from rich.table import Table

    names = document["tasks"]
    score = safe_text(document["score_name"])
    for result in document["results"]:
        table = Table(
            title=f"{safe_text(result['strategy'])}: {score} (row = after training, column = task)",
            min_width=60,
        )
        table.add_column("after", style="bold")
        for name in names:
            table.add_column(safe_text(name), justify="right")
        errors = result.get("accuracy_matrix_se") or [[None] * len(names)] * len(names)
        for name, row, row_se in zip(names, result["accuracy_matrix"], errors, strict=True):
            table.add_row(safe_text(name), *map(_with_se, row, row_se))
        routed = result.get("routed", {}).get("sets", [])  # the tasks', then the watch sets'
        if routed:
            right = f"routed, {result['routed']['right']:.0%} right"
            table.add_row(right, *(_with_se(r["score"], r["score_se"]) for r in routed[: len(names)]))
        if "merged" in result:
            table.add_row("merged", *("—" if v is None else f"{v:.3f}" for v in result["merged"]["scores"]))
        console.print(table)
        for watched in routed[len(names) :]:
            line = f"  watch set {watched['name']} routed: {_with_se(watched['score'], watched['score_se'])}"
            line += f", {watched['right']:.0%} to the bare base"
            console.print(safe_text(line), highlight=False)
    print_watch(console, document)
    if len(names) < 2:
        return
    table = Table(
        title=f"forgetting of the first task, {safe_text(names[0])} (drop: {score}; rise: answer loss)"
    )
    # A long composition's name folds onto more lines rather than cutting the numbers short.
    table.add_column("strategy", overflow="fold")
    # "cut": the share of naive's drop (or loss rise) that the strategy avoids.
    for column in ("drop", "cut", "loss rise", "loss cut", "final mean", "train s"):
        table.add_column(column, justify="right", no_wrap=True)
    for row in forgetting_rows(document):
        table.add_row(
            safe_text(row["strategy"]),
            "—" if row["drop"] is None else f"{row['drop']:+.3f}",
            "—" if row["cut"] is None else f"{row['cut']:.0%}",
            "—" if row["loss_rise"] is None else f"{row['loss_rise']:+.3f}",
            "—" if row["loss_cut"] is None else f"{row['loss_cut']:.0%}",
            f"{row['final_mean']:.3f}",
            f"{row['train_seconds']:.1f}",
        )
    console.print(table)


def _with_se(value: float | None, se: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.3f}" + ("" if se is None else f" ±{se:.3f}")


def print_watch(console: Console, document: Mapping[str, Any]) -> None:
    """Each watch set before the first task and after the last, per composition, and which differences
    from naive are within noise."""
    from rich.table import Table

    view = view_of(dict(document), "results.json", "run")
    rows = watch_rows(view)
    if rows:
        table = Table(title="watch sets: scored before the first task and after the last, never trained on")
        for k, column in enumerate(WATCH_HEADER):
            table.add_column(column, justify="left" if k < 3 else "right", no_wrap=k == 0)
        for row in rows:
            table.add_row(*map(safe_text, row))
        console.print(table)
    for line in noise_lines(view):
        console.print(safe_text(line), highlight=False)
