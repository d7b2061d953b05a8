"""What a run tells its user: results.json, the tables printed at the end, and the report with plots.

`write_report` turns a results document (the content of ``results.json``) into ``report.md`` and
``report.html`` in the run folder, with PNG plots under ``plots/``: the accuracy-matrix heatmap and
each task's score over the stream for every strategy, forgetting per task across strategies, the
comparison table, the config and the versions. The HTML is one self-contained file (plots embedded
as data URIs, inline CSS, no script) so it can be mailed or attached as it is. `report_runs`
regenerates reports from run folders and combines several runs of one benchmark into one report.
"""

from __future__ import annotations

import base64
import html
import io
import json
import platform
import re
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from rich.console import Console
from rich.table import Table

from lifelong.core.checkpoint import atomic_write_bytes, atomic_write_json
from lifelong.errors import LifelongError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

METRIC_LABELS = {
    "average_accuracy": "avg acc",
    "average_incremental_accuracy": "avg inc acc",
    "forgetting": "forgetting",
    "bwt": "BWT",
    "fwt": "FWT",
}


def versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for package in (
        "lifelong",
        "torch",
        "numpy",
        "scikit-learn",
        "transformers",
        "peft",
        "accelerate",
        "datasets",
    ):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return out


def write_results(run_dir: Path, document: dict[str, Any]) -> Path:
    """results.json, written last and atomically: its presence marks a finished run."""
    path = run_dir / "results.json"
    atomic_write_json(path, document)
    return path


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def matrix_table(result: dict[str, Any], task_names: list[str]) -> Table:
    table = Table(title=f"{result['strategy']}: accuracy matrix (row = after training, column = task)")
    table.add_column("after", style="bold")
    for name in task_names:
        table.add_column(name, justify="right")
    for name, row in zip(task_names, result["accuracy_matrix"], strict=True):
        table.add_row(name, *(_fmt(v) for v in row))
    return table


def metrics_table(result: dict[str, Any]) -> Table:
    table = Table(title=f"{result['strategy']}: metrics")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, label in METRIC_LABELS.items():
        table.add_row(label, _fmt(result["metrics"][key]))
    rates = result["metrics"]["forgetting_rate"]
    table.add_row("forgetting rate", ", ".join(f"{k}={_fmt(v)}" for k, v in rates.items()))
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
            result["strategy"],
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


# ---- the report: report.md, report.html and plots/ ---------------------------------------------------

REPORT_MD, REPORT_HTML, PLOTS_DIR, RESULTS_FILE = "report.md", "report.html", "plots", "results.json"
# Every plot file name starts with one of these, so a regenerated report can drop the stale ones
# (a strategy removed since) without touching anything else a user put in plots/.
_PLOT_PREFIXES = ("heatmap-", "stream-", "forgetting")
# 150 dpi stays sharp on high-density screens; the HTML shows each image at its 96-dpi size.
_DPI = 150
_CSS_SCALE = 96 / _DPI


@dataclass
class _Entry:
    """One strategy as the report shows it; ``label`` is unique within the report."""

    label: str
    matrix: np.ndarray  # T x T floats, NaN where the document had no score
    metrics: dict[str, Any]
    train_seconds: float | None


@dataclass
class _Source:
    """One run folder (or document) the report was built from: its config and versions."""

    name: str
    config: dict[str, Any]
    versions: dict[str, Any]
    wall_seconds: float | None


@dataclass
class _View:
    """A checked, report-ready reading of one or more results documents."""

    benchmark: str
    scenario: str | None
    tasks: list[str]
    higher_is_better: bool
    score_name: str
    entries: list[_Entry]
    sources: list[_Source] = field(default_factory=list)

    @property
    def direction(self) -> str:
        return "higher is better" if self.higher_is_better else "lower is better"

    @property
    def score_label(self) -> str:
        return f"{self.score_name} ({self.direction})"


@dataclass
class _Plot:
    filename: str
    alt: str
    caption: str
    png: bytes


# ---- reading and checking documents ------------------------------------------------------------------


def _number(value: Any) -> float:
    """A score as a float; a missing one (None) becomes NaN so plots leave a gap instead of failing."""
    if value is None:
        return float("nan")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{value!r} is not a number")
    return float(value)


def _optional_number(value: Any) -> float | None:
    return None if value is None else _number(value)


