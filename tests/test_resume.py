"""Checkpoints and resume: a run killed mid-task continues to the same numbers, to the last digit."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lifelong.core.checkpoint import MANIFEST_FILE, TENSORS_FILE, latest_checkpoint, sha256_file
from lifelong.runs.folder import strategy_dir

SLOW = ["--epochs", "6", "--batch-size", "8", "--lr", "0.01", "--seed", "1", "--no-progress"]


def kill_during_third_task(out: Path, strategy: str) -> None:
    """Start a real `lifelong run` process and SIGKILL it once two tasks are checkpointed."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "lifelong", "run", "-s", strategy, *SLOW, "--out", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "OMP_NUM_THREADS": "1"},  # the same threads as the in-process runs compared
    )
    marker = strategy_dir(out, 0, strategy) / "task-1" / MANIFEST_FILE
    deadline = time.monotonic() + 300
    while not marker.exists():
        if proc.poll() is not None:
            pytest.fail(
                f"run ended before it could be killed: {proc.stderr.read().decode() if proc.stderr else ''}"
            )
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("run did not reach its second checkpoint in time")
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.mark.parametrize("strategy", ["naive", "replay", "ewc", "lwf", "der++", "lora"])
def test_sigkill_then_resume_equals_an_uninterrupted_run(cli, tmp_path: Path, strategy: str) -> None:
    killed = tmp_path / "killed"
    kill_during_third_task(killed, strategy)
    assert not (killed / "results.json").exists()
    latest = latest_checkpoint(strategy_dir(killed, 0, strategy))
    assert latest is not None and latest.name in ("task-1", "task-2", "task-3"), latest  # died mid-stream

    code, _, err = cli("run", "--resume", str(killed), "--no-progress")
    assert code == 0, err
    code, _, err = cli("run", "-s", strategy, *SLOW, "--out", str(tmp_path / "straight"))
    assert code == 0, err

    resumed = json.loads((killed / "results.json").read_text())["results"][0]
    straight = json.loads((tmp_path / "straight" / "results.json").read_text())["results"][0]
    assert resumed["accuracy_matrix"] == straight["accuracy_matrix"]
    assert resumed["metrics"] == straight["metrics"]


def finished_checkpoint(cli, tmp_path: Path) -> tuple[Path, Path]:
    """A run with one checkpointed task, its results removed so that it counts as unfinished."""
    out = tmp_path / "run"
    assert cli("run", "-s", "naive", "--epochs", "1", "--out", str(out), "--no-progress")[0] == 0
    (out / "results.json").unlink()
    folder = strategy_dir(out, 0, "naive")
    (folder / "result.json").unlink()
    latest = latest_checkpoint(folder)
    assert latest is not None
    return out, latest


def test_tampered_checkpoint_is_refused_naming_the_file(cli, tmp_path: Path) -> None:
    out, latest = finished_checkpoint(cli, tmp_path)
    tensors = latest / TENSORS_FILE
    data = bytearray(tensors.read_bytes())
    data[-1] ^= 0xFF
    tensors.write_bytes(bytes(data))
    code, _, err = cli("run", "--resume", str(out), "--no-progress")
    assert code == 2
    assert str(tensors) in err and "does not match its checksum" in err
    assert len(err.strip().splitlines()) == 1


def test_pickle_payload_in_place_of_a_checkpoint_is_never_executed(cli, tmp_path: Path) -> None:
    out, latest = finished_checkpoint(cli, tmp_path)
    witness = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(witness), "w"))

    tensors = latest / TENSORS_FILE
    tensors.write_bytes(pickle.dumps(Payload()))
    manifest = json.loads((latest / MANIFEST_FILE).read_text())
    # The checksum matches: only the file format can stop the payload.
    manifest["files"][TENSORS_FILE] = sha256_file(tensors)
    (latest / MANIFEST_FILE).write_text(json.dumps(manifest))
    code, _, err = cli("run", "--resume", str(out), "--no-progress")
    assert code == 2 and "cannot be read" in err
    assert not witness.exists()


