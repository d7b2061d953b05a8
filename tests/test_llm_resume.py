"""`lifelong finetune` and `lifelong pretrain` killed after a task's checkpoint resume to the numbers of an
uninterrupted run, to the last digit; a resume with other settings, data or a changed checkpoint is refused."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("transformers")
pytest.importorskip("peft")

from lifelong.core.checkpoint import MANIFEST_FILE, latest_checkpoint
from lifelong.llm.corpora import load_corpus
from lifelong.runs.folder import strategy_dir

TINY = "tiny-llama:vocab_size=512,hidden=32,layers=1,heads=2"
SKILLS = "skills:train=32,heldout=4"  # three tasks: upper, reverse, shift
FINETUNE = ["--model", TINY, "--data", SKILLS, "--batch-size", "16", "--epochs", "1", "--eval-examples", "4"]
# On the CPU wherever the tests run: GPU kernels may add in any order, and "the same numbers" is to the last digit.
FINETUNE += ["--max-length", "32", "--max-new-tokens", "12", "--device", "cpu", "--no-progress"]
COMPARED = (
    "accuracy_matrix",
    "loss_matrix",
    "initial_scores",
    "initial_loss",
    "metrics",
    "loss_metrics",
    "merged",
    "watch",  # watch sets' scores are part of what a checkpoint keeps
    "accuracy_matrix_se",
    "loss_matrix_se",
)

pytestmark = pytest.mark.usefixtures("llm_cache")  # tiny-llama builds once, in a test folder


def kill_at(args: list[str], marker: Path) -> None:
    """Run ``lifelong *args`` in a process of its own and SIGKILL it once ``marker`` exists."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "lifelong", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "OMP_NUM_THREADS": "1"},  # the same threads as the in-process runs compared
    )
    deadline = time.monotonic() + 300
    while not marker.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            err = proc.stderr.read().decode()[-2000:] if proc.stderr else ""
            pytest.fail(f"lifelong {args[0]} ended or stalled before {marker} was written: {err}")
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def task_marker(run: Path, index: int, composition: str, task: int) -> Path:
    return strategy_dir(run, index, composition) / f"task-{task}" / MANIFEST_FILE


def results(run: Path) -> list[dict[str, Any]]:
    """What a run measured: its matrices and metrics (not its timings, nor the paths it wrote)."""
    found = []
    for result in json.loads((run / "results.json").read_text())["results"]:
        kept = {key: result.get(key) for key in ("strategy", *COMPARED)}
        if kept["merged"] is not None:
            kept["merged"] = {key: kept["merged"][key] for key in ("scores", "loss")}
        found.append(kept)
    return found


