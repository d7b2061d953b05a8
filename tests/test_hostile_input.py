"""Hostile and careless input (issue "Nothing lost, nothing injected, no traceback"): each test names
the issue's case it covers. Bad input gets one line and exit 2; nothing a user, a file or a folder
says is parsed as markup or reaches the terminal as a control sequence."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from lifelong.errors import LifelongError
from lifelong.runs.folder import strategy_dir

Cli = Callable[..., tuple[int, str, str]]
FAST = ["--epochs", "1", "--no-progress"]


def one_line(code: int, err: str) -> str:
    """The single error line of a refused command (exit 2, no traceback)."""
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err.strip()


def table_file(path: Path, tasks: list[str], columns: tuple[str, ...] = ("f0", "f1")) -> Path:
    """A CSV with two classes per task, ``tasks`` in the task column and numeric ``columns``."""
    rng = np.random.default_rng(0)
    rows = [(task, label) for task in tasks for label in (0, 1) for _ in range(10)]
    frame = pd.DataFrame({name: rng.normal(size=len(rows)) for name in columns})
    frame["label"] = [label for _, label in rows]
    frame["task"] = [task for task, _ in rows]
    frame.to_csv(path, index=False)
    return path


# ---- case 1: text from users, files and folders is printed escaped ------------------------------------


def test_markup_in_a_flag_is_one_literal_error_line(cli: Cli, tmp_path: Path) -> None:
    # case 1: `lifelong run --benchmark '[/red]'` was a MarkupError traceback
    code, _, err = cli("run", "--benchmark", "[/red]", "--out", str(tmp_path / "run"), *FAST)
    assert "'[/red]'" in one_line(code, err)


def test_markup_in_a_task_name_runs_to_the_end(cli: Cli, tmp_path: Path) -> None:
    # case 1: a task-column value '[/x]' crashed the run after results.json, before report.html
    data = table_file(tmp_path / "tasks.csv", ["[/x]", "b"])
    out = tmp_path / "run"
    code, stdout, err = cli(
        "run", "--data", str(data), "--task-column", "task", "-s", "naive", "--out", str(out), *FAST
    )
    assert code == 0, err
    assert "[/x]" in stdout
    assert (out / "results.json").is_file() and (out / "report.html").is_file()


def test_brackets_in_an_error_message_are_kept(cli: Cli, tmp_path: Path) -> None:
    # case 1: `adapters merge a b --weights nan,1` printed "... weights " with the list gone
    pytest.importorskip("peft")
    from transformers import LlamaConfig

    base = tmp_path / "base"
    config = LlamaConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2)
    config.architectures = ["LlamaForCausalLM"]
    config.save_pretrained(base)
    code, _, err = cli(
        "adapters",
        "merge",
        "sql",
        "poems",
        "--weights",
        "nan,1",
        "--base",
        str(base),
        "--root",
        str(tmp_path),
    )
    assert "weights [nan, 1.0]" in one_line(code, err)


def test_markup_in_an_adapter_record_is_shown_literally(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # case 1: a lifelong.json "kind" with [link=...] markup showed as a clickable link
    from lifelong.cli import adapters

    monkeypatch.setattr(adapters.console, "width", 400)  # one row per adapter, nothing wrapped
    link = "[link=file:///etc/passwd]click[/link]"
    folder = tmp_path / "lib" / "task"
    folder.mkdir(parents=True)
    (folder / "lifelong.json").write_text(json.dumps({"format": 1, "base": {}, "kind": link}))
    code, stdout, err = cli("adapters", "list", "--root", str(tmp_path / "lib"))
    assert code == 0, err
    assert link in stdout


def test_a_control_character_in_a_column_name_is_shown_escaped(cli: Cli, tmp_path: Path) -> None:
    # case 1: a raw ESC byte in a CSV column name reached the terminal
    data = table_file(tmp_path / "esc.csv", ["a", "b"], columns=("f0", "\x1b[2Jwiped"))
    code, _, err = cli(
        "run", "--data", str(data), "--task-column", "task", "--label-column", "nope",
        "--out", str(tmp_path / "run"), *FAST,
    )  # fmt: skip
    line = one_line(code, err)
    assert "\x1b" not in line and "\\x1b[2Jwiped" in line


# ---- case 4: a YAML config cannot blow up memory or the stack ----------------------------------------

BOMB = "\n".join(
    ["a: &a [x, x, x, x, x, x, x, x, x]"]
    + [f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]" for i in range(8)]
)


@pytest.mark.parametrize(
    ("text", "phrase"),
    [
        (BOMB, "aliases"),
        ("epochs: " + "[" * 10_000 + "]" * 10_000, "nested"),
        ("epochs: 1\n" + "#" * (1 << 20), "larger than"),
    ],
    ids=["alias-bomb", "deep-nesting", "huge-file"],
)
def test_a_hostile_yaml_config_is_refused_in_one_line(
    cli: Cli, tmp_path: Path, text: str, phrase: str
) -> None:
    # case 4: nine levels of aliases took 1.9 GB and died with MemoryError; deep nesting, RecursionError
    config = tmp_path / "config.yaml"
    config.write_text(text)
    code, _, err = cli("run", "--config", str(config), "--out", str(tmp_path / "run"), *FAST)
    assert phrase in one_line(code, err) and str(config) in err
    assert not (tmp_path / "run").exists()


# ---- case 8: a finished strategy's result.json is checked before it is reused ------------------------


@pytest.fixture
def unfinished(cli: Cli, tmp_path: Path) -> Path:
    """A two-strategy run whose strategies both finished, made unfinished again (no results.json)."""
    out = tmp_path / "run"
    code, _, err = cli("run", "-s", "naive", "-s", "replay", "--out", str(out), *FAST)
    assert code == 0, err
    (out / "results.json").unlink()
    return out


def test_a_finished_strategy_of_other_settings_is_refused(cli: Cli, unfinished: Path) -> None:
    # case 8: with run.json's epochs changed, the naive row of the old epochs was reused silently
    run = json.loads((unfinished / "run.json").read_text())
    run["settings"]["config"]["epochs"] = 2
    (unfinished / "run.json").write_text(json.dumps(run))
    code, _, err = cli("run", "--resume", str(unfinished), "--no-progress")
    line = one_line(code, err)
    assert "result.json" in line and "different config" in line
    assert not (unfinished / "results.json").exists()


@pytest.mark.parametrize("damage", ["truncated", "a-list", "changed"])
def test_a_damaged_finished_strategy_is_refused(cli: Cli, unfinished: Path, damage: str) -> None:
    # case 8: a truncated or list result.json gave a JSONDecodeError / TypeError traceback; a changed
    # one was trusted
    result = strategy_dir(unfinished, 0, "naive") / "result.json"
    text = result.read_text()
    if damage == "truncated":
        result.write_text(text[: len(text) // 2])
    elif damage == "a-list":
        result.write_text("[]")
    else:
        result.write_text(text.replace('"train_seconds": ', '"train_seconds": 1', 1))
    code, _, err = cli("run", "--resume", str(unfinished), "--no-progress")
    line = one_line(code, err)
    assert str(result) in line and "delete it" in line
    result.unlink()  # what the line says to do: the strategy is scored again from its last checkpoint
    code, _, err = cli("run", "--resume", str(unfinished), "--no-progress")
    assert code == 0, err


# ---- case 5: a model folder whose weights are only pickles is refused unless allowed -----------------


def pickled_model_folder(tmp_path: Path) -> tuple[Any, Path]:
    """A tiny causal LM saved with its weights only as ``pytorch_model.bin`` (a pickle), with a tokenizer."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    config = LlamaConfig(vocab_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2)
    config.architectures = ["LlamaForCausalLM"]
    model, folder = LlamaForCausalLM(config), tmp_path / "model"
    config.save_pretrained(folder)
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    words = Tokenizer(models.WordLevel({"<unk>": 0, "</s>": 1}, unk_token="<unk>"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()  # a token a word: text makes blocks
    PreTrainedTokenizerFast(tokenizer_object=words, eos_token="</s>", unk_token="<unk>").save_pretrained(
        folder
    )
    return model, folder


def test_a_model_folder_with_only_pickled_weights_is_refused(tmp_path: Path) -> None:
    # case 5: a folder holding only pytorch_model.bin was unpickled by transformers
    pytest.importorskip("peft")
    import torch

    from lifelong.adapters import AdapterLibrary
    from lifelong.errors import LifelongError
    from lifelong.llm.models import load_model

    model, folder = pickled_model_folder(tmp_path)
    for load in (lambda: load_model(folder), lambda: AdapterLibrary(folder, tmp_path / "lib").base):
        with pytest.raises(LifelongError) as refused:
            load()
        message = str(refused.value)
        assert str(folder) in message and "pytorch_model.bin" in message and "--allow-pickle" in message
    loaded, _ = load_model(folder, allow_pickle=True)
    base = AdapterLibrary(folder, tmp_path / "lib", allow_pickle=True).base
    for opted_in in (loaded, base):
        assert torch.equal(opted_in.get_input_embeddings().weight, model.get_input_embeddings().weight)


def test_broken_weights_or_config_are_one_line_not_a_traceback(
    cli: Cli, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # a truncated copy of the weights; a config whose sizes do not match them; impossible sizes
    pytest.importorskip("peft")
    model, folder = pickled_model_folder(tmp_path)
    (folder / "pytorch_model.bin").unlink()
    model.save_pretrained(folder)
    capsys.readouterr()  # save_pretrained's progress bar is not the command's output
    text = tmp_path / "a.txt"
    text.write_text("</s> </s>\n" * 50)
    weights = folder / "model.safetensors"
    whole, config = weights.read_bytes(), json.loads((folder / "config.json").read_text())
    from safetensors.torch import save

    first = next(iter(model.state_dict().items()))
    breakages = [
        ("model.safetensors", whole[:40]),
        ("model.safetensors", save({first[0]: first[1].contiguous()}, {"format": "pt"})),
        ("config.json", json.dumps({**config, "vocab_size": 4})),
        ("config.json", json.dumps({**config, "hidden_size": -1})),
    ]
    for name, broken in breakages:
        weights.write_bytes(whole)
        (folder / "config.json").write_text(json.dumps(config))
        target = folder / name
        target.write_bytes(broken) if isinstance(broken, bytes) else target.write_text(broken)
        code, _, err = cli("perplexity", "--model", str(folder), "-d", str(text))
        assert str(folder) in one_line(code, err), (name, err)
        root = tmp_path / "adapters"
        code, _, err = cli(
            "adapters", "train", "t", "--base", str(folder), "--data", str(text), "--root", str(root)
        )
        assert str(folder) in one_line(code, err) and not root.exists()


def test_an_adapter_with_pickled_weights_is_refused_even_beside_a_decoy_safetensors(
    tmp_path: Path,
) -> None:
    # PEFT reads adapter_model.bin whenever adapter_model.safetensors is missing, whatever else is there
    from lifelong.errors import LifelongError
    from lifelong.llm.models import load_model

    model, base = pickled_model_folder(tmp_path)
    model.save_pretrained(base)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(base)}))
    (adapter / "adapter_model.bin").write_bytes(b"not to be unpickled")
    (adapter / "decoy.safetensors").write_bytes(b"")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (adapter / name).write_bytes((base / name).read_bytes())
    with pytest.raises(LifelongError, match=r"no adapter_model\.safetensors.*--allow-pickle"):
        load_model(adapter)


