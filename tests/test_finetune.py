"""`finetune` end to end on tiny models: self-replay and lwf on earlier prompts never reread old data, LoRA adapters reload
exactly, results and report, replay data, compositions, and bad input through the command line."""

from __future__ import annotations

import builtins
import io
import json
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("transformers")
pytest.importorskip("peft")

from rich.console import Console

from lifelong.adapters import AdapterLibrary
from lifelong.errors import LifelongError
from lifelong.llm.answers import exact_match
from lifelong.llm.finetune import (
    FinetuneSettings,
    evaluate_task,
    finetune,
    load_task_adapter,
    prepare,
)
from lifelong.llm.finetune_data import Measure, pooled
from lifelong.llm.instruct import DISTILL_MASK, IGNORE, load_task
from lifelong.llm.models import load_model, resolve_model_folder
from lifelong.llm.plans import parse_plans
from lifelong.llm.skills import skill_task
from lifelong.llm.trainer import ContinualTrainer
from lifelong.strategies import LwF

TINY = "tiny-llama:vocab_size=512,hidden=32,layers=1,heads=2"


def fast(**overrides: Any) -> FinetuneSettings:
    values: dict[str, Any] = {
        "batch_size": 16,
        "learning_rate": 3e-3,
        "max_length": 32,
        "max_new_tokens": 12,
        "eval_examples": 8,
    }
    return FinetuneSettings(**{**values, **overrides})


def quiet() -> Console:
    return Console(file=io.StringIO())


pytestmark = pytest.mark.usefixtures("llm_cache")  # tiny-llama builds once, in a test folder