def _view(document: Any, source: str) -> _View:
    """Check the parts of a results document the report reads; name the first bad one and the fix."""
    fix = "regenerate it with `lifelong run --overwrite`"
    if not isinstance(document, dict):
        raise LifelongError(f"{source} is not a results document (a JSON object); {fix}")
    tasks = document.get("tasks")
    if not isinstance(tasks, list) or not tasks or not all(isinstance(t, str) for t in tasks):
        raise LifelongError(f"{source} has no list of task names under 'tasks'; {fix}")
    results = document.get("results")
    if not isinstance(results, list) or not results:
        raise LifelongError(f"{source} has no strategy results under 'results'; {fix}")
    higher_is_better = document.get("higher_is_better", True)
    if not isinstance(higher_is_better, bool):
        raise LifelongError(f"{source}: 'higher_is_better' must be true or false, got {higher_is_better!r}")
    t = len(tasks)
    entries = []
    for index, result in enumerate(results):
        where = f"{source}, results[{index}]"
        if not isinstance(result, dict) or not isinstance(result.get("strategy"), str):
            raise LifelongError(f"{where} has no strategy name; {fix}")
        try:
            matrix = np.array([[_number(v) for v in row] for row in result["accuracy_matrix"]], dtype=float)
            train_seconds = _optional_number(result.get("train_seconds"))
        except (KeyError, TypeError, ValueError) as err:  # missing, not numbers, ragged rows
            raise LifelongError(f"{where} has no readable accuracy matrix ({err}); {fix}") from None
        if matrix.shape != (t, t):
            raise LifelongError(
                f"{where}: the accuracy matrix is {'x'.join(map(str, matrix.shape))}, "
                f"but there are {t} tasks; it must be {t}x{t}; {fix}"
            )
        scores = result.get("metrics")
        if not isinstance(scores, dict):
            # A document written by hand or by another tool may leave the metrics out: derive them.
            from lifelong.core.metrics import summarize

            if np.isnan(matrix).any():
                raise LifelongError(f"{where} has no 'metrics' and gaps in its accuracy matrix; {fix}")
            scores = summarize(matrix, tasks, higher_is_better=higher_is_better)
        entries.append(_Entry(result["strategy"], matrix, scores, train_seconds))
    config = document.get("config")
    found_versions = document.get("versions")
    wall = document.get("wall_seconds")
    sources = [
        _Source(
            name=source,
            config=config if isinstance(config, dict) else {},
            versions=found_versions if isinstance(found_versions, dict) else {},
            wall_seconds=wall if isinstance(wall, int | float) and not isinstance(wall, bool) else None,
        )
    ]
    default_score = "accuracy" if higher_is_better else "score"
    score_name = document.get("score_name")
    return _View(
        benchmark=str(document.get("benchmark", "unknown benchmark")),
        scenario=document.get("scenario") if isinstance(document.get("scenario"), str) else None,
        tasks=list(tasks),
        higher_is_better=higher_is_better,
        score_name=score_name if isinstance(score_name, str) and score_name else default_score,
        entries=entries,
        sources=sources,
    )


def _read_results(run_dir: Path) -> dict[str, Any]:
    path = run_dir / RESULTS_FILE
    if not run_dir.is_dir():
        raise LifelongError(f"run folder {run_dir} does not exist; pass the --out folder of a finished run")
    if not path.is_file():
        if (run_dir / "run.json").is_file():
            raise LifelongError(
                f"{path} does not exist: the run in {run_dir} is unfinished; "
                f"finish it with `lifelong run --resume {run_dir}`, then report it"
            )
        raise LifelongError(f"{path} does not exist; pass the --out folder of a finished `lifelong run`")
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise LifelongError(
            f"{path} is not valid JSON ({type(err).__name__}); rerun the experiment with --overwrite"
        ) from None
    if not isinstance(document, dict):
        raise LifelongError(f"{path} is not a results document; rerun the experiment with --overwrite")
    return document


# ---- plots --------------------------------------------------------------------------------------------
#
# Layout is computed here, in inches, instead of by matplotlib's constrained layout: that engine
# measures every text twice and made a 9-strategy report three times slower. Labels are truncated to
# a known length (`_plain`), so margins sized from that length always fit.

_TICK_PT, _LABEL_PT, _TITLE_PT, _LEGEND_PT, _CELL_PT = 8.5, 9.5, 11.0, 8.5, 9.0
_TICK_CHARS, _LEGEND_CHARS = 16, 26


def _text_width(text: str, points: float) -> float:
    """A generous estimate of a label's width in inches (DejaVu Sans averages ~0.6 em a character)."""
    return len(text) * 0.62 * points / 72


