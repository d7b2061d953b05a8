"""Several processes on this CPU (gloo): the same run, sharded, must give the single-process answer."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lifelong import Learner, build_benchmark, build_model
from lifelong.core.checkpoint import MANIFEST_FILE, latest_checkpoint
from lifelong.core.distributed import local_share, resolve_device, without_option
from lifelong.runs.folder import LOCK_FILE, strategy_dir
from lifelong.strategies.ewc import EWC

WORKERS = Path(__file__).parent / "workers"


def launch(*args: str, processes: int = 2) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
    return subprocess.run([*command, *args], capture_output=True, text=True, env=env, timeout=600)


def lifelong_run(*args: str) -> subprocess.CompletedProcess[str]:
    """``lifelong run ARGS`` in a fresh process (one thread per process), its output captured."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "lifelong", "run", *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)


@pytest.fixture(scope="module")
def two_process_task(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, torch.Tensor], ...]:
    out = tmp_path_factory.mktemp("ranks")
    done = launch(str(WORKERS / "distributed_task.py"), str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    return load_file(out / "rank0.safetensors"), load_file(out / "rank1.safetensors")


def test_every_process_ends_the_task_with_identical_weights(two_process_task) -> None:
    rank0, rank1 = two_process_task
    weights = [k for k in rank0 if k.startswith("weight.")]
    assert weights
    for key in weights:
        assert torch.equal(rank0[key], rank1[key]), key


def test_fisher_over_shards_equals_the_single_process_fisher(two_process_task) -> None:
    rank0, rank1 = two_process_task
    stream = build_benchmark("split-digits:tasks=2", seed=0)
    model = build_model("mlp", stream.input_shape, stream.num_classes)
    model.load_state_dict({k.removeprefix("weight."): v for k, v in rank0.items() if k.startswith("weight.")})
    x, y = stream.tasks[0].train.tensors
    want = EWC(model).fisher_information([(x, y)])
    for name, value in want.items():
        got0, got1 = rank0[f"fisher.{name}"], rank1[f"fisher.{name}"]
        assert torch.equal(got0, got1), name  # every process holds the same Fisher
        scale = value.abs().max().clamp_min(1e-12)
        assert float((got0 - value).abs().max() / scale) < 1e-5, name


def test_two_process_run_matches_one_process(tmp_path: Path) -> None:
    """The issue's acceptance: replay+ewc on split-digits, 2 processes vs 1, same global batch."""
    args = ["--strategy", "replay+ewc", "--no-progress", "--device", "cpu"]  # the default settings
    single = lifelong_run(*args, "--out", str(tmp_path / "one"))
    assert single.returncode == 0, single.stderr[-3000:]
    double = lifelong_run(*args, "--processes", "2", "--out", str(tmp_path / "two"))
    assert double.returncode == 0, double.stderr[-3000:]
    assert double.stdout.count("results written to") == 1  # only the main process prints
    one = json.loads((tmp_path / "one" / "results.json").read_text())
    two = json.loads((tmp_path / "two" / "results.json").read_text())
    assert (one["processes"], two["processes"]) == (1, 2)
    acc_one = one["results"][0]["metrics"]["average_accuracy"]
    acc_two = two["results"][0]["metrics"]["average_accuracy"]
    assert acc_two > 0.8 and abs(acc_one - acc_two) <= 0.05, (acc_one, acc_two)
    assert len(list((tmp_path / "two").rglob("results.json"))) == 1


def kill_tree(pid: int) -> None:
    """SIGKILL a process and every process under it (the launcher's workers run in their own group)."""
    found, pending = [], [pid]
    while pending:
        parent = pending.pop()
        found.append(parent)
        listed = subprocess.run(["ps", "-o", "pid=", "--ppid", str(parent)], capture_output=True, text=True)
        pending += [int(child) for child in listed.stdout.split()]
    for each in found:  # the launcher first: it cannot start new workers once dead
        with contextlib.suppress(ProcessLookupError):
            os.kill(each, signal.SIGKILL)
    # A killed process lets go of its files (the run folder's lock among them) only once it has
    # exited: wait until each is gone or a zombie, so that what follows never meets a dying one.
    deadline = time.monotonic() + 30
    while any(_alive(each) for each in found) and time.monotonic() < deadline:
        time.sleep(0.01)


def wait_until_unlocked(folder: Path) -> None:
    """A killed process's threads can outlive its zombie leader, and its files stay open until the
    last one exits: wait for the run folder's lock itself to be free."""
    deadline = time.monotonic() + 60
    with (folder / LOCK_FILE).open("a+") as handle:
        while time.monotonic() < deadline:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                time.sleep(0.05)
            else:
                fcntl.flock(handle, fcntl.LOCK_UN)
                return
    pytest.fail(f"{folder} was still locked a minute after its run was killed")


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return "State:\tZ" not in status


def test_a_killed_two_process_run_resumes_to_the_uninterrupted_numbers(cli, tmp_path: Path) -> None:
    """Each process checkpoints its own replay share and generators; the main one commits the task."""
    args = ["-s", "replay", "--epochs", "4", "--batch-size", "16", "--seed", "1", "--no-progress"]
    args += ["--device", "cpu", "--processes", "2"]
    killed = tmp_path / "killed"
    run = subprocess.Popen(
        [sys.executable, "-m", "lifelong", "run", *args, "--out", str(killed)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    marker = strategy_dir(killed, 0, "replay") / "task-1" / MANIFEST_FILE
    deadline = time.monotonic() + 300
    while not marker.exists():
        if run.poll() is not None or time.monotonic() > deadline:
            kill_tree(run.pid)
            pytest.fail(
                f"run ended or stalled before its second checkpoint: {run.stderr.read().decode()[-2000:]}"
            )  # type: ignore[union-attr]
        time.sleep(0.005)
    kill_tree(run.pid)
    run.wait()
    wait_until_unlocked(killed)
    assert not (killed / "results.json").exists()
    latest = latest_checkpoint(strategy_dir(killed, 0, "replay"))
    assert latest is not None and latest.name in ("task-1", "task-2", "task-3"), latest  # died mid-stream
    assert (latest.parent / "rank-1" / latest.name / MANIFEST_FILE).is_file()  # the other process's part

    code, _, err = cli("run", "--resume", str(killed), "--no-progress")  # one process: refused, nothing lost
    assert code == 2 and "resume with --processes 2" in err
    resumed = lifelong_run("--resume", str(killed), "--processes", "2", "--no-progress")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    straight = lifelong_run(*args, "--out", str(tmp_path / "straight"))
    assert straight.returncode == 0, straight.stderr[-3000:]
    after = json.loads((killed / "results.json").read_text())["results"][0]
    want = json.loads((tmp_path / "straight" / "results.json").read_text())["results"][0]
    assert after["accuracy_matrix"] == want["accuracy_matrix"]


def test_bad_input_in_a_two_process_run_is_one_line(tmp_path: Path) -> None:
    done = lifelong_run("--strategy", "nope", "--processes", "2", "--out", str(tmp_path / "r"))
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "unknown strategy" in lines[0], done.stderr
    assert not (tmp_path / "r").exists()


def test_buffer_shares_add_up_to_the_configured_size(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "3")
    shares = []
    for rank in range(3):
        monkeypatch.setenv("RANK", str(rank))
        shares.append(local_share(200))
    assert shares == [67, 67, 66]


def test_processes_flag_is_not_passed_on_to_the_children() -> None:
    argv = ["run", "--processes", "2", "--strategy", "ewc", "--processes=3", "--out", "x"]
    assert without_option(argv, "--processes") == ["run", "--strategy", "ewc", "--out", "x"]


def test_a_bare_cuda_device_resolves_to_the_current_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    # Tensors on a GPU report their index: the learner compares devices to skip moves, so a bare
    # "cuda" (no index) would never equal them.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    assert resolve_device("cuda") == torch.device("cuda", 1)
    assert resolve_device("auto") == torch.device("cuda", 1)
    assert resolve_device("cuda:0") == torch.device("cuda", 0)
    assert resolve_device("cpu") == torch.device("cpu")


def test_one_process_learner_builds_no_accelerator() -> None:
    learner = Learner(torch.nn.Linear(4, 2), device="cpu")
    assert learner.processes.accelerator is None and learner.processes.world == 1


def test_two_process_continual_pretrain_writes_one_run_and_splits_evaluation(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    from lifelong.llm.corpora import load_corpus

    prose, code = tmp_path / "prose.txt", tmp_path / "code.jsonl"
    prose.write_text("\n".join(load_corpus("prose").documents[:20]), encoding="utf-8")
    code.write_text(
        "\n".join(json.dumps({"text": c[:800]}) for c in load_corpus("code").documents[:4]), encoding="utf-8"
    )
    out = tmp_path / "cpt"
    env = {**os.environ, "LIFELONG_CACHE": str(tmp_path / "cache")}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    done = subprocess.run(
        [*command, str(WORKERS / "distributed_pretrain.py"), str(prose), str(code), str(out)],
        capture_output=True,
        text=True,
        env={**env, "OMP_NUM_THREADS": "1"},
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    document = json.loads((out / "results.json").read_text())
    perplexity = json.loads((out / "perplexity.json").read_text())
    assert document["tasks"] == ["prose", "code"]
    assert perplexity["after"]["code"] < perplexity["before"]["code"]  # it learned the new domain
    assert (out / "model" / "model.safetensors").is_file()
    assert len(list(out.rglob("results.json"))) == 1
    nll = json.loads((out / "nll.json").read_text())  # perplexity evaluation split over the processes
    assert nll["forwards"] == [2, 1]  # each process ran its own share of the 3 batches
    assert nll["shared"][1] == nll["alone"][1] == 55
    assert nll["shared"][0] == pytest.approx(nll["alone"][0], rel=1e-5)


@pytest.mark.parametrize("strategies", ["ewc", "lwf"])
def test_penalties_needing_whole_parameters_are_refused_under_fsdp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, strategies: str
) -> None:
    pytest.importorskip("transformers")
    from transformers import TrainingArguments

    from lifelong.errors import LifelongError
    from lifelong.llm.models import load_model
    from lifelong.llm.trainer import ContinualTrainer

    monkeypatch.setenv("LIFELONG_CACHE", str(tmp_path / "cache"))
    model, _ = load_model("tiny-llama:vocab_size=512,hidden=32,layers=1,heads=2")
    args = TrainingArguments(output_dir=str(tmp_path / "t"), use_cpu=True, report_to="none")
    trainer = ContinualTrainer(model=model, args=args, strategies=strategies)
    trainer._refuse_sharded_parameters()  # plain DDP or one process: accepted
    trainer.is_fsdp_enabled = True
    with pytest.raises(LifelongError, match="FSDP / DeepSpeed ZeRO-3"):
        trainer._refuse_sharded_parameters()
    assert ContinualTrainer(model=model, args=args, strategies="naive")  # nothing that needs a whole copy


def test_bf16_mixed_precision_run_learns_like_full_precision(tmp_path: Path) -> None:
    """In a subprocess: Accelerate's state is one per process, and other tests build their own."""
    args = ["--strategy", "replay", "--epochs", "3", "--no-progress", "--device", "cpu", "--threads", "1"]
    accuracies = []
    for precision in ("no", "bf16"):
        out = tmp_path / precision
        done = lifelong_run(*args, "--precision", precision, "--out", str(out))
        assert done.returncode == 0, done.stderr[-3000:]
        document = json.loads((out / "results.json").read_text())
        assert document["config"]["precision"] == precision
        accuracies.append(document["results"][0]["metrics"]["average_accuracy"])
    assert accuracies[1] > 0.5 and abs(accuracies[0] - accuracies[1]) < 0.1, accuracies
    assert accuracies[0] != accuracies[1]  # bf16 really ran: its rounding changes the numbers


def test_two_process_overwrite_of_a_finished_run_trains_again(tmp_path: Path) -> None:
    """The main process clears the old run before any process may take its results for finished."""
    args = [
        "--strategy",
        "naive",
        "--epochs",
        "1",
        "--no-progress",
        "--processes",
        "2",
        "--out",
        str(tmp_path / "r"),
    ]
    for extra in ([], ["--overwrite", "--seed", "1"]):
        done = lifelong_run(*args, *extra)
        assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((tmp_path / "r" / "results.json").read_text())["config"]["seed"] == 1