def test_checkpoint_from_another_config_is_refused(cli, tmp_path: Path) -> None:
    out, _ = finished_checkpoint(cli, tmp_path)
    run = json.loads((out / "run.json").read_text())
    run["settings"]["config"]["lr"] = 0.5
    (out / "run.json").write_text(json.dumps(run))
    code, _, err = cli("run", "--resume", str(out), "--no-progress")
    assert code == 2 and "different config" in err


def test_resume_refuses_finished_runs_and_extra_flags(cli, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert cli("run", "-s", "naive", "--epochs", "1", "--out", str(out), "--no-progress")[0] == 0
    code, _, err = cli("run", "--resume", str(out))
    assert code == 2 and "nothing to resume" in err
    code, _, err = cli("run", "--resume", str(out), "--epochs", "3")
    assert code == 2 and "drop --epochs" in err
    code, _, err = cli("run", "--resume", str(tmp_path / "nowhere"))
    assert code == 2 and "has no run.json" in err


def test_unfinished_run_folder_points_to_resume(cli, tmp_path: Path) -> None:
    out, _ = finished_checkpoint(cli, tmp_path)
    code, _, err = cli("run", "-s", "naive", "--out", str(out))
    assert code == 2 and f"--resume {out}" in err


def test_nan_keeps_the_last_good_checkpoint(cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from lifelong.strategies import REGISTRY, Strategy

    class Poison(Strategy):
        """Turns the loss into NaN from the third task on."""

        name = "poison"

        def penalty(self, learner, batch, outputs):
            return outputs.sum() * float("nan") if learner.task.index >= 2 else torch.zeros(())

    monkeypatch.setitem(REGISTRY, "poison", Poison)
    out = tmp_path / "run"
    code, _, err = cli("run", "-s", "poison", "--epochs", "1", "--out", str(out), "--no-progress")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "loss became nan in task 'task2:4,5', epoch 1; lower the learning rate" in err
    assert f"continue with --resume {out}" in err
    latest = latest_checkpoint(strategy_dir(out, 0, "poison"))
    assert latest is not None and latest.name == "task-1"
    assert not (out / "results.json").exists()


def test_failure_before_any_checkpoint_leaves_no_folder(cli, tmp_path: Path) -> None:
    out = tmp_path / "run"
    code, _, err = cli(
        "run", "-s", "naive", "--optimizer", "sgd", "--lr", "1e30", "--epochs", "2", "--out", str(out)
    )
    assert code == 2 and "loss became" in err
    assert not out.exists()


def test_settings_added_later_keep_the_fingerprint_of_runs_from_before_them_at_their_defaults() -> None:
    from lifelong.core.checkpoint import json_digest
    from lifelong.experiment.run import LATER_SETTINGS, config_fingerprint
    from lifelong.experiment.settings import RunConfig

    config = RunConfig(epochs=2, seed=3)
    fields = config.to_json()
    # Each later setting's rule value is its default: else every run would drop or keep it wrongly.
    assert {k: fields[k] for k in LATER_SETTINGS} == LATER_SETTINGS
    # A run checkpointed before those settings existed wrote its fingerprint without them.
    older = {k: v for k, v in fields.items() if k not in ("out", "overwrite", *LATER_SETTINGS)}
    assert config_fingerprint(config, ["naive"]) == json_digest({**older, "strategies": ["naive"]})
    # Set away from its default, each one counts: such a run is not an older run's.
    changed = {
        "data_root": "elsewhere",
        "download": True,
        "augment": True,
        "image_size": 16,
        "text_column": "t",
    }
    assert set(changed) == set(LATER_SETTINGS)
    for key, value in changed.items():
        other = RunConfig(**{**fields, key: value})
        assert config_fingerprint(other, ["naive"]) != config_fingerprint(config, ["naive"]), key
