"""A results document as the report shows it: each strategy's matrix and metrics, the runs the report
was built from, and the rows of the tables that report.md and report.html share."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lifelong.core.metrics import summarize
from lifelong.errors import LifelongError
from lifelong.runs.results import READ_FIX


@dataclass
class Entry:
    """One strategy as the report shows it; ``label`` is unique within the report."""

    label: str
    matrix: np.ndarray  # T x T floats, NaN where the document had no score
    metrics: dict[str, Any]
    train_seconds: float | None
    watch: list[dict[str, Any]] = field(default_factory=list)  # results[].watch: the watch sets


@dataclass
class Source:
    """One run folder (or document) the report was built from: its config and versions."""

    name: str
    config: dict[str, Any]
    versions: dict[str, Any]
    wall_seconds: float | None


@dataclass
class View:
    """A report-ready reading of one or more results documents."""

    benchmark: str
    scenario: str | None
    tasks: list[str]
    higher_is_better: bool
    score_name: str
    entries: list[Entry]
    sources: list[Source] = field(default_factory=list)

    @property
    def direction(self) -> str:
        return "higher is better" if self.higher_is_better else "lower is better"

    @property
    def score_label(self) -> str:
        return f"{self.score_name} ({self.direction})"


def view_of(document: dict[str, Any], source: str, name: str) -> View:
    """The view of a document that passed `validate_results`; ``source`` names it in messages and
    ``name`` labels its run among combined ones."""
    higher_is_better = document.get("higher_is_better", True)
    tasks = list(document["tasks"])
    entries = [
        _entry(result, tasks, higher_is_better, f"{source}, results[{index}]")
        for index, result in enumerate(document["results"])
    ]
    wall = document.get("wall_seconds")
    source_run = Source(
        name, document.get("config", {}), document.get("versions", {}), None if wall is None else float(wall)
    )
    return View(
        benchmark=document.get("benchmark", "unknown benchmark"),
        scenario=document.get("scenario"),
        tasks=tasks,
        higher_is_better=higher_is_better,
        score_name=document.get("score_name") or ("accuracy" if higher_is_better else "score"),
        entries=entries,
        sources=[source_run],
    )


def _entry(result: dict[str, Any], tasks: list[str], higher_is_better: bool, where: str) -> Entry:
    # A missing score (null) becomes NaN, so plots leave a gap instead of failing.
    rows = result["accuracy_matrix"]
    matrix = np.array([[np.nan if v is None else float(v) for v in row] for row in rows], dtype=float)
    scores = result.get("metrics")
    if scores is None:
        # A document written by hand or by another tool may leave the metrics out: derive them.
        if np.isnan(matrix).any():
            raise LifelongError(f"{where} has no 'metrics' and gaps in its accuracy matrix; {READ_FIX}")
        scores = summarize(matrix, tasks, higher_is_better=higher_is_better)
    train = result.get("train_seconds")
    watch = list(result.get("watch") or [])
    return Entry(result["strategy"], matrix, scores, None if train is None else float(train), watch)


# ---- tables shared by the Markdown and the HTML -----------------------------------------------------


WATCH_KEY = "watch:"  # a column of a watch set's retention: "watch:<name>"


def watch_names(view: View) -> list[str]:
    """The watch sets of the report's strategies, in their order."""
    return list(dict.fromkeys(w["name"] for entry in view.entries for w in entry.watch))


def columns(view: View) -> list[tuple[str, str]]:
    """(metric key, column label); 'acc' becomes 'score' where the score is not an accuracy; one
    retention column per watch set."""
    word = "acc" if view.score_name == "accuracy" else "score"
    return [
        ("average_accuracy", f"avg {word}"),
        ("average_incremental_accuracy", f"avg inc {word}"),
        ("forgetting", "forgetting"),
        ("bwt", "BWT"),
        ("fwt", "FWT"),
        *((WATCH_KEY + name, f"{name} kept") for name in watch_names(view)),
        ("train_seconds", "train s"),
    ]


def _best(view: View, key: str) -> float | None:
    """The best value of a column, to highlight; None when there is nothing to compare."""
    values = [_metric(entry, key) for entry in view.entries]
    present = [v for v in values if v is not None and np.isfinite(v)]
    if len(view.entries) < 2 or not present:
        return None
    # forgetting and time: lower wins; BWT and FWT are signed so that higher wins for either score
    # direction (see lifelong.core.metrics); average scores follow the score's direction.
    lower_wins = key in ("forgetting", "train_seconds") or (
        key.startswith("average") and not view.higher_is_better
    )
    return min(present) if lower_wins else max(present)


def _metric(entry: Entry, key: str) -> float | None:
    if key.startswith(WATCH_KEY):
        value = (entry.metrics.get("watch_retention") or {}).get(key[len(WATCH_KEY) :])
    else:
        value = entry.train_seconds if key == "train_seconds" else entry.metrics.get(key)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _cell(entry: Entry, key: str) -> str:
    value = _metric(entry, key)
    if value is None or not np.isfinite(value):
        return "—"
    if key == "train_seconds":
        return f"{value:.2f}"
    se = entry.metrics.get("average_accuracy_se") if key == "average_accuracy" else None
    return f"{value:.3f}" + (f" ± {se:.3f}" if isinstance(se, int | float) else "")


def comparison_rows(view: View) -> list[tuple[str, list[tuple[str, bool]]]]:
    """(strategy label, [(cell text, is best in its column)])."""
    best = {key: _best(view, key) for key, _ in columns(view)}
    rows = []
    for entry in view.entries:
        cells = []
        for key, _ in columns(view):
            value = _metric(entry, key)
            winner = best[key] is not None and value is not None and _cell(entry, key) != "—"
            cells.append((_cell(entry, key), winner and value == best[key]))
        rows.append((entry.label, cells))
    return rows


def _setting(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def keyed_rows(view: View, part: str) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """Config or versions as one row per key and one column per source run."""
    tables = [getattr(source, part) for source in view.sources]
    keys: list[str] = []
    for table in tables:
        keys.extend(str(k) for k in table if str(k) not in keys)
    header = [source.name for source in view.sources] if len(view.sources) > 1 else ["value"]
    rows = [(key, [_setting(table[key]) if key in table else "—" for table in tables]) for key in keys]
    return header, rows


def summary_line(view: View) -> str:
    parts = [f"benchmark {view.benchmark}"]
    if view.scenario:
        parts.append(f"{view.scenario}-incremental")
    parts += [
        f"{len(view.tasks)} tasks",
        f"{len(view.entries)} strateg{'y' if len(view.entries) == 1 else 'ies'}",
        f"{view.score_name}, {view.direction}",
    ]
    walls = [s.wall_seconds for s in view.sources if s.wall_seconds is not None]
    if walls:
        parts.append(f"wall time {sum(walls):.1f} s")
    if len(view.sources) > 1:
        parts.append(f"combined from {len(view.sources)} runs")
    return " · ".join(parts)


def comparison_note(view: View) -> str:
    note = (
        f"avg = mean {view.score_name} over all tasks after the last one; avg inc = mean of that average "
        "after every task; forgetting = best earlier minus final (mean over old tasks, lower is better); "
        "BWT / FWT = backward / forward transfer (higher is better)."
    )
    if any("average_accuracy_se" in entry.metrics for entry in view.entries):
        note += " ± is the standard error."
    if watch_names(view):
        note += " <set> kept = a watch set's final score / its score before training (1 = all kept)."
    return note + (" Best value per column in bold." if len(view.entries) > 1 else "")