def _new_figure(width: float, height: float) -> Figure:
    """A figure on its own Agg canvas.

    Figures are made without pyplot, so nothing is registered in pyplot's global figure list (no
    figure to close, no leak across many reports) and the process-wide backend a user or notebook
    chose is never switched: Agg is attached to this figure only.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=_DPI, facecolor="white")
    FigureCanvasAgg(figure)
    return figure


def _framed(width: float, height: float, left: float, right: float, bottom: float, top: float) -> Any:
    """A figure holding one axes of ``width`` x ``height`` inches with the given margins."""
    fig_w, fig_h = width + left + right, height + bottom + top
    figure = _new_figure(fig_w, fig_h)
    return figure.add_axes((left / fig_w, bottom / fig_h, width / fig_w, height / fig_h))


def _png(axes: Any) -> bytes:
    buffer = io.BytesIO()
    # No "Software" stamp: the same results give byte-identical PNGs across matplotlib versions.
    axes.figure.savefig(buffer, format="png", dpi=_DPI, metadata={"Software": None})
    return buffer.getvalue()


def _literal(text: str) -> str:
    """Text matplotlib draws as it is: a '$' would start mathtext (and bad mathtext fails the plot)."""
    return text.replace("$", r"\$")


def _plain(text: str, limit: int = _LEGEND_CHARS) -> str:
    """A label drawn literally and shortened, so long names cannot crowd the axes."""
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return _literal(text)


def _title(axes: Any, name: str, rest: str) -> None:
    """``name`` + ``rest`` centred over the axes, ``name`` shortened so the line stays in the figure."""
    fig_w = axes.figure.get_figwidth()
    box = axes.get_position()
    centre = (box.x0 + box.x1) / 2 * fig_w
    room = int(2 * min(centre, fig_w - centre) / _text_width("x", _TITLE_PT)) - len(rest)
    # An explicit y skips matplotlib's automatic title placement, which measures every tick label.
    axes.set_title(_plain(name, max(room, 8)) + rest, fontsize=_TITLE_PT, y=1.0, pad=6)


def _value_format(values: np.ndarray) -> str:
    finite = np.abs(values[np.isfinite(values)])
    top = float(finite.max()) if finite.size else 0.0
    return ".2f" if top < 10 else ".1f" if top < 1000 else ".0f"


def _score_range(view: _View) -> tuple[float, float]:
    """One colour and axis scale for every strategy, so plots compare at a glance.

    Scores that look like accuracies use the fixed 0..1 range; anything else (perplexity, loss) the
    range of the data.
    """
    values = np.concatenate([entry.matrix.ravel() for entry in view.entries])
    values = values[np.isfinite(values)]
    if values.size == 0:
        return 0.0, 1.0
    low, high = float(values.min()), float(values.max())
    if view.higher_is_better and low >= 0 and high <= 1:
        return 0.0, 1.0
    if high - low < 1e-12:
        low, high = low - 0.5, high + 0.5
    return low, high


def _palette(count: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if count <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(count)]


class _TaskAxis:
    """Task names along an x axis: truncated, and slanted when they would not fit side by side."""

    def __init__(self, view: _View, step: float) -> None:
        self.labels = [_plain(name, _TICK_CHARS) for name in view.tasks]
        widest = max(_text_width(label, _TICK_PT) for label in self.labels)
        self.slanted = widest > 0.92 * step
        # Height the labels need below the axes (sin 35° of their width when slanted).
        self.height = 0.16 + (0.58 * widest + 0.08 if self.slanted else _TICK_PT / 72)

    def apply(self, axes: Any, label: str) -> None:
        if self.slanted:
            axes.set_xticks(
                range(len(self.labels)), self.labels, rotation=35, ha="right",
                rotation_mode="anchor", fontsize=_TICK_PT,
            )  # fmt: skip
        else:
            axes.set_xticks(range(len(self.labels)), self.labels, fontsize=_TICK_PT)
        axes.set_xlabel(label, fontsize=_LABEL_PT)


def _legend_width(labels: list[str], title: str) -> float:
    widest = max(_text_width(text, _LEGEND_PT) for text in [*labels, title])
    return widest + 0.65


def _heatmaps(view: _View, low: float, high: float) -> Callable[[_Entry], bytes]:
    """A painter of each strategy's matrix heatmap.

    Every strategy shares the tasks, scale and layout, so the figure is built once and only the
    numbers, colours and title change per strategy: that halves the time of a many-strategy report.
    """
    from matplotlib import colormaps
    from matplotlib.colors import Normalize
    from matplotlib.patches import Rectangle

    t = len(view.tasks)
    cell = 0.62 if t <= 8 else 0.42 if t <= 16 else max(8.0 / t, 0.15)
    side = max(cell * t, 2.4)
    columns = _TaskAxis(view, side / t)
    rows = [f"after {label}" for label in columns.labels]
    annotate = t <= 16  # beyond that the numbers overlap; the colour bar carries the scale
    left = max(_text_width(row, _TICK_PT) for row in rows) + 0.2
    right = 1.25 if not annotate else 0.3
    axes = _framed(side, side, left, right, columns.height + 0.3, 0.45)
    # Bright always means good: reversed for lower-is-better scores (perplexity, loss).
    cmap = colormaps["viridis" if view.higher_is_better else "viridis_r"].with_extremes(bad="#d9d9d9")
    norm = Normalize(vmin=low, vmax=high)
    image = axes.imshow(np.full((t, t), np.nan), cmap=cmap, norm=norm, aspect="auto")
    if not annotate:
        bar = axes.figure.colorbar(image, ax=axes, fraction=0.05, pad=0.03)
        bar.set_label(_literal(view.score_label), fontsize=_LABEL_PT)
    columns.apply(axes, "evaluated on task")
    axes.set_yticks(range(t), rows, fontsize=_TICK_PT)
    axes.tick_params(length=0)
    for k in range(t):  # the diagonal: each task right after it was learned
        axes.add_patch(Rectangle((k - 0.5, k - 0.5), 1, 1, fill=False, edgecolor="#d62728", linewidth=2.0))
    spec = _value_format(np.concatenate([entry.matrix.ravel() for entry in view.entries]))
    size = _CELL_PT if t <= 8 else 6.5
    cells = [
        [axes.text(j, i, "", ha="center", va="center", fontsize=size) for j in range(t)]
        for i in range(t if annotate else 0)
    ]

    def paint(entry: _Entry) -> bytes:
        image.set_data(np.ma.masked_invalid(entry.matrix))
        _title(axes, entry.label, _literal(f": {view.score_name} matrix"))
        for i, row in enumerate(cells):
            for j, text in enumerate(row):
                value = entry.matrix[i, j]
                if not np.isfinite(value):
                    text.set_text("")
                    continue
                red, green, blue, _ = cmap(norm(value))
                dark = 0.299 * red + 0.587 * green + 0.114 * blue < 0.55
                text.set_text(format(value, spec))
                text.set_color("white" if dark else "black")
        return _png(axes)

    return paint


def _stream_charts(view: _View, low: float, high: float) -> Callable[[_Entry], bytes]:
    """A painter of each task's score over the stream, one chart per strategy; built once, like
    `_heatmaps`. A task's line starts when it is learned, so a falling line is forgetting."""
    t = len(view.tasks)
    width = min(max(0.62 * t, 3.4), 10.0)
    columns = _TaskAxis(view, width / t)
    names = [_plain(name) for name in view.tasks]
    legend = _legend_width(names, "task") * (1 if t <= 14 else 2)
    axes = _framed(width, 2.9 + 0.08 * max(t - 10, 0), 0.85, legend, columns.height + 0.3, 0.45)
    colors = _palette(t)
    lines = [
        axes.plot(
            range(j, t), np.zeros(t - j), marker="o", markersize=4, linewidth=1.8, color=colors[j],
            label=name,
        )[0]
        for j, name in enumerate(names)
    ]  # fmt: skip
    columns.apply(axes, "after training on")
    axes.set_xlim(-0.3, t - 0.7)
    pad = 0.04 * (high - low)
    axes.set_ylim(low - pad, high + pad)
    axes.tick_params(axis="y", labelsize=_TICK_PT)
    axes.set_ylabel(_literal(view.score_label), fontsize=_LABEL_PT)
    axes.grid(alpha=0.3)
    axes.legend(
        title="task", loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=_LEGEND_PT,
        title_fontsize=_LEGEND_PT, frameon=False, ncols=1 if t <= 14 else 2,
    )  # fmt: skip

    def paint(entry: _Entry) -> bytes:
        for j, line in enumerate(lines):
            line.set_ydata(entry.matrix[j:, j])
        _title(axes, entry.label, ": each task over the stream")
        return _png(axes)

    return paint


