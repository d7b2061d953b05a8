"""Hostile and careless input, second part (issue "Nothing lost, nothing injected, no traceback"): the
tracebacks it lists, fixed as classes (bounds checked by the settings and spec machinery once, OS errors
and usage errors said in one line, JSON read alike everywhere, checkpoint content checked after its
checksum), and the cases it calls wrong or unclear. Each test names its case."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from lifelong.errors import LifelongError

Cli = Callable[..., tuple[int, str, str]]
SMALL = ["-s", "naive", "--epochs", "1", "--benchmark", "permuted-digits:tasks=2", "--no-progress"]


def one_line(code: int, err: str) -> str:
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err.strip()


# ---- flags: bounds in the shared settings machinery ------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "phrase"),
    [
        (["--lr", "inf"], "--lr must be a finite number, got inf"),
        (["--seed", "-1"], "--seed must be between 0 and 4294967295, got -1"),
        (["--seed", "4294967296"], "--seed must be between 0 and 4294967295"),
        (["--epochs", "99999999999999999999"], "--epochs must be at most 10000, got about 10^"),
        (["--batch-size", "1" * 400], "--batch-size must be at most 1,000,000,000 in size"),
        (["--threads", "99999999999999999999"], "--threads must be between 1 and 4096"),
        (["-s", "replay:replay_ratio=nan"], "option 'replay_ratio' must be a finite number, got nan"),
        (
            ["-s", "replay:buffer_size=99999999999999999999"],
            "option 'buffer_size' must be at most 1,000,000,000",
        ),
        (["-s", "ewc:lambda=1,lambda=2"], "option 'lambda' is given twice in 'ewc:lambda=1,lambda=2'"),
        (["--benchmark", "permuted-digits:tasks=100000000"], "a permuted stream has 1 to 1000 tasks"),
        (["--model", "mlp:hidden=99999999999"], "option 'hidden' must be at most 1,000,000,000"),
        (["--lr", "0.5x"], "Invalid value for '--lr'"),  # click's own usage errors: one line too
    ],
)
def test_absurd_flags_are_one_line(cli: Cli, tmp_path: Path, args: list[str], phrase: str) -> None:
    # tracebacks: --lr inf, --seed -1 / 2**32, replay_ratio=nan, buffer_size=1e20; hangs: --epochs 1e20,
    # tasks=1e8
    out = tmp_path / "run"
    code, _, err = cli("run", *SMALL, *args, "--out", str(out))
    assert phrase in one_line(code, err)
    assert not out.exists()


def test_settings_files_get_the_same_bounds(cli: Cli, tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("epochs: 100000\nlr: .inf\n")
    code, _, err = cli("run", "--config", str(config), "--out", str(tmp_path / "run"))
    assert "--epochs must be at most 10000" in one_line(code, err)


@pytest.mark.parametrize(
    ("args", "phrase"),
    [
        (["--batch-size", "0"], "--batch-size must be between 1"),
        (["--batch-size", "-2"], "--batch-size must be between 1"),
        (["--block-size", "0"], "--block-size must be between 2"),  # silently became 128
        (["--max-blocks", "-1"], "--max-blocks must be between 1"),  # silently dropped the last block
    ],
)
def test_perplexity_counts_are_checked(cli: Cli, args: list[str], phrase: str) -> None:
    code, _, err = cli("perplexity", "--model", "tiny-llama", *args)
    assert phrase in one_line(code, err)


def test_a_repeated_spec_option_is_refused() -> None:
    from lifelong.core.spec import parse_spec

    with pytest.raises(LifelongError, match="given twice"):
        parse_spec("ewc:lambda=1,lambda=2")
    assert parse_spec("ewc:lambda=1,fisher=exact").options == {"lambda": "1", "fisher": "exact"}


def test_a_replay_buffer_larger_than_memory_is_refused_before_allocating() -> None:
    import torch

    from lifelong.strategies.buffers import ReplayBuffer

    buffer = ReplayBuffer(10**9 - 1)
    with pytest.raises(LifelongError, match="choose a smaller buffer_size"):
        buffer.add(torch.zeros(2, 64, 64), torch.zeros(2, dtype=torch.long))  # 16 KiB a row: 16 TB


# ---- paths: the OSError family ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["under-a-file", "too-long"])
def test_an_impossible_out_path_is_one_line(cli: Cli, tmp_path: Path, name: str) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    out = afile / "sub" if name == "under-a-file" else tmp_path / ("n" * 300)
    code, _, err = cli("run", *SMALL, "--out", str(out))
    assert "cannot use" in one_line(code, err)
    assert afile.read_text() == "x"


def test_resume_at_a_file_is_one_line(cli: Cli, tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    code, _, err = cli("run", "--resume", str(afile))
    assert "is a file, not a run folder" in one_line(code, err)


# ---- data ---------------------------------------------------------------------------------------------------


def _rows(label: Callable[[int], object], task: Callable[[str], object]) -> str:
    rows = [
        {"f0": i * 0.1, "f1": y + i * 0.01, "label": label(y), "task": task(t)}
        for t in "ab"
        for y in (0, 1)
        for i in range(6)
    ]
    return "".join(json.dumps(r) + "\n" for r in rows)


@pytest.mark.parametrize(
    ("label", "task", "phrase"),
    [
        (lambda y: [y], lambda t: t, "label column 'label' holds a list or mapping in row 1"),
        (lambda y: y, lambda t: {"t": t}, "task column 'task' holds a list or mapping in row 1"),
    ],
)
def test_lists_and_mappings_as_labels_or_tasks_are_refused(
    cli: Cli, tmp_path: Path, label: Callable[[int], object], task: Callable[[str], object], phrase: str
) -> None:
    # was TypeError: unhashable type
    data = tmp_path / "d.jsonl"
    data.write_text(_rows(label, task))
    code, _, err = cli(
        "run", *SMALL[:4], "--data", str(data), "--task-column", "task", "--out", str(tmp_path / "r")
    )
    assert phrase in one_line(code, err)


def test_json_lines_split_on_newlines_only(tmp_path: Path) -> None:
    from lifelong.llm.instruct import read_records

    path = tmp_path / "t.jsonl"
    records = [
        {"prompt": "a\u2028b\u0085c\x0cd", "completion": "e\u2029f"},
        {"prompt": "g", "completion": "h"},
    ]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\r\n" for r in records), encoding="utf-8")
    loaded = read_records(path)
    assert [(r.prompt, r.completion) for r in loaded] == [(r["prompt"], r["completion"]) for r in records]


@pytest.mark.parametrize(
    ("line", "phrase"),
    [
        ('{"prompt": ' + "[" * 100_000 + "]" * 100_000 + ', "completion": "x"}', "nested too deeply"),
        ('{"prompt": "\\ud800", "completion": "x"}', "lone surrogate"),
        ('{"prompt": "", "completion": "x"}', "'prompt' is empty"),
        (
            '{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": " "}]}',
            "message 1 is an empty assistant turn",
        ),
    ],
)
def test_instruction_records_refused_in_one_line(tmp_path: Path, line: str, phrase: str) -> None:
    # RecursionError / tokenizer crash / eval crash (empty prompt) / an empty answer scored 1.0
    from lifelong.llm.instruct import read_records

    path = tmp_path / "t.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(LifelongError, match=phrase):
        read_records(path)


def test_deep_json_in_adapter_examples_is_one_error(tmp_path: Path) -> None:
    from lifelong.cli.adapters import read_examples

    path = tmp_path / "x.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(LifelongError, match="nested too deeply"):
        read_examples(path)


# ---- checkpoints: content checked after the checksum -----------------------------------------------------


def _finished_task(cli: Cli, tmp_path: Path) -> Path:
    """A run killed after its first task: its one checkpoint."""
    from lifelong.core.checkpoint import latest_checkpoint
    from lifelong.runs.folder import strategy_dir

    out = tmp_path / "run"
    code, _, err = cli("run", *SMALL, "--out", str(out))
    assert code == 0, err
    (out / "results.json").unlink()
    folder = strategy_dir(out, 0, "naive")
    (folder / "result.json").unlink()
    checkpoint = latest_checkpoint(folder)
    assert checkpoint is not None
    return checkpoint


@pytest.mark.parametrize(
    "damage",
    [
        lambda state: state.__setitem__("learner", 5),
        lambda state: state["learner"].clear(),
        lambda state: state.__setitem__("result", "matrix"),
        lambda state: state["result"].__setitem__("matrix", "0.5"),
    ],
)
def test_checkpoint_with_matching_checksums_and_wrong_content(
    cli: Cli, tmp_path: Path, damage: Callable[[dict], None]
) -> None:
    from lifelong.core.checkpoint import STATE_FILE, TENSORS_FILE, load_checkpoint, save_checkpoint

    checkpoint = _finished_task(cli, tmp_path)
    tensors, state = load_checkpoint(checkpoint)
    damage(state)
    save_checkpoint(checkpoint, tensors, state)  # the checksums match what is now there
    assert (checkpoint / STATE_FILE).is_file() and (checkpoint / TENSORS_FILE).is_file()
    code, _, err = cli("run", "--resume", str(tmp_path / "run"), "--no-progress")
    line = one_line(code, err)
    assert "it is the only checkpoint kept, so this strategy cannot resume" in line
    assert "--resume" not in line.split(";")[-1]  # no advice to do again what just failed


def test_checkpoint_with_a_missing_tensor_or_a_wrong_shape(cli: Cli, tmp_path: Path) -> None:
    from lifelong.core.checkpoint import load_checkpoint, save_checkpoint

    checkpoint = _finished_task(cli, tmp_path)
    tensors, state = load_checkpoint(checkpoint)
    name = next(iter(tensors))
    for changed in ({k: v for k, v in tensors.items() if k != name}, {**tensors, name: tensors[name][:1]}):
        save_checkpoint(checkpoint, changed, state)
        code, _, err = cli("run", "--resume", str(tmp_path / "run"), "--no-progress")
        assert "cannot resume" in one_line(code, err)


def test_a_state_file_that_is_a_list_is_refused(tmp_path: Path) -> None:
    from lifelong.core.checkpoint import load_checkpoint, save_checkpoint

    save_checkpoint(tmp_path / "task-0", {}, [1, 2])  # type: ignore[arg-type]
    with pytest.raises(LifelongError, match="is not a mapping"):
        load_checkpoint(tmp_path / "task-0")


# ---- adapters: one bad record does not hide the library ---------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"eval": {"metric": "acc", "value": "high"}}, "eval.value"),
        ({"eval": [1]}, "eval"),
        ({"lora": [1]}, "lora"),
        ({"created": 5}, "created"),
        ({"lora": {"target_modules": 5}}, "lora.target_modules"),
        ({"parents": 3}, "parents"),
        ({"lora": {"r": "abc"}}, "lora.r"),
    ],
)
def test_adapters_list_names_the_badly_typed_record(
    cli: Cli, tmp_path: Path, fields: dict, named: str
) -> None:
    good = {"format": 1, "base": {"name": "b", "config_hash": "0"}, "lora": {"r": 4, "alpha": 8}}
    for task, meta in (("good", good), ("bad", {**good, **fields})):
        (tmp_path / task).mkdir()
        (tmp_path / task / "lifelong.json").write_text(json.dumps(meta))
    code, out, err = cli("adapters", "list", "--root", str(tmp_path), "--json")
    assert code == 0, err
    rows = {row["task"]: row for row in json.loads(out)}
    assert f"'{named}' has the wrong kind of value" in rows["bad"]["problem"]
    assert rows["good"]["r"] == 4 and "wrong kind" not in (rows["good"]["problem"] or "")
    code, out, err = cli("adapters", "list", "--root", str(tmp_path))
    assert code == 0 and "bad" in out and "good" in out, err


def test_deleting_a_linked_adapter_leaves_no_link(tmp_path: Path) -> None:
    from lifelong.adapters import delete_adapter

    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "keep.txt").write_text("not the library's")
    root = tmp_path / "lib"
    root.mkdir()
    (root / "task").symlink_to(target, target_is_directory=True)
    delete_adapter(root, "task")
    assert list(root.iterdir()) == []  # no .deleted-* link left behind
    assert (target / "keep.txt").read_text() == "not the library's"


# ---- report ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change",
    [
        lambda doc: doc["results"][0]["accuracy_matrix"][0].__setitem__(0, 1.7e308),
        lambda doc: doc["results"][0]["accuracy_matrix"][0].__setitem__(0, -1.7e308),
        lambda doc: doc["results"][0]["accuracy_matrix"][0].__setitem__(0, 10**400),
        lambda doc: doc["results"][0].__setitem__("strategy", "\ud800x"),
    ],
)
def test_report_refuses_numbers_and_names_it_cannot_draw(
    cli: Cli, tmp_path: Path, change: Callable[[dict], None]
) -> None:
    # matplotlib axis error / OverflowError / a font TypeError
    from lifelong.runs.results import results_document

    doc = results_document(
        benchmark="b",
        scenario="class",
        tasks=["t0", "t1"],
        config={},
        processes=1,
        wall_seconds=1.0,
        results=[
            {
                "strategy": "naive",
                "accuracy_matrix": [[0.9, 0.1], [0.5, 0.8]],
                "metrics": {},
                "train_seconds": 1.0,
                "eval_seconds": 1.0,
            }
        ],
    )
    change(doc)
    (tmp_path / "results.json").write_text(json.dumps(doc))
    code, _, err = cli("report", str(tmp_path))
    assert "results.json: results[0]" in one_line(code, err)


# ---- wrong or unclear without a traceback -------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["dangling-link", "link-loop", "fifo", "folder"])
def test_a_data_folder_entry_that_is_no_file_is_named(cli: Cli, tmp_path: Path, kind: str) -> None:
    import os

    data = tmp_path / "data"
    data.mkdir()
    (data / "a.csv").write_text("f0,label\n" + "".join(f"{i},{i % 2}\n" for i in range(20)))
    odd = data / "b.csv"
    if kind == "dangling-link":
        odd.symlink_to(tmp_path / "nowhere.csv")
    elif kind == "link-loop":
        odd.symlink_to(data / "c.csv")
        (data / "c.csv").symlink_to(odd)
    elif kind == "fifo":
        os.mkfifo(odd)
    else:
        odd.mkdir()
    code, _, err = cli("run", *SMALL[:4], "--data", str(data), "--out", str(tmp_path / "r"))
    assert "b.csv' is named like a data file but is" in one_line(code, err)


def test_a_pipe_given_as_data_is_named_not_read(cli: Cli, tmp_path: Path) -> None:
    import os

    fifo = tmp_path / "rows.csv"
    os.mkfifo(fifo)
    code, _, err = cli(
        "run", *SMALL[:4], "--data", str(fifo), "--task-column", "t", "--out", str(tmp_path / "r")
    )
    assert "not a regular file" in one_line(code, err)
    corpus = tmp_path / "c.txt"
    os.mkfifo(corpus)
    from lifelong.llm.corpora import load_corpus

    with pytest.raises(LifelongError, match="not a regular file"):
        load_corpus(str(corpus))


def test_a_resumed_task_logs_its_scores_once(tmp_path: Path) -> None:
    from lifelong.runs.folder import METRICS_LOG, RunFolder

    folder = RunFolder.create(tmp_path / "run", "run", {"config": {}}, overwrite=False)
    folder.log_metrics({"strategy": "naive", "after_task": 0, "scores": [0.5]})
    folder.log_metrics({"strategy": "naive", "after_task": 1, "scores": [0.4, 0.6]})  # then a crash
    folder.log_metrics({"strategy": "naive", "after_task": 1, "scores": [0.4, 0.7]})  # the resumed task
    lines = [json.loads(line) for line in (tmp_path / "run" / METRICS_LOG).read_text().splitlines()]
    assert [(r["after_task"], r["scores"][-1]) for r in lines] == [(0, 0.5), (1, 0.7)]
    folder.release()


def test_a_crashed_write_leaves_no_temporary_file_once_resumed(tmp_path: Path) -> None:
    from lifelong.runs.folder import RunFolder

    folder = RunFolder.create(tmp_path / "run", "run", {"config": {}}, overwrite=False)
    folder.release()
    stale = (
        tmp_path / "run" / "checkpoints" / "0-naive" / ".result.json.abc12345.tmp"
    )  # mkstemp: 8 random characters
    stale.parent.mkdir(parents=True)
    stale.write_text("{")
    RunFolder.resume(tmp_path / "run", "run").release()
    assert not stale.exists() and stale.parent.is_dir()


def test_resume_hint_only_after_a_task_of_this_attempt(cli: Cli, tmp_path: Path) -> None:
    # bad input met at a resume, before any task finished: "continue with --resume" would meet it again
    out = tmp_path / "run"
    data = tmp_path / "d.csv"
    data.write_text("f0,label,t\n" + "".join(f"{i},{i % 2},{'ab'[i // 10]}\n" for i in range(20)))
    code, _, err = cli("run", *SMALL[:4], "--data", str(data), "--task-column", "t", "--out", str(out))
    assert code == 0, err
    (out / "results.json").unlink()
    for result in (out / "checkpoints").glob("*/result.json"):
        result.unlink()
    data.write_text("nothing here\n")
    code, _, err = cli("run", "--resume", str(out), "--no-progress")
    assert "--resume" not in one_line(code, err)


def test_a_replay_buffer_too_large_for_memory_is_refused_before_the_first_task(
    cli: Cli, tmp_path: Path
) -> None:
    # buffer_size=100000000 tried 25.6 GB after task 0; a 10**9-sample buffer of 64-pixel digits is 0.5 TB
    out = tmp_path / "run"
    code, _, err = cli("run", *SMALL[2:], "-s", "replay:buffer_size=999999999", "--out", str(out))
    assert "choose a smaller buffer_size" in one_line(code, err)
    assert not out.exists()


def test_out_of_memory_in_torch_is_one_line(
    cli: Cli, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # mlp:hidden=100000000 asked torch's CPU allocator for 25.6 GB: a RuntimeError traceback
    import importlib

    app = importlib.import_module("lifelong.cli.app")  # the module: lifelong.cli's `app` is the Typer app

    def allocate(*args: object) -> None:
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory")

    monkeypatch.setattr(app, "report_runs", allocate)
    code, _, err = cli("report", str(tmp_path))
    assert "out of memory" in one_line(code, err)
    monkeypatch.setattr(app, "report_runs", lambda *a: (_ for _ in ()).throw(RuntimeError("a bug")))
    with pytest.raises(RuntimeError, match="a bug"):  # any other RuntimeError is a bug, not bad input
        cli("report", str(tmp_path))


def test_tiny_llama_sizes_are_bounded(cli: Cli) -> None:
    # tiny-llama:layers=99999 built for minutes
    code, _, err = cli("perplexity", "--model", "tiny-llama:layers=99999")
    assert "tiny-llama option layers must be between 1 and 64" in one_line(code, err)
