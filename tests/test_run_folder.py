"""The run-folder rules every training command shares: nothing deleted that the run cannot prove it
wrote, one run per folder at a time, and `--resume` only into a run of the same command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lifelong.errors import LifelongError
from lifelong.runs.folder import RESULTS_FILE, RUN_FILE, RunFolder


def test_a_folder_with_files_no_run_wrote_is_refused_and_kept(cli, tmp_path: Path) -> None:
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "plots").mkdir()
    (tmp_path / "checkpoints" / "model_epoch99.pt").write_text("w")
    (tmp_path / "report.md").write_text("mine")
    code, _, err = cli("run", "--epochs", "1", "-s", "naive", "--no-progress", "--out", str(tmp_path))
    assert code == 2 and "holds no lifelong run" in err
    assert (tmp_path / "checkpoints" / "model_epoch99.pt").read_text() == "w"
    assert (tmp_path / "report.md").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoints", "plots", "report.md"]


def test_overwrite_replaces_only_the_files_the_run_named(tmp_path: Path) -> None:
    first = RunFolder.create(tmp_path, "run", {"a": 1})
    (tmp_path / RESULTS_FILE).write_text("{}")
    (tmp_path / "plots").mkdir()
    (tmp_path / "notes.txt").write_text("the user's own")
    first.release()
    with pytest.raises(LifelongError, match="already holds a finished run"):
        RunFolder.create(tmp_path, "run", {"a": 2})
    second = RunFolder.create(tmp_path, "run", {"a": 2}, overwrite=True)
    assert not (tmp_path / RESULTS_FILE).exists() and not (tmp_path / "plots").exists()
    assert (tmp_path / "notes.txt").read_text() == "the user's own"
    assert json.loads((tmp_path / RUN_FILE).read_text())["settings"] == {"a": 2}
    second.release()


def test_overwrite_obeys_no_hand_edited_file_list_beyond_the_names_the_command_writes(
    tmp_path: Path,
) -> None:
    run, victim = tmp_path / "run", tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("mine")
    (tmp_path / "data.csv").write_text("mine too")
    RunFolder.create(run, "run", {}).release()
    saved = json.loads((run / RUN_FILE).read_text())
    saved["files"] = ["../victim", str(tmp_path / "data.csv"), ".", "results.json"]
    (run / RUN_FILE).write_text(json.dumps(saved))
    (run / RESULTS_FILE).write_text("{}")
    RunFolder.create(run, "run", {}, overwrite=True).release()
    assert (victim / "precious.txt").read_text() == "mine"
    assert (tmp_path / "data.csv").read_text() == "mine too"
    assert run.is_dir() and not (run / RESULTS_FILE).exists()  # a name it writes, listed: removed


def test_a_run_json_lifelong_did_not_write_proves_nothing(tmp_path: Path) -> None:
    (tmp_path / RUN_FILE).write_text(json.dumps({"lr": 0.1}))  # the user's own, no format
    (tmp_path / RESULTS_FILE).write_text("mine")
    with pytest.raises(LifelongError, match="lifelong did not write"):
        RunFolder.create(tmp_path, "run", {}, overwrite=True)
    assert (tmp_path / RESULTS_FILE).read_text() == "mine"


def test_opening_a_run_removes_only_its_own_crashed_temporary_files(tmp_path: Path) -> None:
    RunFolder.create(tmp_path, "run", {}).release()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / ".draft.tmp").write_text("the user's")
    (tmp_path / ".vimrc.tmp").write_text("the user's")
    crashed = tmp_path / ".results.json.ab_12xyz.tmp"  # what atomic_write_bytes leaves if killed
    crashed.write_text("{")
    RunFolder.resume(tmp_path, "run").release()
    assert not crashed.exists()
    assert (tmp_path / "notes" / ".draft.tmp").exists() and (tmp_path / ".vimrc.tmp").exists()


def test_a_folder_is_locked_while_a_run_holds_it(tmp_path: Path) -> None:
    holder = RunFolder.create(tmp_path / "run", "run", {})
    with pytest.raises(LifelongError, match="in use by a run of process"):
        RunFolder.resume(tmp_path / "run", "run")
    holder.release()
    RunFolder.resume(tmp_path / "run", "run").release()


def test_resume_and_overwrite_keep_to_their_own_command(tmp_path: Path) -> None:
    RunFolder.create(tmp_path, "pretrain", {}).release()
    with pytest.raises(LifelongError, match="holds a 'lifelong pretrain' run"):
        RunFolder.resume(tmp_path, "finetune")
    with pytest.raises(LifelongError, match="holds a 'lifelong pretrain' run"):
        RunFolder.create(tmp_path, "run", {}, overwrite=True)


def test_abandon_removes_only_a_folder_it_created_with_no_finished_task(tmp_path: Path) -> None:
    created = RunFolder.create(tmp_path / "new", "run", {})
    assert created.abandon() and not (tmp_path / "new").exists()
    (tmp_path / "old").mkdir()
    reused = RunFolder.create(tmp_path / "old", "run", {})
    assert not reused.abandon() and (tmp_path / "old" / RUN_FILE).is_file()


def test_two_runs_on_one_folder_at_once_one_runs_and_the_other_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "shared"
    common = [sys.executable, "-m", "lifelong", "run", "--epochs", "2", "--threads", "1", "--no-progress"]
    procs = [
        subprocess.Popen(
            [*common, *strategies, "--out", str(out)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for strategies in (["-s", "naive", "-s", "replay"], ["-s", "ewc", "-s", "lwf"])
    ]
    outcomes = [(proc.wait(timeout=600), proc.stderr.read() if proc.stderr else "") for proc in procs]
    codes = sorted(code for code, _ in outcomes)
    assert codes == [0, 2], outcomes
    refusal = next(err for code, err in outcomes if code == 2)
    assert len(refusal.strip().splitlines()) == 1 and "Traceback" not in refusal
    winner = json.loads((out / RUN_FILE).read_text())["settings"]["strategies"]
    results = json.loads((out / RESULTS_FILE).read_text())
    assert [r["strategy"] for r in results["results"]] == winner
    assert all(name in (out / "report.html").read_text() for name in winner)


def test_a_run_in_progress_is_named_as_such_not_as_one_to_resume(tmp_path: Path) -> None:
    holder = RunFolder.create(tmp_path / "run", "run", {})
    with pytest.raises(LifelongError, match="in use by a run of process"):
        RunFolder.create(tmp_path / "run", "run", {})
    holder.release()
    with pytest.raises(LifelongError, match="holds an unfinished run"):
        RunFolder.create(tmp_path / "run", "run", {})
