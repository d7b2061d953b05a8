"""Watch sets: scored whole before the first task and after every task, never trained on, in results.json,
the metrics and the report, with standard errors; the built-in general set; when it is on by default."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("transformers")
pytest.importorskip("peft")

import torch
from rich.console import Console

from lifelong.errors import LifelongError
from lifelong.llm.answers import exact_match
from lifelong.llm.corpora import load_corpus
from lifelong.llm.finetune import FinetuneSettings, finetune
from lifelong.llm.finetune_run import FinetuneRun
from lifelong.llm.models import load_model
from lifelong.llm.pretrain import run_pretrain
from lifelong.llm.training import TrainSettings
from lifelong.llm.watchsets import GENERAL, PRETRAINED_MIN_PARAMETERS, chosen_sources, load_watch

TINY = "tiny-llama:vocab_size=512,hidden=32,layers=1,heads=2"
PROBE = [
    {"prompt": "Capital of France?", "choices": ["Paris", "Rome", "Oslo"], "answer": "Paris"},
    {"prompt": "2 + 2 =", "choices": [" 4", " 5"], "answer": 0},
    {"prompt": "Opposite of up:", "choices": ["down", "over", "high"], "answer": "down"},
    {"prompt": "Colour of snow:", "choices": ["white", "black"], "answer": 0},
]

pytestmark = pytest.mark.usefixtures("llm_cache")  # tiny-llama builds once, in a test folder


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    return path


def settings() -> FinetuneSettings:
    return FinetuneSettings(
        batch_size=16, learning_rate=3e-3, max_length=32, max_new_tokens=8, eval_examples=4, device="cpu"
    )


def test_watch_sets_are_scored_whole_every_task_and_never_trained(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    probe = write_jsonl(tmp_path / "probe.jsonl", PROBE)
    answers = write_jsonl(tmp_path / "answers.jsonl", [{"prompt": "Say hi:", "completion": " hi"}] * 5)
    trained_on: list[str] = []
    train = FinetuneRun.train

    def spy(self: FinetuneRun, model: Any, examples: Any, *args: Any, **kwargs: Any) -> float:
        trained_on.extend(self.tokenizer.decode(e.input_ids) for e in examples)
        return train(self, model, examples, *args, **kwargs)

    monkeypatch.setattr(FinetuneRun, "train", spy)
    out = tmp_path / "run"
    document = finetune(
        TINY,
        "skills:train=16,heldout=4",
        out,
        strategies=["naive", "replay"],
        settings=settings(),
        watch=[probe, answers],
        console=Console(file=io.StringIO()),
    )
    assert trained_on and not any("Capital of France" in text or "Say hi" in text for text in trained_on)
    model, tokenizer = load_model(TINY)
    watch = load_watch([str(probe), str(answers)], tokenizer, settings(), exact_match, "exact match")
    before = watch.measure(model, tokenizer)  # the model as given
    tasks = document["tasks"]
    for result in document["results"]:
        probe_entry, answers_entry = result["watch"]
        assert probe_entry["name"] == "probe" and probe_entry["score_name"] == "acc_norm"
        assert answers_entry["score_name"] == "exact match" and answers_entry["items"] == 5
        assert probe_entry["items"] == len(PROBE)  # whole: eval_examples=4 caps tasks only
        assert probe_entry["initial"] == before[0]["score"] and answers_entry["initial"] == before[1]["score"]
        assert len(probe_entry["scores"]) == len(probe_entry["se"]) == len(tasks)
        for score, se in zip(probe_entry["scores"], probe_entry["se"], strict=True):
            assert se == pytest.approx((score * (1 - score) / len(PROBE)) ** 0.5)
        final, first = probe_entry["scores"][-1], probe_entry["initial"]
        assert result["metrics"]["watch_retention"]["probe"] == (final / first if first else None)
        # Every task score carries its standard error and item count.
        assert result["items"] == [4] * len(tasks)
        assert len(result["accuracy_matrix_se"]) == len(tasks)
        assert result["metrics"]["average_accuracy_se"] >= 0
    # metrics.jsonl logs each task's watch scores as it goes (the last line: the last task's).
    last = json.loads((out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()[-1])
    final = document["results"][-1]["watch"]
    assert last["watch"] == {"probe": final[0]["scores"][-1], "answers": final[1]["scores"][-1]}
    for name, heading in (("report.md", "## Watch sets"), ("report.html", "<h2>Watch sets</h2>")):
        report = (out / name).read_text(encoding="utf-8")
        assert heading in report and "probe" in report and "within noise" in report


def test_the_general_watch_set_ships_with_the_package() -> None:
    _, tokenizer = load_model(TINY)
    watch = load_watch([GENERAL], tokenizer, settings(), exact_match, "exact match")
    (general,) = watch.sets
    assert general.name == "general" and general.choices is not None and len(general.choices) >= 300
    assert all(0 <= item.correct < len(item.choices) for item in general.choices)
    # A sample of it, evenly spaced: the first item, and items from its last kind too.
    (sample,) = load_watch([f"{GENERAL}:items=60"], tokenizer, settings(), exact_match, "exact match").sets
    assert sample.choices is not None and len(sample.choices) == 60
    assert sample.choices[0] == general.choices[0] and sample.choices[-1] in general.choices[-10:]
    with pytest.raises(LifelongError, match="items= is how many"):
        load_watch([f"{GENERAL}:items=0"], tokenizer, settings(), exact_match, "exact match")


class _Sized:
    """A stand-in for a model of ``n`` parameters (a meta tensor: no memory)."""

    def __init__(self, n: int) -> None:
        self.weight = torch.empty(n, device="meta")

    def parameters(self) -> list[torch.Tensor]:
        return [self.weight]


def test_general_is_scored_by_default_only_for_a_pretrained_chat_model() -> None:
    _, tokenizer = load_model(TINY)
    chat = type("Chat", (), {"chat_template": "{{ messages }}"})()
    big, tiny = _Sized(PRETRAINED_MIN_PARAMETERS), _Sized(PRETRAINED_MIN_PARAMETERS - 1)
    assert chosen_sources(None, big, chat) == [GENERAL]
    assert chosen_sources(None, tiny, chat) == []  # a model built from a tiny config
    assert chosen_sources(None, big, tokenizer) == []  # no chat template
    assert chosen_sources(["none"], big, chat) == [] and chosen_sources([], big, chat) == []
    assert chosen_sources(["a.jsonl"], tiny, tokenizer) == ["a.jsonl"]
    with pytest.raises(LifelongError, match="--eval none turns the watch sets off"):
        chosen_sources(["none", "a.jsonl"], big, chat)


def test_pretrain_scores_watch_sets_after_every_domain(tmp_path: Path) -> None:
    probe = write_jsonl(tmp_path / "probe.jsonl", PROBE)
    documents = load_corpus("prose").documents
    prose, code = tmp_path / "prose.txt", tmp_path / "more.txt"
    prose.write_text("\n".join(documents[:20]), encoding="utf-8")
    code.write_text("\n".join(documents[20:40]), encoding="utf-8")
    train = TrainSettings(block_size=16, batch_size=8, eval_blocks=2, learning_rate=3e-3, first_epochs=1.0)
    document = run_pretrain(
        TINY,
        [prose, code],
        ["naive"],
        tmp_path / "run",
        settings=train,
        console=Console(file=io.StringIO()),
        watch=[probe],
    )
    result = document["results"][0]
    (entry,) = result["watch"]
    assert entry["items"] == len(PROBE) and len(entry["scores"]) == 2 and entry["initial"] is not None
    assert "probe" in result["metrics"]["watch_retention"]
    # Every perplexity carries its standard error (bootstrap over the held-out blocks) and block count.
    assert result["items"] == [2, 2] and len(result["initial_scores_se"]) == 2
    assert all(se > 0 for row in result["accuracy_matrix_se"] for se in row)


def test_a_multiple_choice_task_and_a_watch_set_through_the_command_line(cli: Any, tmp_path: Path) -> None:
    """A task of multiple-choice records is learned as its right answers and scored by acc_norm."""
    rows = [
        {"prompt": f"Double {a}:", "choices": [f" {2 * a}", f" {a + 1}", f" {a}"], "answer": f" {2 * a}"}
        for a in range(20)
    ]
    task = write_jsonl(tmp_path / "double.jsonl", rows)
    probe = write_jsonl(tmp_path / "probe.jsonl", PROBE)
    out = tmp_path / "run"
    code, printed, err = cli(
        "finetune", "--model", TINY, "--data", str(task), "--eval", str(probe), "--epochs", "1",
        "--max-length", "32", "--device", "cpu", "--no-progress", "--out", str(out),
    )  # fmt: skip
    assert code == 0, err
    document = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert document["score_name"] == "acc_norm" and document["config"]["watch"] == [str(probe)]
    (result,) = document["results"]
    ((score,),), ((se,),) = result["accuracy_matrix"], result["accuracy_matrix_se"]
    assert result["items"] == [2] and se == pytest.approx((score * (1 - score) / 2) ** 0.5)
    assert "watch sets" in printed and "probe" in printed
