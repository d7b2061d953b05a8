from __future__ import annotations

import json
from pathlib import Path

import pytest


def test_run_writes_results_json_with_the_documented_schema(cli, tmp_path: Path) -> None:
    out = tmp_path / "run"
    code, stdout, _ = cli("run", "--strategy", "naive", "--epochs", "1", "--out", str(out), "--no-progress")
    assert code == 0
    doc = json.loads((out / "results.json").read_text())
    assert doc["benchmark"] == "split-digits" and doc["scenario"] == "class"
    assert {"config", "versions", "results"} <= doc.keys()
    assert doc["config"]["epochs"] == 1 and doc["versions"]["torch"]
    (result,) = doc["results"]
    assert result["strategy"] == "naive"
    assert len(result["accuracy_matrix"]) == 5 and all(len(row) == 5 for row in result["accuracy_matrix"])
    assert set(result["metrics"]) == {
        "average_accuracy",
        "average_incremental_accuracy",
        "forgetting",
        "bwt",
        "fwt",
        "forgetting_rate",
    }
    assert set(result["metrics"]["forgetting_rate"]) == set(doc["tasks"])
    train_time = result["train_seconds"]
    assert isinstance(train_time, float)
    assert "accuracy matrix" in stdout and "metrics" in stdout


def test_naive_forgets_and_joint_holds_at_default_settings(cli, tmp_path: Path) -> None:
    """Issue acceptance: naive forgetting >= 0.9, joint final average accuracy >= 0.95 (seed 0)."""
    out = tmp_path / "run"
    code, stdout, _ = cli(
        "run", "-s", "naive", "-s", "joint", "--seed", "0", "--out", str(out), "--no-progress"
    )
    assert code == 0
    results = {r["strategy"]: r["metrics"] for r in json.loads((out / "results.json").read_text())["results"]}
    assert results["naive"]["forgetting"] >= 0.9
    assert results["joint"]["average_accuracy"] >= 0.95
    assert "comparison across strategies" in stdout


def test_same_seed_gives_identical_matrices(cli, tmp_path: Path) -> None:
    matrices = []
    for name in ("a", "b"):
        code, _, _ = cli(
            "run",
            "-s",
            "naive",
            "--epochs",
            "2",
            "--seed",
            "3",
            "--out",
            str(tmp_path / name),
            "--no-progress",
        )
        assert code == 0
        matrices.append(
            json.loads((tmp_path / name / "results.json").read_text())["results"][0]["accuracy_matrix"]
        )
    assert matrices[0] == matrices[1]


@pytest.mark.parametrize(
    ("args", "phrase"),
    [
        (["--benchmark", "nope"], "unknown benchmark 'nope'; choose one of: split-digits"),
        (["--strategy", "nope"], "unknown strategy 'nope'; choose one of: naive"),
        (["--model", "nope"], "unknown model 'nope'; choose one of: mlp"),
        (["--optimizer", "nope"], "unknown optimizer 'nope'; choose one of: sgd, adam, adamw"),
        (["--epochs", "0"], "epochs must be a positive integer"),
        (["--batch-size", "-1"], "batch size must be a positive integer"),
        (["--lr", "0"], "learning rate must be positive"),
        (["--lr", "-0.1"], "learning rate must be positive"),
        (["--device", "tpu"], "unknown device 'tpu'"),
        (["--scenario", "odd"], "unknown scenario 'odd'"),
        (["--strategy", "naive:bogus=1"], "has no option 'bogus'"),
        (["--model", "mlp:hidden=wide"], "must be a number"),
        (["--benchmark", "permuted-digits", "--scenario", "task"], "fixed scenario"),
        (["--precision", "fp8"], "unknown precision 'fp8'; choose one of: no, bf16, fp16"),
        (["--processes", "0"], "--processes must be between 1 and 4096, got 0"),
        (["--threads", "0"], "--threads must be between 1 and 4096, got 0"),
        (["--report", "pdf"], "unknown --report 'pdf'; choose one of: none, md, html"),
    ],
)
def test_bad_input_is_one_line_and_nonzero_exit(cli, tmp_path: Path, args: list[str], phrase: str) -> None:
    out = tmp_path / "run"
    defaults = [] if "--strategy" in args else ["-s", "naive"]
    defaults += ["--seed", "1"] if "--epochs" in args else ["--epochs", "1"]
    code, _, err = cli("run", *args, *defaults, "--out", str(out))
    assert code == 2
    assert phrase in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_report_md_writes_the_markdown_and_its_plots_but_no_html(cli, tmp_path: Path) -> None:
    out = tmp_path / "run"
    code, stdout, _ = cli(
        "run", "-s", "naive", "--epochs", "1", "--report", "md", "--out", str(out), "--no-progress"
    )
    assert code == 0
    assert (out / "report.md").is_file() and not (out / "report.html").exists()
    assert sorted(p.name for p in (out / "plots").glob("*.png")) == [
        "forgetting.png",
        "heatmap-0-naive.png",
        "stream-0-naive.png",
    ]
    assert "report written to" in stdout and "report.md" in stdout


