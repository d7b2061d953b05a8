"""The report's plots as PNG bytes: each strategy's accuracy-matrix heatmap and each task's score over
the stream, and forgetting per task across strategies.

matplotlib is imported inside the functions that draw, on purpose: importing the report (as
`lifelong run` does) must not pay for matplotlib before a report is drawn.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from lifelong.report.view import Entry, View

if TYPE_CHECKING:
    from matplotlib.figure import Figure

PLOTS_DIR = "plots"
# Every plot file name starts with one of these, so a regenerated report can drop the stale ones
# (a strategy removed since) without touching anything else a user put in plots/.
PLOT_PREFIXES = ("heatmap-", "stream-", "forgetting")
# 150 dpi stays sharp on high-density screens; the HTML shows each image at its 96-dpi size.
DPI = 150


@dataclass
class Plot:
    filename: str
    alt: str
    caption: str
    png: bytes


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

    figure = Figure(figsize=(width, height), dpi=DPI, facecolor="white")
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
    axes.figure.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
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


def _score_range(view: View) -> tuple[float, float]:
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

    def __init__(self, view: View, step: float) -> None:
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


def _heatmaps(view: View, low: float, high: float) -> Callable[[Entry], bytes]:
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

    def paint(entry: Entry) -> bytes:
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


def _stream_charts(view: View, low: float, high: float) -> Callable[[Entry], bytes]:
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

    def paint(entry: Entry) -> bytes:
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


def _forgetting_bars(view: View, colors: list[Any]) -> bytes:
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


def draw_plots(view: View) -> tuple[Plot, list[tuple[Plot, Plot]]]:
    low, high = _score_range(view)
    heatmap_of, stream_of = _heatmaps(view, low, high), _stream_charts(view, low, high)
    forgetting = Plot(
        "forgetting.png",
        "forgetting per task, one bar per strategy",
        f"Forgetting per task: the best {view.score_name} a task had after it was learned, compared with "
        "its final one. Positive bars mean the final model is worse on that task.",
        _forgetting_bars(view, _palette(len(view.entries))),
    )
    pairs = []
    for k, entry in enumerate(view.entries):
        slug = f"{k}-{_slug(entry.label)}"
        heatmap = Plot(
            f"heatmap-{slug}.png",
            f"{entry.label}: {view.score_name} matrix heatmap",
            f"Row i: {view.score_name} on every task after training task i (brighter is better); the "
            "outlined diagonal is each task just after it was learned, cells left of it show what was kept.",
            heatmap_of(entry),
        )
        stream = Plot(
            f"stream-{slug}.png",
            f"{entry.label}: each task's {view.score_name} over the stream",
            f"Each task's {view.score_name} from the moment it is learned to the end of the stream; "
            "a falling line is forgetting.",
            stream_of(entry),
        )
        pairs.append((heatmap, stream))
    return forgetting, pairs