@pytest.fixture(scope="module")
def skills(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two small skills as a user's JSONL files (64 records each: 58 to train, 6 held out)."""
    folder = tmp_path_factory.mktemp("skills")
    paths = []
    for name in ("upper", "reverse"):
        task = skill_task(name, train=60, heldout=4)
        rows = [{"prompt": r.prompt, "completion": r.completion} for r in (*task.train, *task.heldout)]
        path = folder / f"{name}.jsonl"
        path.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
        paths.append(path)
    return paths[0], paths[1]


@pytest.mark.parametrize("strategy", ["self-replay:ratio=0.25", "lwf:prompts=earlier,ratio=0.25"])
def test_own_answers_never_read_the_first_tasks_file_again(
    skills: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, strategy: str
) -> None:
    """self-replay and lwf on earlier prompts answer kept prompts with the model: no old file is reread."""
    first, second = skills
    tasks_started = [0]
    sizes: list[int] = []
    unlabelled: list[int] = []  # rows learned with no label: lwf's soft answers
    undistilled: list[int] = []  # rows the teacher is not asked on: with lwf, the new task's
    reads: list[tuple[str, int]] = []  # (path, tasks started when it was opened)
    train_task, read_bytes, open_ = ContinualTrainer.train_task, Path.read_bytes, builtins.open
    path_open = Path.open

    def counting_train_task(self: ContinualTrainer, *args: Any, **kwargs: Any) -> Any:
        tasks_started[0] += 1
        data: Any = self.train_dataset
        sizes.append(len(data))
        unlabelled.append(sum(all(label == IGNORE for label in row) for row in data["labels"]))
        masks = data[DISTILL_MASK] if DISTILL_MASK in data.column_names else []
        undistilled.append(sum(not any(row) for row in masks))
        return train_task(self, *args, **kwargs)

    def noting(function: Any) -> Any:
        def wrapper(file: Any, *args: Any, **kwargs: Any) -> Any:
            reads.append((str(file), tasks_started[0]))
            return function(file, *args, **kwargs)

        return wrapper

    monkeypatch.setattr(ContinualTrainer, "train_task", counting_train_task)
    monkeypatch.setattr(Path, "read_bytes", noting(read_bytes))
    monkeypatch.setattr(Path, "open", noting(path_open))
    monkeypatch.setattr(builtins, "open", noting(open_))
    document = finetune(
        TINY,
        [first, second],
        tmp_path / "run",
        strategies=strategy,
        metric=lambda prediction, reference: 1.0,
        settings=fast(),
        console=quiet(),
    )
    first_reads = [started for path, started in reads if path == str(first)]
    assert first_reads and max(first_reads) == 0  # read once, before any task trained
    # The second task trained on its 58 examples plus 19 self-replayed ones (25% of the 77).
    assert sizes == [58, 58 + 19]
    distilled = strategy.startswith("lwf")
    assert unlabelled == [0, 19 if distilled else 0] and undistilled == [0, 58 if distilled else 0]
    result = document["results"][0]
    assert result["strategy"] == strategy
    assert result["accuracy_matrix"] == [[1.0, 1.0], [1.0, 1.0]]  # the metric given, not exact match


def test_parts_of_a_set_pool_into_the_sets_mean_and_standard_error() -> None:
    """Scores weigh by items, losses by answer tokens, as a whole set's are measured."""
    right = Measure(1.0, 0.0, 0.2, 0.01, items=3, tokens=6)
    wrong = Measure(0.5, 0.25, 1.0, 0.1, items=1, tokens=2)
    whole = pooled([right, wrong])
    assert whole["items"] == 4 and whole["score"] == (3 * 1.0 + 0.5) / 4
    assert whole["loss"] == pytest.approx((6 * 0.2 + 2 * 1.0) / 8)
    assert whole["score_se"] == pytest.approx(0.25 / 4)
    assert whole["loss_se"] == pytest.approx(((6 / 8 * 0.01) ** 2 + (2 / 8 * 0.1) ** 2) ** 0.5)
    assert pooled([Measure(None, None, 1.0, 0.0, items=2)])["score"] is None  # plain text has no score


def test_lora_keeps_one_adapter_per_task_that_reloads_exactly(
    skills: tuple[Path, Path], tmp_path: Path
) -> None:
    settings = fast(learning_rate=1e-2)
    document = finetune(
        TINY,
        list(skills),
        tmp_path / "run",
        strategies=["naive", "lwf", "lwf:prompts=earlier"],
        lora={"r": 4},
        merge=True,
        settings=settings,
        console=quiet(),
    )
    folder = resolve_model_folder(TINY)
    _, tokenizer = load_model(TINY)
    first = prepare(load_task(skills[0]), tokenizer, settings, keep=0)
    for result in document["results"]:
        root = Path(result["adapters"]["root"])
        assert AdapterLibrary(folder, root).tasks() == ["merged", "reverse", "upper"]
        assert len(result["merged"]["scores"]) == 2
        # A fresh base with adapter 1 scores task 1 exactly as the run did right after task 1.
        score, loss = evaluate_task(
            load_task_adapter(TINY, root, "upper"), first, tokenizer, exact_match, settings
        )
        assert score == result["accuracy_matrix"][0][0]
        assert loss == result["loss_matrix"][0][0]
        assert result["loss_matrix"][1][1] < result["loss_matrix"][0][1]  # adapter 2 learned task 2
        # Each task answers through its own adapter: task 1's after task 2 is its score after task 1,
        # and task 2 before its training is the bare base's.
        assert result["accuracy_matrix"][1][0] == result["accuracy_matrix"][0][0]
        assert result["loss_matrix"][1][0] == result["loss_matrix"][0][0]
        assert result["loss_matrix"][0][1] == result["initial_loss"][1]
        routed = result["routed"]
        assert [s["name"] for s in routed["sets"]] == ["upper", "reverse"]
        for k, routed_set in enumerate(routed["sets"]):
            assert sum(routed_set["routed_to"].values()) == routed_set["items"] == len(first.heldout)
            assert set(routed_set["routed_to"]) <= {"upper", "reverse", "__base__"}
            if routed_set["routed_to"] == {routed_set["name"]: routed_set["items"]}:  # all sent home
                assert routed_set["score"] == result["accuracy_matrix"][-1][k]
                assert routed_set["loss"] == result["loss_matrix"][-1][k]
        assert routed["right"] > 0.5  # the two skills' prompts differ in their first token


def test_cli_run_writes_results_report_and_models(
    cli: Any, skills: tuple[Path, Path], tmp_path: Path
) -> None:
    out = tmp_path / "run"
    args = ["--model", TINY, "--batch-size", "16", "--lr", "3e-3", "--epochs", "2", "--eval-examples", "8"]
    code, stdout, stderr = cli(
        "finetune", *args, "--data", str(skills[1]), "--replay", str(skills[0]), "-s", "naive", "-s", "replay",
        "--replay-ratio", "0.2", "--packing", "--block-size", "32", "--out", str(out), "--no-progress",
    )  # fmt: skip
    assert code == 0, stderr
    document = json.loads((out / "results.json").read_text())
    assert document["tasks"] == ["upper", "reverse"] and document["score_name"] == "exact match"
    assert document["config"]["replay_tasks"] == ["upper"]
    naive, replay = document["results"]
    assert replay["strategy"] == "replay:ratio=0.2"
    for result in (naive, replay):
        # The replay data counts as learned before the run: its row is the model as given.
        assert result["loss_matrix"][0] == result["initial_loss"]
        assert len(result["accuracy_matrix"]) == 2 and set(result["metrics"]) >= {"forgetting", "bwt"}
        folder = Path(result["model"])
        assert (folder / "model.safetensors").is_file()
        # The final model's files are the last checkpoint's, linked rather than written again.
        assert not {"manifest.json", "state.json", "tensors.safetensors"} & {p.name for p in folder.iterdir()}
        assert (
            load_model(str(folder))[0].config.num_hidden_layers
            == load_model(TINY)[0].config.num_hidden_layers
        )
    assert replay["loss_matrix"][1][0] < naive["loss_matrix"][1][0]  # replaying the old data keeps it better
    assert (out / "report.md").is_file() and "forgetting of the first task, upper" in stdout


def test_a_model_folder_with_a_chat_template_learns_messages_and_text(tmp_path: Path) -> None:
    model, tokenizer = load_model(TINY)
    tokenizer.chat_template = (
        "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    folder = tmp_path / "my-model"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    chat, text = tmp_path / "chat.jsonl", tmp_path / "notes.jsonl"
    records = skill_task("upper", train=20, heldout=2).train
    chat.write_text(
        "\n".join(
            json.dumps(
                {
                    "messages": [
                        {"role": "user", "content": r.prompt},
                        {"role": "assistant", "content": r.completion},
                    ]
                }
            )
            for r in records
        ),
        encoding="utf-8",
    )
    text.write_text(
        "\n".join(json.dumps({"text": f"note {i} about things"}) for i in range(20)), encoding="utf-8"
    )
    document = finetune(folder, [chat, text], tmp_path / "run", settings=fast(), console=quiet())
    # Plain text has no answer to match, so the run is scored by answer loss (lower is better).
    assert document["higher_is_better"] is False and document["score_name"] == "answer loss"
    result = document["results"][0]
    assert result["accuracy_matrix"] == result["loss_matrix"]
    assert result["initial_scores"] == result["initial_loss"]
    assert result["loss_matrix"][0][0] < result["initial_loss"][0]  # the assistant turns were learned


def test_compositions_are_checked_before_anything_runs() -> None:
    plans = parse_plans(["replay:ratio=0.3+lwf", "self-replay:keep=50", "naive"], 0.1)
    assert plans[0].replay_ratio == 0.3 and isinstance(plans[0].strategies[0], LwF)
    assert plans[1].self_replay_ratio == 0.1 and plans[1].keep == 50
    distilled = parse_plans(["lwf:alpha=0.7,prompts=earlier,keep=40"], 0.1)[0]
    assert distilled.distill_ratio == 0.1 and distilled.keep == 40
    assert distilled.label == "lwf:alpha=0.7,prompts=earlier,ratio=0.1"
    assert isinstance(distilled.strategies[0], LwF) and distilled.strategies[0].alpha == 0.7
    for bad, message in [
        ("replay:ratio=0", "replays nothing"),
        ("replay:keep=3", "replay has options ratio"),
        ("self-replay:keep=0", "whole number >= 1"),
        ("lwf:prompts=old", "prompts is 'new'"),
        ("lwf:ratio=0.2", "go with prompts=earlier"),
        ("lwf:prompts=earlier,alpha=1", "needs alpha in"),
        ("self-replay:keep=5+lwf:prompts=earlier,keep=6", "one number of prompts"),
        ("naive", "must differ"),
    ]:
        with pytest.raises(LifelongError, match=message):
            parse_plans(["naive", bad] if bad == "naive" else [bad], 0.1)


def test_a_from_scratch_first_task_takes_first_epochs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    epochs: list[float] = []
    train_task = ContinualTrainer.train_task

    def noting(self: ContinualTrainer, *args: Any, **kwargs: Any) -> Any:
        epochs.append(self.args.num_train_epochs)
        return train_task(self, *args, **kwargs)

    monkeypatch.setattr(ContinualTrainer, "train_task", noting)
    tasks = [skill_task(name, train=16, heldout=2) for name in ("upper", "reverse")]
    finetune(TINY, tasks, tmp_path / "run", settings=fast(epochs=1.0, first_epochs=3.0), console=quiet())
    assert epochs == [3.0, 1.0]


@pytest.mark.parametrize("name", ["eval_blocks", "eval_every", "stop_ratio"])
def test_pretrain_only_settings_are_refused_not_ignored(name: str) -> None:
    with pytest.raises(LifelongError, match=f"{name} is a pretrain setting"):
        fast(**{name: 2}).validate()


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{oops", "line 2 is not valid JSON"),
        ('{"input": "x"}', "line 2 has neither prompt/completion, messages nor text"),
        ('{"messages": [{"role": "user", "content": "q"}]}', "line 2: the messages have no assistant turn"),
        (
            '{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}',
            "line 2 has 'messages', but the tokenizer of",
        ),
    ],
)
def test_bad_input_is_one_line_naming_file_and_line(
    cli: Any, tmp_path: Path, line: str, message: str
) -> None:
    data = tmp_path / "mine.jsonl"
    data.write_text('{"prompt": "a", "completion": "b"}\n' + line + "\n", encoding="utf-8")
    out = tmp_path / "run"
    code, _, stderr = cli("finetune", "--model", TINY, "--data", str(data), "--out", str(out))
    assert code == 2
    assert len(stderr.strip().splitlines()) == 1
    assert f"{data} {message}" in stderr
    assert not out.exists()  # nothing half-written


def test_a_given_models_first_task_is_shared_where_every_composition_trains_it_as_naive(
    skills: tuple[Path, Path], tmp_path: Path
) -> None:
    """A model folder (not the from-scratch tiny-llama name): naive, replay and lwf on earlier prompts
    train the first task alike, so it is trained once, to the numbers each gets alone."""
    folder = str(resolve_model_folder(TINY))
    strategies = ["naive", "replay", "lwf:prompts=earlier"]

    def run(out: str, compositions: list[str]) -> dict[str, Any]:
        return finetune(
            folder, list(skills), tmp_path / out, strategies=compositions, settings=fast(), console=quiet()
        )

    together = run("together", strategies)
    assert together["config"]["shared_first_task"]
    for k, strategy in enumerate(strategies):
        alone = run(f"alone-{k}", [strategy])
        assert not alone["config"]["shared_first_task"]
        for key in ("accuracy_matrix", "loss_matrix"):
            assert alone["results"][0][key] == together["results"][k][key], (strategy, key)
    # lwf as published distills the given model on the first task: not alike.
    assert not run("mixed", ["naive", "lwf"])["config"]["shared_first_task"]


def test_a_users_metric_that_fails_or_returns_no_number_is_named_in_one_line() -> None:
    from lifelong.llm.answers import apply_metric

    def broken(prediction: str, reference: str) -> float:
        raise KeyError("oops")

    with pytest.raises(LifelongError, match=r"metric broken failed on an answer \(KeyError"):
        apply_metric(broken, "a", "b")
    for returned in ("x", float("nan"), None):
        with pytest.raises(LifelongError, match=r"returned .* not a finite number"):
            apply_metric(lambda p, r, v=returned: v, "a", "b")
    assert apply_metric(lambda p, r: p == r, "a", "a") == 1.0  # a bool counts