@pytest.mark.parametrize(
    "lora", [[], ["--lora", "--lora-r", "4", "--merge", "--lr", "1e-2"]], ids=["full", "lora"]
)
def test_finetune_killed_in_each_composition_resumes_to_the_same_matrices(
    cli: Any, tmp_path: Path, lora: list[str]
) -> None:
    """Killed once in each composition (replay, then lwf on earlier prompts), resumed twice; a watch set
    is scored all along."""
    probe = tmp_path / "probe.jsonl"
    rows = [
        {"prompt": f"{a} + {a} =", "choices": [f" {2 * a}", f" {a}", f" {a + 1}"], "answer": 0}
        for a in range(6)
    ]
    probe.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    args = [*FINETUNE, *lora, "-s", "replay", "-s", "lwf:prompts=earlier", "--eval", str(probe)]
    killed = tmp_path / "killed"
    kill_at(["finetune", *args, "--out", str(killed)], task_marker(killed, 0, "replay:ratio=0.1", 1))
    # tiny-llama trains the first task once for both compositions (without --lora), kept apart.
    assert (killed / "checkpoints" / "shared" / "task-0" / "model.safetensors").is_file() != bool(lora)
    second = "lwf:prompts=earlier,ratio=0.1"
    kill_at(["finetune", "--resume", str(killed), "--no-progress"], task_marker(killed, 1, second, 1))
    assert (strategy_dir(killed, 0, "replay:ratio=0.1") / "result.json").is_file()
    assert not (killed / "results.json").exists()

    code, _, err = cli("finetune", "--resume", str(killed), "--no-progress")
    assert code == 0, err
    code, _, err = cli("finetune", *args, "--out", str(tmp_path / "straight"))
    assert code == 0, err
    assert results(killed) == results(tmp_path / "straight")
    assert all(len(r["watch"][0]["scores"]) == 3 for r in results(killed))
    # Only the newest checkpoint of each composition is kept.
    assert [p.name for p in strategy_dir(killed, 1, second).glob("task-*")] == ["task-2"]
    lines = [json.loads(line) for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert {(line["strategy"], line["after_task"]) for line in lines} >= {
        ("replay:ratio=0.1", 2),
        (second, 2),
    }


@pytest.fixture
def domains(tmp_path: Path) -> list[Path]:
    prose = load_corpus("prose").documents[:16]
    code = load_corpus("code").documents[:3]
    files = [tmp_path / "first.txt", tmp_path / "second.txt", tmp_path / "code.jsonl"]
    files[0].write_text("\n".join(prose[:8]), encoding="utf-8")
    files[1].write_text("\n".join(prose[8:]), encoding="utf-8")
    files[2].write_text("\n".join(json.dumps({"text": c[:600]}) for c in code), encoding="utf-8")
    return files


def test_pretrain_replay_and_ewc_resumes_to_the_same_matrix_and_refuses_what_changed(
    cli: Any, tmp_path: Path, domains: list[Path]
) -> None:
    composition = "replay:ratio=0.2+ewc"
    args = ["--model", TINY, *(a for d in domains for a in ("--corpus", str(d))), "-s", composition]
    args += [
        "--block-size", "16", "--batch-size", "8", "--eval-blocks", "4", "--lr", "3e-3",
        "--first-epochs", "1", "--device", "cpu",
    ]  # fmt: skip
    killed = tmp_path / "killed"
    kill_at(["pretrain", *args, "--out", str(killed)], task_marker(killed, 0, composition, 1))
    latest = latest_checkpoint(strategy_dir(killed, 0, composition))
    assert latest is not None and (latest / "perplexity.json").is_file()

    refuse_what_changed(cli, tmp_path, killed, latest, domains[0])

    code, _, err = cli("pretrain", "--resume", str(killed))
    assert code == 0, err
    code, _, err = cli("pretrain", *args, "--out", str(tmp_path / "straight"))
    assert code == 0, err
    assert results(killed) == results(tmp_path / "straight")


def refuse_what_changed(cli: Any, tmp_path: Path, killed: Path, latest: Path, data: Path) -> None:
    """Each resume below is refused with one line, and leaves the run as it was."""

    def refused(run: Path, *extra: str) -> str:
        code, _, err = cli("pretrain", "--resume", str(run), *extra)
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        return err

    assert "drop --epochs, --lr" in refused(killed, "--epochs", "2", "--lr", "1e-3")

    settings = tmp_path / "settings"
    shutil.copytree(killed, settings)
    saved = json.loads((settings / "run.json").read_text())
    saved["settings"]["settings"]["learning_rate"] = 0.5
    (settings / "run.json").write_text(json.dumps(saved))
    assert "was written with other settings or data" in refused(settings)

    tampered = tmp_path / "tampered"
    shutil.copytree(killed, tampered)
    weights = tampered / latest.relative_to(killed) / "model.safetensors"
    data_bytes = bytearray(weights.read_bytes())
    data_bytes[-1] ^= 0xFF
    weights.write_bytes(bytes(data_bytes))
    assert f"{weights} does not match its checksum" in refused(tampered)

    original = data.read_text(encoding="utf-8")
    data.write_text(original.replace("the", "a"), encoding="utf-8")
    try:
        assert "was written with other settings or data" in refused(killed)
    finally:
        data.write_text(original, encoding="utf-8")
    assert not (killed / ".lock").exists() and not (killed / "results.json").exists()


@pytest.mark.parametrize("edit", ["batch_size", "strategies"])
def test_a_hand_edited_run_json_of_the_wrong_kinds_is_damaged_in_one_line(tmp_path: Path, edit: str) -> None:
    from lifelong.errors import LifelongError
    from lifelong.llm.finetune import FinetuneRequest
    from lifelong.llm.finetune_data import FinetuneSettings
    from lifelong.runs.folder import RunFolder

    request = FinetuneRequest("tiny-llama", ["skills"], [], ["naive"], 0.1, FinetuneSettings())
    saved = request.saved()
    if edit == "batch_size":
        saved["settings"]["batch_size"] = "x"
    else:
        saved["strategies"] = 5
    RunFolder.create(tmp_path / "run", "finetune", saved).release()
    with pytest.raises(LifelongError, match=r"run\.json is damaged.*start a new run"):
        FinetuneRequest.from_saved(tmp_path / "run", None, None, None)
