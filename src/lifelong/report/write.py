"""One report written into a folder: ``plots/*.png``, ``report.md`` and ``report.html``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lifelong.core.checkpoint import atomic_write_bytes
from lifelong.report.html import html_report
from lifelong.report.markdown import markdown_report
from lifelong.report.plots import PLOT_PREFIXES, PLOTS_DIR, Plot, draw_plots
from lifelong.report.view import View, view_of
from lifelong.runs.results import validate_results

REPORT_MD, REPORT_HTML = "report.md", "report.html"


def run_name(run_dir: Path) -> str:
    """How a report names its run: the folder's name (the path itself for ``.`` and the like)."""
    return run_dir.name or str(run_dir)


def _plots(run_dir: Path, view: View) -> tuple[Plot, list[tuple[Plot, Plot]]]:
    """Draw the plots into ``plots/`` (dropping stale ones) and return them for the reports."""
    forgetting, pairs = draw_plots(view)
    plots = [forgetting, *(plot for pair in pairs for plot in pair)]
    plot_dir = run_dir / PLOTS_DIR
    for plot in plots:
        atomic_write_bytes(plot_dir / plot.filename, plot.png)
    keep = {plot.filename for plot in plots}
    for old in plot_dir.glob("*.png"):  # plots of strategies no longer in the results
        if old.name not in keep and old.name.startswith(PLOT_PREFIXES):
            old.unlink(missing_ok=True)
    return forgetting, pairs


def _write_reports(run_dir: Path, view: View, *, html: bool) -> tuple[Path, Path | None]:
    """The plots, ``report.md`` and (with ``html``) ``report.html``."""
    forgetting, pairs = _plots(run_dir, view)
    # Markdown before HTML; each is renamed into place whole, so a reader never sees half a report.
    markdown = run_dir / REPORT_MD
    atomic_write_bytes(markdown, markdown_report(view, forgetting, pairs).encode("utf-8"))
    if not html:
        return markdown, None
    page = run_dir / REPORT_HTML
    atomic_write_bytes(page, html_report(view, forgetting, pairs).encode("utf-8"))
    return markdown, page


def write_view(run_dir: Path, view: View) -> tuple[Path, Path]:
    markdown, page = _write_reports(run_dir, view, html=True)
    assert page is not None
    return markdown, page


def _view(run_dir: Path, document: dict[str, Any]) -> View:
    source = f"the results document for {run_dir}"
    return view_of(validate_results(document, source), source, run_name(run_dir))


def write_report(run_dir: Path, document: dict[str, Any]) -> tuple[Path, Path]:
    """Write ``report.md`` and ``report.html`` (plus ``plots/*.png``) for a results document.

    ``document`` is what `write_results` stores in ``results.json`` (checked against the same
    schema here). An optional top-level ``higher_is_better: false`` (perplexity, loss) flips the
    colour scale, the axis labels and which value of a column counts as best; an optional
    ``score_name`` (e.g. ``"perplexity"``) names the score on axes and columns. Returns the paths of
    the Markdown and the HTML report.
    """
    run_dir = Path(run_dir)
    return write_view(run_dir, _view(run_dir, document))


def write_markdown_report(run_dir: Path, document: dict[str, Any]) -> Path:
    """`write_report` without the HTML: ``report.md`` and its ``plots/*.png``."""
    run_dir = Path(run_dir)
    return _write_reports(run_dir, _view(run_dir, document), html=False)[0]