def test_allow_pickle_on_the_command_line_is_kept_for_resume(cli: Cli, tmp_path: Path) -> None:
    # case 5: the flag, on every command that loads a model folder; a run records it in run.json
    from lifelong.llm.pretrain import PretrainRequest

    _, folder = pickled_model_folder(tmp_path)
    corpus = tmp_path / "c.txt"
    corpus.write_text("a b c d e f g h " * 50)
    code, _, err = cli("perplexity", "--model", str(folder), "--data", str(corpus), "--block-size", "8")
    assert "pass --allow-pickle" in one_line(code, err)
    code, out, err = cli(
        "perplexity", "--model", str(folder), "--data", str(corpus), "--block-size", "8", "--allow-pickle"
    )
    assert code == 0 and "perplexity" in out, err
    run = ["pretrain", "--model", str(folder), "--corpus", str(corpus), "-s", "naive", "--block-size", "8"]
    code, _, err = cli(*run, "--out", str(tmp_path / "refused"), "--no-progress")
    assert "pass --allow-pickle" in one_line(code, err)
    assert not (tmp_path / "refused").exists()
    code, _, err = cli(
        *run, "--epochs", "0.1", "--out", str(tmp_path / "run"), "--no-progress", "--allow-pickle"
    )
    assert code == 0, err
    assert json.loads((tmp_path / "run" / "run.json").read_text())["settings"]["allow_pickle"] is True
    (tmp_path / "run" / "results.json").unlink()  # as if killed before its end: what --resume reads
    assert PretrainRequest.from_saved(tmp_path / "run", None).allow_pickle


