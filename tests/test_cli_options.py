"""The options every command that trains shares: the same names, help lines and defaults on `run`,
`pretrain` and `finetune`; --config reads the same YAML keys as the flags; --resume refuses settings."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.core import TyperOption

from lifelong.cli.app import app
from lifelong.llm.settings import FinetuneConfig

TRAINING = ["run", "pretrain", "finetune"]
COMMON = ["out", "overwrite", "seed", "device", "threads", "progress", "config", "resume"]
FLAGS = ["--out", "--overwrite", "--seed", "--device", "--threads", "--progress", "--no-progress"]
FLAGS += ["--config", "--resume"]
# An example value for each common option that takes one (flags take none).
VALUES = {"--out": "somewhere", "--seed": "3", "--device": "cpu", "--threads": "1", "--config": "c.yaml"}
VALUES["--resume"] = "some-run"
TINY = "tiny-llama:vocab_size=512,hidden=32,layers=1,heads=2"


def options(command: str) -> dict[str, TyperOption]:
    group = typer.main.get_command(app)
    params = group.commands[command].params  # type: ignore[attr-defined]
    return {p.name: p for p in params if isinstance(p, TyperOption) and p.name}


@pytest.mark.parametrize("command", TRAINING)
@pytest.mark.parametrize("flag", FLAGS)
def test_every_training_command_accepts_each_common_option(cli: Any, command: str, flag: str) -> None:
    """Parsed before --help answers: an unknown option would be 'No such option' and exit 2."""
    value = [VALUES[flag]] if flag in VALUES else []
    code, out, err = cli(command, flag, *value, "--help")
    assert code == 0, err
    assert flag in out


@pytest.mark.parametrize("name", COMMON)
def test_a_common_option_reads_the_same_on_every_training_command(name: str) -> None:
    found = [options(command)[name] for command in TRAINING]
    assert len({(tuple(p.opts), tuple(p.secondary_opts)) for p in found}) == 1
    assert len({p.help for p in found}) == 1, [p.help for p in found]
    assert len({repr(p.default) for p in found}) == 1


def test_the_learning_rate_reads_alike() -> None:
    helps = [options(command)["lr"].help or "" for command in TRAINING]
    assert all(h.startswith("Learning rate (the schedule's peak).") for h in helps), helps


@pytest.mark.parametrize("command", TRAINING)
@pytest.mark.parametrize("extra", [["--seed", "1"], ["--epochs", "2", "--lr", "0.1"], ["--config", "c.yaml"]])
def test_resume_refuses_settings_in_one_line(
    cli: Any, tmp_path: Path, command: str, extra: list[str]
) -> None:
    code, _, err = cli(command, "--resume", str(tmp_path / "run"), *extra)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"drop {', '.join(a for a in extra if a.startswith('--'))}" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("command", TRAINING)
def test_config_refuses_an_unknown_key_in_one_line(cli: Any, tmp_path: Path, command: str) -> None:
    config = tmp_path / "settings.yaml"
    config.write_text("epochs: 2\ncolour: red\n")
    code, _, err = cli(command, "--config", str(config), "--out", str(tmp_path / "run"))
    assert code == 2 and "unknown key 'colour'" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "run").exists()


def test_finetune_config_file_then_flags(cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """YAML keys are the fields or the long flags; a flag beats the file; None fields resolve by model."""
    import lifelong.llm.finetune as finetune_module

    given: list[FinetuneConfig] = []
    monkeypatch.setattr(finetune_module, "run_finetune_config", lambda config, **_: given.append(config))
    config = tmp_path / "finetune.yaml"
    config.write_text(
        f"model: '{TINY}'\nstrategy:\n  - replay\n  - [{{name: replay, ratio: 0.3}}, lwf]\n"
        "batch-size: 8\nepochs: 2\nlora: true\nlora_r: 4\n"
    )
    code, _, err = cli("finetune", "--config", str(config), "--epochs", "3", "--no-progress")
    assert code == 0, err
    (settings,) = given
    assert settings.strategies == ["replay", "replay:ratio=0.3+lwf"]
    assert settings.lora_setting == {"r": 4}
    resolved = settings.finetune_settings()
    assert (resolved.epochs, resolved.batch_size) == (3, 8)
    assert (resolved.learning_rate, resolved.max_length) == (3e-3, 64)  # tiny-llama's, not given


@pytest.mark.usefixtures("llm_cache")
def test_pretrain_runs_from_a_config_file(cli: Any, tmp_path: Path) -> None:
    """The real path: a YAML file's settings are the run's (run.json), under a flag's override."""
    pytest.importorskip("transformers")
    from lifelong.llm.corpora import load_corpus

    prose = load_corpus("prose").documents
    corpora = [tmp_path / "first.txt", tmp_path / "second.txt"]
    corpora[0].write_text("\n".join(prose[:6]), encoding="utf-8")
    corpora[1].write_text("\n".join(prose[6:12]), encoding="utf-8")
    config = tmp_path / "pretrain.yaml"
    config.write_text(
        f"model: '{TINY}'\ncorpus: ['{corpora[0]}', '{corpora[1]}']\nstrategy: naive\n"
        "epochs: 0.5\nfirst_epochs: 1\nblock-size: 16\nbatch-size: 8\neval-blocks: 2\nlr: 0.003\n"
        "device: cpu\nseed: 1\n"
    )
    out = tmp_path / "run"
    code, _, err = cli("pretrain", "--config", str(config), "--seed", "2", "--out", str(out), "--no-progress")
    assert code == 0, err
    saved = json.loads((out / "run.json").read_text())["settings"]
    assert saved["compositions"] == ["naive"]
    assert saved["settings"]["epochs"] == 0.5 and saved["settings"]["block_size"] == 16
    assert saved["settings"]["seed"] == 2  # the flag beats the file


@pytest.mark.parametrize(
    ("model", "omp", "load", "threads"),
    [
        ("tiny-llama", None, 0.0, 1),  # a model this small waits on its own threads even on idle cores
        ("smollm2-135m", None, 0.2, 4),
        ("smollm2-135m", None, 1.3, 3),
        ("smollm2-135m", None, 6.0, 1),  # a busy machine: one thread, never none
        ("smollm2-135m", "2", 0.0, None),  # OMP_NUM_THREADS is the user's choice: torch follows it
    ],
)
def test_default_threads_are_the_idle_cores(
    monkeypatch: pytest.MonkeyPatch, model: str, omp: str | None, load: float, threads: int | None
) -> None:
    import os

    from lifelong.llm.settings import default_threads

    monkeypatch.setattr(os, "getloadavg", lambda: (load, load, load))
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    if omp is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", omp)
    assert default_threads(model) == threads