def per_task_forgetting(
    matrix: Sequence[Sequence[float]] | np.ndarray, higher_is_better: bool = True
) -> list[float]:
    """Forgetting of each task: best earlier score minus final score; 0 for the last task.

    The per-task terms whose mean is `lifelong.core.metrics.forgetting`; for lower-is-better scores it is
    final minus best (lowest) earlier score, so a positive value always means "got worse". NaN where
    a score is missing.
    """
    r = np.asarray(matrix, dtype=float)
    t = r.shape[0]
    out = []
    for j in range(t - 1):
        earlier = r[j : t - 1, j]
        earlier = earlier[np.isfinite(earlier)]
        if earlier.size == 0 or not np.isfinite(r[t - 1, j]):
            out.append(float("nan"))
        elif higher_is_better:
            out.append(float(earlier.max() - r[t - 1, j]))
        else:
            out.append(float(r[t - 1, j] - earlier.min()))
    return [*out, 0.0] if t else []


def _forgetting_bars(view: _View, colors: list[Any]) -> bytes:
    t, s = len(view.tasks), len(view.entries)
    width = min(max((0.16 * s + 0.3) * t, 4.6), 12.0)
    columns = _TaskAxis(view, width / t)
    names = [_plain(entry.label) for entry in view.entries]
    axes = _framed(width, 2.9, 0.95, _legend_width(names, "strategy"), columns.height + 0.3, 0.45)
    bar = 0.8 / s
    for k, (entry, name) in enumerate(zip(view.entries, names, strict=True)):
        values = per_task_forgetting(entry.matrix, view.higher_is_better)
        axes.bar(np.arange(t) - 0.4 + (k + 0.5) * bar, values, width=bar * 0.92, color=colors[k], label=name)
    axes.axhline(0.0, color="black", linewidth=0.8)
    columns.apply(axes, "task")
    axes.set_xlim(-0.6, t - 0.4)
    axes.tick_params(axis="y", labelsize=_TICK_PT)
    change = "best earlier − final" if view.higher_is_better else "final − best earlier"
    axes.set_ylabel(_literal(f"forgetting ({view.score_name}):\n{change}"), fontsize=_LABEL_PT)
    _title(axes, "Forgetting per task", " (higher bar = more forgotten; last task 0)")
    axes.grid(axis="y", alpha=0.3)
    axes.legend(
        title="strategy", loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=_LEGEND_PT,
        title_fontsize=_LEGEND_PT, frameon=False,
    )  # fmt: skip
    return _png(axes)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-")[:48] or "strategy"