def test_adapter_commands_delete_or_replace_only_folders_lifelong_saved(cli: Cli, tmp_path: Path) -> None:
    from lifelong.adapters.saving import check_export_target
    from lifelong.adapters.store import META_FILE

    root, own = tmp_path / "adapters", tmp_path / "adapters" / "userstuff"
    own.mkdir(parents=True)
    (own / "f.txt").write_text("precious")
    code, _, err = cli("adapters", "delete", "-y", "--root", str(root), "userstuff")
    assert "not a folder lifelong saved" in one_line(code, err)
    assert (own / "f.txt").read_text() == "precious"

    export = tmp_path / "userout"
    export.mkdir()
    (export / "f.txt").write_text("precious")
    with pytest.raises(LifelongError, match="not a folder lifelong saved"):
        check_export_target(export, root, None, overwrite=True)
    (export / META_FILE).write_text(json.dumps({"format": 1, "exported_from": "t"}))
    check_export_target(export, root, None, overwrite=True)  # an earlier export: ours to replace
    assert (export / "f.txt").read_text() == "precious"


@pytest.mark.parametrize("command", ["finetune", "pretrain"])
def test_an_unknown_or_missing_report_to_integration_is_one_line_before_training(
    cli: Cli, tmp_path: Path, command: str
) -> None:
    pytest.importorskip("transformers")
    for name, says in (("bogus", "unknown --report-to 'bogus'"), ("swanlab", "pip install swanlab")):
        code, _, err = cli(command, "--report-to", name, "--epochs", "1", "--out", str(tmp_path / name))
        assert says in one_line(code, err)
        assert not (tmp_path / name).exists()


