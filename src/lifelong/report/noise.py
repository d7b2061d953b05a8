"""What the report says of watch sets and of noise: each watch set before and after training with its
standard error, and whether two strategies' difference is larger than their scores' noise
(``|a - b| < 2 sqrt(se_a^2 + se_b^2)`` is "within noise")."""

from __future__ import annotations

from typing import Any

from lifelong.core.metrics import difference_within_noise
from lifelong.report.view import Entry, View

WATCH_HEADER = ["strategy", "watch set", "score", "before", "after", "kept", "items"]


def _with_se(value: Any, se: Any) -> str:
    if not isinstance(value, int | float):
        return "—"
    return f"{value:.3f}" + (f" ± {se:.3f}" if isinstance(se, int | float) else "")


def watch_rows(view: View) -> list[list[str]]:
    """One row per strategy and watch set: its score before the first task and after the last."""
    rows = []
    for entry in view.entries:
        for w in entry.watch:
            kept = w.get("retention")
            rows.append(
                [
                    entry.label,
                    w["name"],
                    str(w.get("score_name", "score")),
                    _with_se(w["initial"], w.get("initial_se")),
                    _with_se(w["scores"][-1], (w.get("se") or [None])[-1]),
                    "—" if kept is None else f"{kept:.3f}",
                    str(w["items"]),
                ]
            )
    return rows


def _final(entry: Entry, what: str | None) -> tuple[float, float] | None:
    """(final score, its standard error) of the average over tasks (``what`` None) or of a watch set."""
    if what is None:
        value, se = entry.metrics.get("average_accuracy"), entry.metrics.get("average_accuracy_se")
    else:
        found = next((w for w in entry.watch if w["name"] == what), None)
        if found is None:
            return None
        value, se = found["scores"][-1], (found.get("se") or [None])[-1]
    if not isinstance(value, int | float) or not isinstance(se, int | float):
        return None
    return float(value), float(se)


def noise_lines(view: View) -> list[str]:
    """Each strategy against the reference (naive if there, else the first): is the difference real?"""
    if len(view.entries) < 2:
        return []
    reference = next((e for e in view.entries if e.label == "naive"), view.entries[0])
    names = list(dict.fromkeys(w["name"] for e in view.entries for w in e.watch))
    lines = []
    for entry in view.entries:
        if entry is reference:
            continue
        for what in [None, *names]:
            mine, theirs = _final(entry, what), _final(reference, what)
            if mine is None or theirs is None:
                continue
            label = f"avg {view.score_name}" if what is None else f"watch set {what}"
            noise = 2 * (mine[1] ** 2 + theirs[1] ** 2) ** 0.5
            verdict = "within noise" if difference_within_noise(*mine, *theirs) else "beyond noise"
            lines.append(
                f"{entry.label} vs {reference.label}, {label}: {mine[0]:.3f} vs {theirs[0]:.3f} "
                f"({mine[0] - theirs[0]:+.3f}; 2 standard errors {noise:.3f}): {verdict}"
            )
    return lines


NOISE_NOTE = (
    "A difference is within noise when it is smaller than twice the standard error of the difference, "
    "sqrt(se1^2 + se2^2); standard errors are binomial for accuracies, bootstrap otherwise."
)