def _plots(view: _View) -> tuple[_Plot, list[tuple[_Plot, _Plot]]]:
    low, high = _score_range(view)
    heatmap_of, stream_of = _heatmaps(view, low, high), _stream_charts(view, low, high)
    forgetting = _Plot(
        "forgetting.png",
        "forgetting per task, one bar per strategy",
        f"Forgetting per task: the best {view.score_name} a task had after it was learned, compared with "
        "its final one. Positive bars mean the final model is worse on that task.",
        _forgetting_bars(view, _palette(len(view.entries))),
    )
    pairs = []
    for k, entry in enumerate(view.entries):
        slug = f"{k}-{_slug(entry.label)}"
        heatmap = _Plot(
            f"heatmap-{slug}.png",
            f"{entry.label}: {view.score_name} matrix heatmap",
            f"Row i: {view.score_name} on every task after training task i (brighter is better); the "
            "outlined diagonal is each task just after it was learned, cells left of it show what was kept.",
            heatmap_of(entry),
        )
        stream = _Plot(
            f"stream-{slug}.png",
            f"{entry.label}: each task's {view.score_name} over the stream",
            f"Each task's {view.score_name} from the moment it is learned to the end of the stream; "
            "a falling line is forgetting.",
            stream_of(entry),
        )
        pairs.append((heatmap, stream))
    return forgetting, pairs


# ---- tables shared by the Markdown and the HTML -----------------------------------------------------


def _columns(view: _View) -> list[tuple[str, str]]:
    """(metric key, column label); 'acc' becomes 'score' where the score is not an accuracy."""
    word = "acc" if view.score_name == "accuracy" else "score"
    return [
        ("average_accuracy", f"avg {word}"),
        ("average_incremental_accuracy", f"avg inc {word}"),
        ("forgetting", "forgetting"),
        ("bwt", "BWT"),
        ("fwt", "FWT"),
        ("train_seconds", "train s"),
    ]


def _best(view: _View, key: str) -> float | None:
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


