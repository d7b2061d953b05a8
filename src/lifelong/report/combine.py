"""`report_runs`: reports regenerated from run folders, and several runs of one benchmark combined
into one report."""

from __future__ import annotations

from pathlib import Path

from lifelong.errors import LifelongError
from lifelong.report.plots import PLOTS_DIR
from lifelong.report.view import Entry, Source, View, view_of
from lifelong.report.write import REPORT_HTML, REPORT_MD, run_name, write_view
from lifelong.runs.results import RESULTS_FILE, read_results


def _check_combinable(views: list[tuple[Path, View]]) -> None:
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


def _combine(views: list[tuple[Path, View]]) -> View:
    """One view over several runs of one benchmark; labels get the run folder where names clash."""
    _check_combinable(views)
    names = [run_name(run_dir) for run_dir, _ in views]
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
            entries.append(Entry(label, entry.matrix, entry.metrics, entry.train_seconds, entry.watch))
        source = view.sources[0]
        sources.append(Source(name, source.config, source.versions, source.wall_seconds))
    first = views[0][1]
    return View(
        benchmark=first.benchmark,
        scenario=first.scenario,
        tasks=first.tasks,
        higher_is_better=first.higher_is_better,
        score_name=first.score_name,
        entries=entries,
        sources=sources,
    )


REPORT_FILES = (REPORT_HTML, REPORT_MD, PLOTS_DIR)  # what a combined report's folder holds


def report_runs(run_dirs: list[Path], out: Path | None = None) -> list[Path]:
    """Regenerate the report of every run folder from its ``results.json``; with ``out``, also write
    one report combining all of them there (same benchmark and tasks required).

    Every folder is read and checked before anything is written, so a bad one changes nothing.
    Returns the ``report.html`` paths written: one per run folder, then the combined one.
    """
    if not run_dirs:
        raise LifelongError("no run folder given; pass the --out folder of at least one finished run")
    dirs = [Path(d) for d in run_dirs]
    views = [
        (run_dir, view_of(read_results(run_dir), str(run_dir / RESULTS_FILE), run_name(run_dir)))
        for run_dir in dirs
    ]
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
        foreign = sorted(p.name for p in out.iterdir() if p.name not in REPORT_FILES) if out.is_dir() else []
        if foreign:  # another tool's folder, or a run's: a combined report goes in a folder of its own
            raise LifelongError(
                f"--out {out} holds files no report wrote ({foreign[0]!r}{', ...' if len(foreign) > 1 else ''}); "
                "choose a new or empty folder for the combined report"
            )
        combined = _combine(views)
    written = [write_view(run_dir, view)[1] for run_dir, view in views]
    if out is not None and combined is not None:
        written.append(write_view(out, combined)[1])
    return written