@pytest.mark.parametrize(
    "args",
    [
        ["perplexity", "--model", "tiny-llama", "--block-size", "100000"],
        ["pretrain", "--block-size", "100000", "--epochs", "1"],
        ["finetune", "--packing", "--block-size", "100000", "--epochs", "1"],
        ["finetune", "--max-length", "100000", "--epochs", "1"],
    ],
)
def test_a_sequence_longer_than_the_model_has_positions_is_one_line_at_once(
    cli: Cli, tmp_path: Path, args: list[str]
) -> None:
    # a block of 100,000 tokens took minutes and gigabytes before failing, or computed garbage
    pytest.importorskip("transformers")
    out = [] if args[0] == "perplexity" else ["--out", str(tmp_path / "run")]
    code, _, err = cli(*args, *out)
    assert "exceeds the model's 1024 positions" in one_line(code, err)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("command", "first"), [("finetune", "replay, self-replay, naive"), ("pretrain", "replay, naive")]
)
def test_an_unknown_llm_strategy_lists_only_what_the_command_takes(
    cli: Cli, tmp_path: Path, command: str, first: str
) -> None:
    pytest.importorskip("transformers")
    code, _, err = cli(command, "-s", "bogus", "--out", str(tmp_path / "run"))
    line = one_line(code, err)
    assert f"choose one of: {first}" in line and "der++" not in line and "agem" not in line


def test_adapters_train_reads_a_bom_as_finetune_does(tmp_path: Path) -> None:
    from lifelong.cli.adapters import read_examples

    data = tmp_path / "d.jsonl"
    data.write_bytes(b'\xef\xbb\xbf{"text": "a b"}\n{"text": "c"}\n')
    assert read_examples(data) == [{"text": "a b"}, {"text": "c"}]