def test_finished_run_folder_is_refused_without_overwrite(cli, tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ("run", "-s", "naive", "--epochs", "1", "--out", str(out), "--no-progress")
    assert cli(*args)[0] == 0
    before = (out / "results.json").read_text()
    code, _, err = cli(*args)
    assert code == 2 and "already holds a finished run" in err and "--overwrite" in err
    assert (out / "results.json").read_text() == before
    assert cli(*args, "--overwrite")[0] == 0


def test_yaml_config_with_flag_override(cli, tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text(
        "benchmark: split-digits\nepochs: 3\nbatch-size: 64\nstrategy:\n  - naive\n  - [{name: naive}]\n"
    )
    out = tmp_path / "run"
    code, _, _ = cli("run", "--config", str(config), "--epochs", "1", "--out", str(out), "--no-progress")
    assert code == 0
    doc = json.loads((out / "results.json").read_text())
    assert doc["config"]["epochs"] == 1 and doc["config"]["batch_size"] == 64
    assert [r["strategy"] for r in doc["results"]] == ["naive", "naive"]


@pytest.mark.parametrize(
    ("text", "phrase"),
    [
        ("epochs: 2\ncolour: red\n", "unknown key 'colour'"),
        ("epochs: many\n", "'epochs' must be an integer"),
        ("- just\n- a list\n", "must be a mapping"),
        ("epochs: [1\n", "is not valid YAML"),
    ],
)
def test_bad_yaml_config(cli, tmp_path: Path, text: str, phrase: str) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    code, _, err = cli("run", "--config", str(config), "-s", "naive", "--out", str(tmp_path / "run"))
    assert code == 2 and phrase in err and len(err.strip().splitlines()) == 1


def test_missing_config_file(cli, tmp_path: Path) -> None:
    code, _, err = cli("run", "--config", str(tmp_path / "absent.yaml"))
    assert code == 2 and "does not exist" in err


def test_listing_commands_name_everything(cli) -> None:
    from lifelong.data import BENCHMARKS
    from lifelong.strategies import REGISTRY

    code, out, _ = cli("benchmarks")
    assert code == 0 and all(name in out for name in BENCHMARKS)
    code, out, _ = cli("strategies")
    assert code == 0 and all(name in out for name in REGISTRY)


def test_tensorboard_logs_every_evaluation(cli, tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    code, _, err = cli(
        "run", "-s", "naive", "--epochs", "1", "--tensorboard", "--out", str(out), "--no-progress"
    )
    assert code == 0, err
    (log_dir,) = (out / "tensorboard").iterdir()
    events = EventAccumulator(str(log_dir))
    events.Reload()
    assert "average_accuracy" in events.Tags()["scalars"]
    steps = [e.step for e in events.Scalars("score/task0:0,1")]
    assert steps == [0, 1, 2, 3, 4]


def test_version_prints_the_versions_and_exits_0(cli) -> None:
    code, out, _ = cli("--version")
    lines = dict(line.split(" ", 1) for line in out.strip().splitlines())
    assert code == 0
    assert lines["lifelong"] == "0.1.0" and lines["torch"].startswith("2.")


def test_a_missing_extra_is_one_line_naming_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The LLM and adapter commands import transformers, peft and datasets when they run; without the
    llm extra that is one line naming what to install, while any other missing module stays a bug."""
    import importlib

    import typer

    app = importlib.import_module("lifelong.cli.app")  # the module: the package exports its Typer app

    def missing(name: str) -> object:
        def fail(**_: object) -> None:
            raise ModuleNotFoundError(f"No module named '{name}'", name=name)

        return type("Command", (), {"main": staticmethod(fail), "params": [], "commands": {}})()

    monkeypatch.setattr(typer.main, "get_command", lambda _: missing("transformers"))
    with pytest.raises(SystemExit) as exited:
        app.main()
    error = capsys.readouterr().err
    assert exited.value.code == 2 and len(error.strip().splitlines()) == 1
    assert "transformers is not installed" in error and 'pip install "lifelong[llm]"' in error
    monkeypatch.setattr(typer.main, "get_command", lambda _: missing("numpyy"))
    with pytest.raises(ModuleNotFoundError):
        app.main()