def _metric(entry: _Entry, key: str) -> float | None:
    value = entry.train_seconds if key == "train_seconds" else entry.metrics.get(key)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _cell(entry: _Entry, key: str) -> str:
    value = _metric(entry, key)
    if value is None or not np.isfinite(value):
        return "—"
    return f"{value:.2f}" if key == "train_seconds" else f"{value:.3f}"


def _comparison_rows(view: _View) -> list[tuple[str, list[tuple[str, bool]]]]:
    """(strategy label, [(cell text, is best in its column)])."""
    best = {key: _best(view, key) for key, _ in _columns(view)}
    rows = []
    for entry in view.entries:
        cells = []
        for key, _ in _columns(view):
            value = _metric(entry, key)
            winner = best[key] is not None and value is not None and _cell(entry, key) != "—"
            cells.append((_cell(entry, key), winner and value == best[key]))
        rows.append((entry.label, cells))
    return rows


def _setting(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _keyed_rows(view: _View, part: str) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """Config or versions as one row per key and one column per source run."""
    tables = [getattr(source, part) for source in view.sources]
    keys: list[str] = []
    for table in tables:
        keys.extend(str(k) for k in table if str(k) not in keys)
    header = [source.name for source in view.sources] if len(view.sources) > 1 else ["value"]
    rows = [(key, [_setting(table[key]) if key in table else "—" for table in tables]) for key in keys]
    return header, rows


def _summary_line(view: _View) -> str:
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


# ---- Markdown -----------------------------------------------------------------------------------------


def _md(text: str) -> str:
    """Text shown literally in Markdown: HTML-escaped (renderers pass raw HTML through) and with the
    characters that would start emphasis, code, links or table cells backslash-escaped."""
    return re.sub(r"([\\`*_\[\]|#])", r"\\\1", html.escape(text, quote=False)).replace("\n", " ")


def _md_table(header: list[str], rows: list[list[str]], right_from: int = 1) -> list[str]:
    align = ["---" if i < right_from else "---:" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _markdown(view: _View, forgetting: _Plot, pairs: list[tuple[_Plot, _Plot]]) -> str:
    def image(plot: _Plot) -> str:
        return f"![{_md(plot.alt)}]({PLOTS_DIR}/{plot.filename})"

    lines = [f"# lifelong report: {_md(view.benchmark)}", "", _md(_summary_line(view)), ""]
    lines += [f"Tasks in order: {_md(', '.join(view.tasks))}", ""]
    lines += ["## Comparison across strategies", ""]
    header = ["strategy", *(label for _, label in _columns(view))]
    rows = [
        [_md(label), *(f"**{text}**" if best else text for text, best in cells)]
        for label, cells in _comparison_rows(view)
    ]
    lines += _md_table(header, rows)
    lines += ["", _md(_comparison_note(view)), ""]
    lines += ["## Forgetting per task", "", image(forgetting), "", _md(forgetting.caption), ""]
    lines += ["## Per strategy", "", f"{_md(pairs[0][0].caption)} {_md(pairs[0][1].caption)}", ""]
    for entry, (heatmap, stream) in zip(view.entries, pairs, strict=True):
        lines += [f"### {_md(entry.label)}", "", image(heatmap), "", image(stream), ""]
    for title, part in (("Configuration", "config"), ("Versions", "versions")):
        keys_header, keyed = _keyed_rows(view, part)
        if keyed:
            lines += [f"## {title}", ""]
            lines += _md_table(
                ["key", *map(_md, keys_header)],
                [[f"`{key}`" if "`" not in key else _md(key), *map(_md, values)] for key, values in keyed],
                right_from=len(keys_header) + 1,
            )
            lines.append("")
    return "\n".join(lines)


def _comparison_note(view: _View) -> str:
    note = (
        f"avg = mean {view.score_name} over all tasks after the last one; avg inc = mean of that average "
        "after every task; forgetting = best earlier minus final (mean over old tasks, lower is better); "
        "BWT / FWT = backward / forward transfer (higher is better)."
    )
    return note + (" Best value per column in bold." if len(view.entries) > 1 else "")


# ---- HTML ---------------------------------------------------------------------------------------------

_CSS = """
body { margin: 0; background: #f6f7f9; color: #1d2125; font: 15px/1.5 system-ui, -apple-system,
  "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1240px; margin: 0 auto; padding: 24px 32px 48px; background: #fff; }
h1 { font-size: 26px; margin: 0 0 4px; }
h2 { font-size: 20px; margin: 32px 0 10px; padding-bottom: 4px; border-bottom: 1px solid #e3e6ea; }
h3 { font-size: 16px; margin: 22px 0 6px; }
.summary { color: #59636e; margin: 0 0 8px; }
.note, figcaption { color: #59636e; font-size: 13px; }
table { border-collapse: collapse; margin: 6px 0; font-variant-numeric: tabular-nums; }
th, td { padding: 5px 12px; border-bottom: 1px solid #e3e6ea; text-align: right; vertical-align: top; }
th { background: #f0f2f5; font-weight: 600; }
th:first-child, td:first-child, table.settings th { text-align: left; }
td.best { font-weight: 700; color: #0b6e4f; }
table.settings td { text-align: left; font-family: ui-monospace, SFMono-Regular, Menlo, monospace;
  font-size: 13px; word-break: break-all; }
figure { margin: 0 16px 4px 0; }
img { max-width: 100%; height: auto; display: block; }
.pair { display: flex; flex-wrap: wrap; align-items: flex-start; }
"""


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _html(view: _View, forgetting: _Plot, pairs: list[tuple[_Plot, _Plot]]) -> str:
    esc = html.escape

    def figure(plot: _Plot, caption: bool = True) -> str:
        # The pixel width at 96 dpi: the plot appears at its drawn size and stays sharp on HiDPI.
        width = struct.unpack(">I", plot.png[16:20])[0]  # PNG IHDR: width is bytes 16..19
        text = f"<figcaption>{esc(plot.caption)}</figcaption>" if caption else ""
        return (
            f'<figure><img src="{_data_uri(plot.png)}" alt="{esc(plot.alt)}" '
            f'width="{round(width * _CSS_SCALE)}">{text}</figure>'
        )

    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>lifelong report: {esc(view.benchmark)}</title>",
        f"<style>{_CSS}</style></head><body><main>",
        f"<h1>lifelong report: {esc(view.benchmark)}</h1>",
        f'<p class="summary">{esc(_summary_line(view))}</p>',
        f'<p class="summary">Tasks in order: {esc(", ".join(view.tasks))}</p>',
        "<h2>Comparison across strategies</h2>",
        '<table class="comparison"><thead><tr><th>strategy</th>',
        *(f"<th>{esc(label)}</th>" for _, label in _columns(view)),
        "</tr></thead><tbody>",
    ]
    for label, cells in _comparison_rows(view):
        out.append(f"<tr><td>{esc(label)}</td>")
        out += [f"<td{' class=best' if best else ''}>{esc(text)}</td>" for text, best in cells]
        out.append("</tr>")
    out += ["</tbody></table>", f'<p class="note">{esc(_comparison_note(view))}</p>']
    out += ["<h2>Forgetting per task</h2>", figure(forgetting)]
    out += [
        "<h2>Per strategy</h2>",
        f'<p class="note">{esc(pairs[0][0].caption)} {esc(pairs[0][1].caption)}</p>',
    ]
    for entry, (heatmap, stream) in zip(view.entries, pairs, strict=True):
        out += [
            f"<section><h3>{esc(entry.label)}</h3>",
            f'<div class="pair">{figure(heatmap, False)}{figure(stream, False)}</div></section>',
        ]
    for title, part in (("Configuration", "config"), ("Versions", "versions")):
        header, keyed = _keyed_rows(view, part)
        if not keyed:
            continue
        out += [f"<h2>{title}</h2>", '<table class="settings"><thead><tr><th>key</th>']
        out += [f"<th>{esc(name)}</th>" for name in header]
        out.append("</tr></thead><tbody>")
        for key, values in keyed:
            out.append(f"<tr><td>{esc(key)}</td>" + "".join(f"<td>{esc(v)}</td>" for v in values) + "</tr>")
        out.append("</tbody></table>")
    out += ["</main></body></html>", ""]
    return "\n".join(out)


# ---- entry points -------------------------------------------------------------------------------------


def _write_view(run_dir: Path, view: _View) -> tuple[Path, Path]:
    forgetting, pairs = _plots(view)
    plots = [forgetting, *(plot for pair in pairs for plot in pair)]
    plot_dir = run_dir / PLOTS_DIR
    for plot in plots:
        atomic_write_bytes(plot_dir / plot.filename, plot.png)
    keep = {plot.filename for plot in plots}
    for old in plot_dir.glob("*.png"):  # plots of strategies no longer in the results
        if old.name not in keep and old.name.startswith(_PLOT_PREFIXES):
            old.unlink(missing_ok=True)
    # Markdown before HTML; each is renamed into place whole, so a reader never sees half a report.
    markdown, page = run_dir / REPORT_MD, run_dir / REPORT_HTML
    atomic_write_bytes(markdown, _markdown(view, forgetting, pairs).encode("utf-8"))
    atomic_write_bytes(page, _html(view, forgetting, pairs).encode("utf-8"))
    return markdown, page


def write_report(run_dir: Path, document: dict[str, Any]) -> tuple[Path, Path]:
    """Write ``report.md`` and ``report.html`` (plus ``plots/*.png``) for a results document.

    ``document`` is what `write_results` stores in ``results.json``. An optional top-level
    ``higher_is_better: false`` (perplexity, loss) flips the colour scale, the axis labels and which
    value of a column counts as best; an optional ``score_name`` (e.g. ``"perplexity"``) names the
    score on axes and columns. Returns the paths of the Markdown and the HTML report.
    """
    run_dir = Path(run_dir)
    view = _view(document, f"the results document for {run_dir}")
    view.sources[0].name = run_dir.name or str(run_dir)
    return _write_view(run_dir, view)


def _combine(views: list[tuple[Path, _View]]) -> _View:
    """One view over several runs of one benchmark; labels get the run folder where names clash."""
    first_dir, first = views[0]
    for run_dir, view in views[1:]:
        if view.benchmark != first.benchmark:
            raise LifelongError(
                f"cannot combine {first_dir} (benchmark '{first.benchmark}') with {run_dir} "
                f"(benchmark '{view.benchmark}'); combine only runs of the same benchmark"
            )
        if view.tasks != first.tasks:
            raise LifelongError(
                f"cannot combine {first_dir} and {run_dir}: both ran '{first.benchmark}' but with different "
                "tasks (scenario, seed or split differ); combine only runs of the same stream"
            )
        if view.higher_is_better != first.higher_is_better:
            raise LifelongError(
                f"cannot combine {first_dir} and {run_dir}: one scores higher-is-better, the other "
                "lower-is-better; combine only runs with the same score"
            )
    names = [run_dir.name or str(run_dir) for run_dir, _ in views]
    if len(set(names)) < len(names):  # folders with one name in different places
        names = [str(run_dir) for run_dir, _ in views]
    seen: dict[str, int] = {}
    for _, view in views:
        for entry in view.entries:
            seen[entry.label] = seen.get(entry.label, 0) + 1
    entries, sources = [], []
    for name, (_, view) in zip(names, views, strict=True):
        for entry in view.entries:
            label = f"{entry.label} ({name})" if seen[entry.label] > 1 else entry.label
            entries.append(_Entry(label, entry.matrix, entry.metrics, entry.train_seconds))
        source = view.sources[0]
        sources.append(_Source(name, source.config, source.versions, source.wall_seconds))
    return _View(
        benchmark=first.benchmark,
        scenario=first.scenario,
        tasks=first.tasks,
        higher_is_better=first.higher_is_better,
        score_name=first.score_name,
        entries=entries,
        sources=sources,
    )


def report_runs(run_dirs: list[Path], out: Path | None = None) -> list[Path]:
    """Regenerate the report of every run folder from its ``results.json``; with ``out``, also write
    one report combining all of them there (same benchmark and tasks required).

    Every folder is read and checked before anything is written, so a bad one changes nothing.
    Returns the ``report.html`` paths written: one per run folder, then the combined one.
    """
    if not run_dirs:
        raise LifelongError("no run folder given; pass the --out folder of at least one finished run")
    dirs = [Path(d) for d in run_dirs]
    views = []
    for run_dir in dirs:
        view = _view(_read_results(run_dir), str(run_dir / RESULTS_FILE))
        view.sources[0].name = run_dir.name or str(run_dir)
        views.append((run_dir, view))
    combined = None
    if out is not None:
        out = Path(out)
        if any(out.resolve() == d.resolve() for d in dirs):
            raise LifelongError(
                f"--out {out} is one of the runs being combined and would lose its own report; "
                "choose a new folder for the combined report"
            )
        if out.exists() and not out.is_dir():
            raise LifelongError(f"--out {out} is a file, not a folder; choose another path")
        combined = _combine(views)
    written = [_write_view(run_dir, view)[1] for run_dir, view in views]
    if out is not None and combined is not None:
        written.append(_write_view(out, combined)[1])
    return written
