"""The Markdown / HTML report: files, embedded plots, escaping, combining runs, bad input, Chromium."""

from __future__ import annotations

import base64
import copy
import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rich.console import Console

from lifelong.core import metrics
from lifelong.errors import LifelongError
from lifelong.experiment.run import run_experiment
from lifelong.experiment.settings import RunConfig
from lifelong.report import PLOTS_DIR, per_task_forgetting, report_runs, write_report
from lifelong.runs.results import write_results

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
IMG_RE = re.compile(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"')
MD_IMAGE_RE = re.compile(r"!\[[^\]]*\]\(([^)]+)\)")


def synthetic(
    strategies: list[str], tasks: int = 4, higher_is_better: bool | None = None, seed: int = 0
) -> dict[str, Any]:
    """A results document shaped like `run_experiment`'s, with made-up scores."""
    rng = np.random.default_rng(seed)
    names = [f"task{i}" for i in range(tasks)]
    results = []
    for index, strategy in enumerate(strategies):
        matrix = np.tril(rng.uniform(0.2, 1.0, size=(tasks, tasks)))
        hib = True if higher_is_better is None else higher_is_better
        if not hib:
            matrix = 5 + 30 * matrix  # perplexity-like values
        results.append(
            {
                "strategy": strategy,
                "accuracy_matrix": matrix.tolist(),
                "metrics": metrics.summarize(matrix, names, higher_is_better=hib),
                "train_seconds": 1.0 + index,
                "eval_seconds": 0.1,
            }
        )
    document: dict[str, Any] = {
        "benchmark": "synthetic",
        "scenario": "class",
        "tasks": names,
        "config": {"benchmark": "synthetic", "strategies": strategies, "seed": seed},
        "versions": {"python": "3.x", "lifelong": "0.0"},
        "wall_seconds": 1.5,
        "results": results,
    }
    if higher_is_better is not None:
        document["higher_is_better"] = higher_is_better
    return document


def embedded_images(page: str) -> list[bytes]:
    return [base64.b64decode(data) for data in IMG_RE.findall(page)]


def check_report(run_dir: Path, strategies: list[str]) -> tuple[str, str]:
    """Everything a report must hold: files, one embedded PNG per plot, links that resolve, the table."""
    markdown, page = (run_dir / "report.md").read_text("utf-8"), (run_dir / "report.html").read_text("utf-8")
    pngs = sorted((run_dir / PLOTS_DIR).glob("*.png"))
    assert len(pngs) == 2 * len(strategies) + 1  # a heatmap and a stream chart each, one forgetting chart
    images = embedded_images(page)
    assert page.count("<img ") == len(images) == len(pngs)
    assert all(image.startswith(PNG_MAGIC) for image in images)
    assert sorted(images) == sorted(png.read_bytes() for png in pngs)
    links = MD_IMAGE_RE.findall(markdown)
    assert sorted(links) == sorted(f"{PLOTS_DIR}/{png.name}" for png in pngs)
    assert all((run_dir / link).is_file() for link in links)
    # self-contained: nothing fetched, nothing run
    assert not re.search(r"(src|href)=\"(?!data:)", page)
    assert "<script" not in page.lower() and "<link" not in page.lower()
    table = page[page.index('<table class="comparison">') : page.index("</table>")]
    for header in ("avg acc", "avg inc acc", "forgetting", "BWT", "FWT", "train s"):
        assert f"<th>{header}</th>" in table
    for strategy in strategies:
        assert f"<tr><td>{strategy}</td>" in table
    return markdown, page


# ---- a real short run ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("real") / "run"
    # Large batches keep this real run to a few seconds; the report does not care how well it learned.
    config = RunConfig(strategies=["naive", "joint"], epochs=1, batch_size=256, out=str(out))
    document = run_experiment(config, console=Console(file=io.StringIO()), show_progress=False)
    write_report(out, document)
    return out, document


def test_report_of_a_real_run(real_run: tuple[Path, dict[str, Any]]) -> None:
    run_dir, document = real_run
    markdown, page = check_report(run_dir, ["naive", "joint"])
    for task in document["tasks"]:
        assert task in markdown and task in page
    assert "split-digits" in page and "higher is better" in page
    assert "<h2>Configuration</h2>" in page and "<h2>Versions</h2>" in page
    assert document["versions"]["torch"] in page and "## Versions" in markdown


def test_regenerating_from_results_json_gives_the_same_report(
    real_run: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    run_dir, _ = real_run
    copy_dir = tmp_path / "copy"
    copy_dir.mkdir()
    shutil.copy(run_dir / "results.json", copy_dir / "results.json")
    (html_path,) = report_runs([copy_dir])
    assert html_path == copy_dir / "report.html"
    assert (copy_dir / "report.html").read_bytes() == (run_dir / "report.html").read_bytes()
    assert (copy_dir / "report.md").read_bytes() == (run_dir / "report.md").read_bytes()


# ---- synthetic documents ---------------------------------------------------------------------------


def test_synthetic_report_and_return_value(tmp_path: Path) -> None:
    strategies = ["naive", "replay", "ewc"]
    markdown, page = write_report(tmp_path, synthetic(strategies))
    assert (markdown, page) == (tmp_path / "report.md", tmp_path / "report.html")
    md_text, _ = check_report(tmp_path, strategies)
    assert "| strategy | avg acc |" in md_text
    assert not list(tmp_path.rglob("*.tmp"))  # atomic writes leave no temporary files


def test_strategy_names_are_escaped(tmp_path: Path) -> None:
    hostile = "<script>alert('x')</script> & $\\frac{a}{$ | *b*"
    write_report(tmp_path, synthetic(["naive", hostile]))
    page = (tmp_path / "report.html").read_text("utf-8")
    markdown = (tmp_path / "report.md").read_text("utf-8")
    assert "<script" not in page and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp;" in page
    assert "<script" not in markdown and "&lt;script&gt;" in markdown
    assert "\\| \\*b\\*" in markdown  # no stray table cell or emphasis in the Markdown table
    assert len(embedded_images(page)) == 5  # '$' in a label did not break matplotlib's text


def test_report_md_fields_cannot_inject_html(tmp_path: Path) -> None:
    # issue 15, case 2: a config key with a line break left its code span, and a CommonMark renderer
    # with raw HTML on showed a live <img onerror>
    from markdown_it import MarkdownIt

    key = "x\n<img src=x onerror=alert(1)>"
    document = synthetic(["naive"])
    document["config"] |= {key: "v", "y`\r\n\n<script>": "w\n\n<b onclick=1>"}
    write_report(tmp_path, document)
    markdown = (tmp_path / "report.md").read_text("utf-8")
    rendered = MarkdownIt("commonmark", {"html": True}).enable("table").render(markdown)
    tags = re.findall(r"<(?:img|script|b)\b[^>]*>", rendered)
    assert all(tag.startswith('<img src="plots/') for tag in tags), tags
    assert "<td>x\\x0a&lt;img src=x onerror=alert(1)&gt;</td>" in rendered
    assert "<td>y`\\x0d\\x0a\\x0a&lt;script&gt;</td>" in rendered


def test_lower_is_better_labels_and_best_values(tmp_path: Path) -> None:
    document = synthetic(["a", "b"], higher_is_better=False)
    document["score_name"] = "perplexity $\\"
    write_report(tmp_path, document)
    page = (tmp_path / "report.html").read_text("utf-8")
    assert "perplexity $\\, lower is better" in page and "<th>avg score</th>" in page
    finals = [r["metrics"]["average_accuracy"] for r in document["results"]]
    best = f"{min(finals):.3f}"  # the lowest perplexity is the best one
    assert f"<td class=best>{best}</td>" in page


def test_edge_shapes_one_task_one_strategy_many_tasks_and_gaps(tmp_path: Path) -> None:
    write_report(tmp_path / "one", synthetic(["solo"], tasks=1))
    check_report(tmp_path / "one", ["solo"])
    write_report(tmp_path / "many", synthetic(["a", "b"], tasks=20))
    check_report(tmp_path / "many", ["a", "b"])
    gaps = synthetic(["a"], tasks=3)
    gaps["results"][0]["accuracy_matrix"][2][0] = None  # a missing score is drawn as a gap
    del gaps["results"][0]["train_seconds"]
    write_report(tmp_path / "gaps", gaps)
    check_report(tmp_path / "gaps", ["a"])


def test_missing_metrics_are_derived(tmp_path: Path) -> None:
    document = synthetic(["a"])
    expected = document["results"][0].pop("metrics")
    write_report(tmp_path, document)
    assert f"{expected['average_accuracy']:.3f}" in (tmp_path / "report.html").read_text("utf-8")


def test_regenerating_drops_plots_of_removed_strategies_only(tmp_path: Path) -> None:
    write_report(tmp_path, synthetic(["a", "b", "c"]))
    (tmp_path / PLOTS_DIR / "my-notes.png").write_bytes(b"mine")
    write_report(tmp_path, synthetic(["a", "b"]))
    names = {p.name for p in (tmp_path / PLOTS_DIR).iterdir()}
    assert "my-notes.png" in names and len(names) == 6


def test_per_task_forgetting_matches_the_forgetting_metric() -> None:
    rng = np.random.default_rng(1)
    for higher_is_better in (True, False):
        matrix = rng.uniform(0, 1, size=(5, 5))
        values = per_task_forgetting(matrix, higher_is_better)
        assert values[-1] == 0.0 and len(values) == 5
        assert np.isclose(np.mean(values[:-1]), metrics.forgetting(matrix, higher_is_better))
    assert per_task_forgetting([[1.0, 0.0], [0.25, 0.9]]) == [0.75, 0.0]


# The backend setting as configured: a name, or the sentinel that means "pick one when first needed".
BACKEND = "b = matplotlib.rcParams._get('backend'); print(b if isinstance(b, str) else 'auto')"


def test_report_leaves_pyplot_and_the_backend_alone(tmp_path: Path) -> None:
    code = (
        "import sys, matplotlib; from pathlib import Path; from lifelong.report import write_report; "
        f"write_report(Path({str(tmp_path)!r}), {synthetic(['a'])!r}); "
        "assert 'matplotlib.pyplot' not in sys.modules; " + BACKEND
    )
    before = subprocess.run(
        [sys.executable, "-c", "import matplotlib; " + BACKEND],
        capture_output=True,
        text=True,
        check=True,
    )
    after = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert after.stdout == before.stdout


# ---- combining runs --------------------------------------------------------------------------------


def finished_run(folder: Path, document: dict[str, Any]) -> Path:
    folder.mkdir(parents=True)
    write_results(folder, document)
    return folder


def damaged_run(folder: Path, document: dict[str, Any]) -> Path:
    """A run folder whose results.json was edited by hand: `write_results` would refuse to write it."""
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps(document), encoding="utf-8")
    return folder


def test_combine_two_runs(tmp_path: Path) -> None:
    first = finished_run(tmp_path / "first", synthetic(["naive", "replay"], seed=1))
    second = finished_run(tmp_path / "second", synthetic(["naive", "ewc"], seed=2))
    written = report_runs([first, second], out=tmp_path / "both")
    assert written == [first / "report.html", second / "report.html", tmp_path / "both" / "report.html"]
    check_report(first, ["naive", "replay"])
    check_report(second, ["naive", "ewc"])
    # one name in both runs: told apart by the run folder
    labels = ["naive (first)", "replay", "naive (second)", "ewc"]
    _, page = check_report(tmp_path / "both", labels)
    assert "combined from 2 runs" in page
    assert "<th>first</th><th>second</th>" in page.replace("\n", "")  # config side by side
    assert not (tmp_path / "both" / "results.json").exists()


def test_a_combined_report_goes_only_where_reports_live(tmp_path: Path) -> None:
    """--out holding another tool's files (or a run's) is refused, untouched; a report's own folder
    is written again."""
    first = finished_run(tmp_path / "first", synthetic(["naive"], seed=1))
    second = finished_run(tmp_path / "second", synthetic(["ewc"], seed=2))
    library = tmp_path / "library"
    library.mkdir()
    (library / "lifelong.json").write_text("{}")
    with pytest.raises(LifelongError, match=r"holds files no report wrote \('lifelong\.json'\)"):
        report_runs([first, second], out=library)
    assert [p.name for p in library.iterdir()] == ["lifelong.json"]
    with pytest.raises(LifelongError, match="holds files no report wrote"):
        report_runs([first], out=second)  # a run's folder: its results.json is no report's
    both = tmp_path / "both"
    report_runs([first, second], out=both)
    assert report_runs([first, second], out=both)[-1] == both / "report.html"  # its own files: again


def test_combine_with_a_real_run(real_run: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    run_dir, document = real_run
    other = copy.deepcopy(document)
    other["results"] = other["results"][:1]
    other["results"][0]["strategy"] = "naive-again"
    second = finished_run(tmp_path / "second", other)
    report_runs([run_dir, second], out=tmp_path / "combined")
    check_report(tmp_path / "combined", ["naive", "joint", "naive-again"])


def test_combining_different_benchmarks_is_refused(tmp_path: Path) -> None:
    first = finished_run(tmp_path / "a", synthetic(["naive"]))
    other = synthetic(["naive"])
    other["benchmark"] = "permuted-mnist1d"
    second = finished_run(tmp_path / "b", other)
    with pytest.raises(LifelongError) as err:
        report_runs([first, second], out=tmp_path / "out")
    message = str(err.value)
    assert "\n" not in message and str(first) in message and str(second) in message
    assert "synthetic" in message and "permuted-mnist1d" in message
    assert not (tmp_path / "out").exists() and not (first / "report.html").exists()  # nothing written

    other = synthetic(["naive"], tasks=3)  # same benchmark, other stream
    third = finished_run(tmp_path / "c", other)
    with pytest.raises(LifelongError, match="different tasks"):
        report_runs([first, third], out=tmp_path / "out")


# ---- bad input -------------------------------------------------------------------------------------


def one_line_error(run_dirs: list[Path], out: Path | None = None) -> str:
    with pytest.raises(LifelongError) as err:
        report_runs(run_dirs, out)
    message = str(err.value)
    assert "\n" not in message
    return message


def test_missing_and_corrupt_results(tmp_path: Path) -> None:
    assert "does not exist" in one_line_error([tmp_path / "nowhere"])
    empty = tmp_path / "empty"
    empty.mkdir()
    message = one_line_error([empty])
    assert str(empty / "results.json") in message and "finished" in message
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "run.json").write_text("{}")
    assert f"--resume {unfinished}" in one_line_error([unfinished])
    broken = tmp_path / "broken"
    broken.mkdir()
    for content in (b'{"results": [', b"\xff\xfe\x00binary", b"[1, 2]", b""):
        (broken / "results.json").write_bytes(content)
        message = one_line_error([broken])
        assert str(broken / "results.json") in message and "--overwrite" in message
    assert "no run folder" in one_line_error([])


@pytest.mark.parametrize(
    ("change", "phrase"),
    [
        (lambda d: d.pop("tasks"), "task names"),
        (lambda d: d.update(results=[]), "strategy results"),
        (lambda d: d["results"][0].pop("strategy"), "strategy name"),
        (lambda d: d["results"][0].update(accuracy_matrix=[[1.0]]), "must be 4x4"),
        (lambda d: d["results"][0].update(accuracy_matrix=[["x"] * 4] * 4), "accuracy matrix"),
        (lambda d: d["results"][0].update(accuracy_matrix=7), "accuracy matrix"),
        (lambda d: d["results"][0].update(accuracy_matrix=[[1.0, 2.0], [1.0]]), "accuracy matrix"),
        (lambda d: d.update(higher_is_better="yes"), "higher_is_better"),
    ],
)
def test_malformed_documents(tmp_path: Path, change: Any, phrase: str) -> None:
    document = synthetic(["a", "b"])
    change(document)
    run_dir = damaged_run(tmp_path / "run", document)
    message = one_line_error([run_dir])
    assert phrase in message and str(run_dir / "results.json") in message
    with pytest.raises(LifelongError, match=phrase):
        write_report(tmp_path / "direct", document)


def test_out_must_not_be_one_of_the_runs_or_a_file(tmp_path: Path) -> None:
    run = finished_run(tmp_path / "run", synthetic(["a"]))
    assert "choose a new folder" in one_line_error([run], out=run)
    (tmp_path / "file").write_text("x")
    assert "is a file" in one_line_error([run], out=tmp_path / "file")


# ---- headless Chromium -----------------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# Added to a copy of the report only (the report itself has no script): once every image has loaded,
# write what the browser decoded into the DOM, which --dump-dom then prints.
PROBE = """<script>
window.addEventListener("load", () => {
  const probe = document.createElement("pre");
  probe.id = "probe";
  probe.textContent = JSON.stringify({
    images: Array.from(document.images, (img) => [img.complete, img.naturalWidth, img.naturalHeight]),
    tables: document.querySelectorAll("table").length,
    comparison: Array.from(document.querySelectorAll("table.comparison tbody tr td:first-child"),
                           (td) => td.textContent),
  });
  document.body.appendChild(probe);
});
</script>"""


def chromium(profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    return subprocess.run(
        [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary on PATH (Debian: apt-get install chromium)")
def test_report_renders_in_headless_chromium(real_run: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    run_dir, _ = real_run
    page = (run_dir / "report.html").read_text("utf-8")
    probed = tmp_path / "probed.html"
    probed.write_text(page.replace("</body>", PROBE + "</body>"), "utf-8")
    done = chromium(tmp_path / "profile", "--virtual-time-budget=10000", "--dump-dom", probed.as_uri())
    found = re.search(r'<pre id="probe">(.*?)</pre>', done.stdout, re.S)
    assert found, f"no probe in the DOM; chromium said: {done.stderr[-2000:]}"
    state = json.loads(found.group(1).replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">"))
    assert len(state["images"]) == 5
    assert all(complete and width > 0 and height > 0 for complete, width, height in state["images"])
    assert state["tables"] == 3  # comparison, configuration, versions
    assert state["comparison"] == ["naive", "joint"]

    shot = tmp_path / "report.png"
    done = chromium(
        tmp_path / "profile",
        f"--screenshot={shot}",
        "--window-size=1280,2400",
        run_dir.joinpath("report.html").as_uri(),
    )
    assert shot.is_file(), done.stderr[-2000:]
    from PIL import Image

    with Image.open(shot) as image:
        assert image.size == (1280, 2400)
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
        assert colours is not None and len(colours) > 100  # plots drawn, not a blank page
