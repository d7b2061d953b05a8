"""The classic path stays light: `lifelong run` loads no LLM or plotting library before it needs one.

Each check runs the real entry point in a fresh interpreter, since this test process has long since
imported everything.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("transformers", "peft", "datasets", "accelerate", "matplotlib")

# Runs `lifelong` with the given arguments; prints which heavy packages were loaded at the end, and
# (for a run) which were loaded when the report started: matplotlib is needed there, not before.
PROBE = """
import json, sys
heavy = {heavy!r}
loaded = lambda: sorted(name for name in heavy if name in sys.modules)
seen = {{}}
import lifelong.experiment.run as run
original = run.write_report
def write_report(*args, **kwargs):
    seen["before_report"] = loaded()
    return original(*args, **kwargs)
run.write_report = write_report
from lifelong.cli import main
sys.argv = ["lifelong", *{args!r}]
try:
    main()
except SystemExit as exit_:
    seen["exit"] = exit_.code or 0
seen["at_exit"] = loaded()
print("PROBE " + json.dumps(seen))
"""


def probe(*args: str, cwd: Path) -> dict[str, object]:
    code = PROBE.format(heavy=HEAVY, args=list(args))
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, timeout=600, check=False
    )
    line = next((x for x in done.stdout.splitlines() if x.startswith("PROBE ")), None)
    assert line is not None, done.stdout + done.stderr
    found: dict[str, object] = json.loads(line.removeprefix("PROBE "))
    return found


def test_help_loads_no_heavy_library(tmp_path: Path) -> None:
    seen = probe("run", "--help", cwd=tmp_path)
    assert seen["exit"] == 0
    assert seen["at_exit"] == []


@pytest.mark.parametrize("command", [("--help",), ("strategies",), ("benchmarks",)])
def test_listing_commands_load_no_heavy_library(tmp_path: Path, command: tuple[str, ...]) -> None:
    seen = probe(*command, cwd=tmp_path)
    assert seen["exit"] == 0
    assert seen["at_exit"] == []


def test_split_digits_run_loads_matplotlib_only_for_its_report(tmp_path: Path) -> None:
    seen = probe(
        "run", "-s", "naive", "--epochs", "1", "--no-progress", "--out", str(tmp_path / "run"), cwd=tmp_path
    )
    assert seen["exit"] == 0
    assert seen["before_report"] == []  # training and scoring: none of them
    assert seen["at_exit"] == ["matplotlib"]  # the report's plots, and nothing else
    assert (tmp_path / "run" / "report.html").is_file()


def test_a_run_without_a_report_loads_no_plotting_library(tmp_path: Path) -> None:
    out = tmp_path / "run"
    seen = probe(
        "run",
        "-s",
        "naive",
        "--epochs",
        "1",
        "--no-progress",
        "--report",
        "none",
        "--out",
        str(out),
        cwd=tmp_path,
    )
    assert seen["exit"] == 0
    assert seen["at_exit"] == []
    assert (out / "results.json").is_file()
    assert (
        not (out / "report.md").exists()
        and not (out / "report.html").exists()
        and not (out / "plots").exists()
    )


def test_the_package_imports_nothing_until_a_name_is_used_and_every_public_name_resolves(
    tmp_path: Path,
) -> None:
    code = (
        "import sys, lifelong\n"
        "print('torch' in sys.modules)\n"
        "missing = [n for n in lifelong.__all__ if getattr(lifelong, n, None) is None]\n"
        "print(missing)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, check=True
    )
    assert done.stdout.split("\n")[:2] == ["False", "[]"]


def test_heavy_imports_pause_the_collector_and_freeze_once_per_module(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gc

    from lifelong.cli.startup import import_quietly, quiet_collector

    try:
        assert gc.isenabled()
        with quiet_collector():
            assert not gc.isenabled()
        assert gc.isenabled()
        gc.disable()  # a process that keeps its collector off keeps it off
        with quiet_collector():
            pass
        assert not gc.isenabled()
        gc.enable()

        (tmp_path / "startup_probe.py").write_text("LOADED = [gc for gc in range(3)]\n")
        monkeypatch.syspath_prepend(str(tmp_path))
        monkeypatch.delitem(sys.modules, "startup_probe", raising=False)
        before = gc.get_freeze_count()
        import_quietly("startup_probe")
        assert "startup_probe" in sys.modules and gc.get_freeze_count() > before
        frozen = gc.get_freeze_count()
        import_quietly("startup_probe")  # loaded: nothing imported, nothing frozen again
        assert gc.get_freeze_count() == frozen and gc.isenabled()
    finally:
        gc.enable()
        gc.unfreeze()  # this test process's objects go back to the collector
