"""Instruction records: the three formats, which tokens carry loss, packing, the skills, and bad input."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("transformers")
pytest.importorskip("datasets")

from lifelong.errors import LifelongError
from lifelong.llm.batches import PaddingCollator, examples_dataset, pack_examples
from lifelong.llm.instruct import (
    DISTILL_MASK,
    IGNORE,
    Record,
    check_chat_template,
    encode,
    encode_prompt,
    load_task,
    read_records,
)
from lifelong.llm.models import load_model
from lifelong.llm.skills import SKILL_NAMES, parse_skills, skill_task

TINY = "tiny-llama:vocab_size=512,hidden=32,layers=1,heads=2"
# A minimal template with the usual shape: every turn wrapped in role marks, a generation prompt.
TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


pytestmark = pytest.mark.usefixtures("llm_cache")  # tiny-llama builds once, in a test folder


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    _, tok = load_model(TINY)
    return tok


def labelled_text(tokenizer: Any, ids: list[int], labels: list[int]) -> str:
    return tokenizer.decode([t for t, label in zip(ids, labels, strict=True) if label != IGNORE])


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text(
        "\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n", encoding="utf-8"
    )
    return path


# ---- which tokens carry loss -----------------------------------------------------------------------------


def test_prompt_tokens_carry_no_loss_in_prompt_completion(tokenizer: Any) -> None:
    example = encode(Record("t", prompt="Say hi to Ada:", completion=" Hello, Ada."), tokenizer, 128)
    prompt = tokenizer("Say hi to Ada:")["input_ids"]
    assert example.input_ids[: len(prompt)] == prompt
    assert example.labels[: len(prompt)] == [IGNORE] * len(prompt)
    assert example.labels[len(prompt) :] == example.input_ids[len(prompt) :]
    assert example.labels[-1] == tokenizer.eos_token_id  # the model learns to stop
    assert labelled_text(tokenizer, example.input_ids, example.labels) == " Hello, Ada.<|endoftext|>"
    assert example.prompt_ids == prompt and example.answer == "Hello, Ada."


def test_only_assistant_turns_carry_loss_in_messages(tokenizer: Any) -> None:
    tokenizer.chat_template = TEMPLATE
    messages = (
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And of Italy?"},
        {"role": "assistant", "content": "Rome."},
    )
    example = encode(Record("t", messages=messages), tokenizer, 256)
    rendered = tokenizer.apply_chat_template(list(messages), tokenize=False)
    assert tokenizer.decode(example.input_ids) == rendered
    assert labelled_text(tokenizer, example.input_ids, example.labels) == "Paris.<|end|>\nRome.<|end|>\n"
    # Generation answers the last turn from everything before it, ending at the template's mark.
    assert tokenizer.decode(example.prompt_ids).endswith("And of Italy?<|end|>\n<|assistant|>")
    assert example.answer == "Rome."
    assert len(example.stop_ids) == 2


def test_text_records_carry_loss_everywhere(tokenizer: Any) -> None:
    example = encode(Record("t", text="plain words here"), tokenizer, 128)
    assert example.labels == example.input_ids
    assert example.answer is None and example.prompt_ids == []


def test_packing_keeps_the_prompt_masks(tokenizer: Any) -> None:
    records = [Record("t", prompt=f"q{i}:", completion=f" a{i}") for i in range(12)]
    examples = [encode(r, tokenizer, 64) for r in records]
    packed = pack_examples(examples, 8)
    ids = [t for row in packed["input_ids"] for t in row]
    labels = [t for row in packed["labels"] for t in row]
    flat_labels = [label for e in examples for label in e.labels]
    assert all(len(row) == 8 for row in packed["input_ids"])
    assert labels[: len(flat_labels)] == flat_labels
    assert set(labels[len(flat_labels) :]) <= {IGNORE}  # the padded tail carries no loss
    assert ids[: len(flat_labels)] == [t for e in examples for t in e.input_ids]


def test_soft_examples_carry_no_label_but_mark_their_answers_for_distillation(tokenizer: Any) -> None:
    records = [Record("t", prompt=f"q{i}:", completion=f" a{i}") for i in range(4)]
    examples = [encode(r, tokenizer, 64) for r in records]
    examples[1] = dataclasses.replace(examples[1], soft=True)
    examples[2] = dataclasses.replace(examples[2], distilled=False)  # learns its labels, not the teacher
    answers = [[int(label != IGNORE and i != 2) for label in e.labels] for i, e in enumerate(examples)]

    rows = examples_dataset(examples)
    batch = PaddingCollator(0)(list(rows))
    for i, example in enumerate(examples):
        width = len(example.labels)
        expected = [IGNORE] * width if i == 1 else example.labels
        assert batch["labels"][i, :width].tolist() == expected
        assert batch[DISTILL_MASK][i, :width].tolist() == [bool(a) for a in answers[i]]
        assert not batch[DISTILL_MASK][i, width:].any()  # padding is never distilled

    flat = [a for row in answers for a in row]
    packed = pack_examples(examples, 8)
    assert [m for row in packed[DISTILL_MASK] for m in row][: len(flat)] == flat
    # With every example plainly distilled batches stay as they were: no mask, the labels say where.
    assert DISTILL_MASK not in PaddingCollator(0)(list(examples_dataset(examples[:1])))
    assert DISTILL_MASK in PaddingCollator(0)(list(examples_dataset(examples[2:3])))


def test_long_examples_lose_the_prompt_start_first(tokenizer: Any) -> None:
    example = encode(Record("t", prompt="word " * 40, completion=" end"), tokenizer, 12)
    assert len(example.input_ids) == 12
    assert labelled_text(tokenizer, example.input_ids, example.labels) == " end<|endoftext|>"


def test_self_replay_prompts_drop_a_final_answer(tokenizer: Any) -> None:
    tokenizer.chat_template = TEMPLATE
    record = Record(
        "t", messages=({"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Yo."})
    )
    ids, stops = encode_prompt(record, tokenizer, 64)
    assert tokenizer.decode(ids) == "<|user|>Hi?<|end|>\n<|assistant|>"
    assert tokenizer.eos_token_id in stops


# ---- files and the skills ---------------------------------------------------------------------------------


def test_a_file_is_one_task_with_a_tenth_held_out(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "notes.jsonl", [{"prompt": f"q{i}", "completion": f"a{i}"} for i in range(30)]
    )
    task = load_task(path)
    assert task.name == "notes" and len(task.train) == 27 and len(task.heldout) == 3
    assert {r.prompt for r in task.train}.isdisjoint(r.prompt for r in task.heldout)


def test_records_marked_heldout_are_the_held_out_part(tmp_path: Path) -> None:
    rows = [
        {"prompt": f"q{i}", "completion": f"a{i}", "split": "heldout" if i % 3 else "train"} for i in range(9)
    ]
    task = load_task(write_jsonl(tmp_path / "marked.jsonl", rows))
    assert [r.prompt for r in task.train] == ["q0", "q3", "q6"] and len(task.heldout) == 6
    for bad, message in (
        ({"split": "dev"}, 'line 2: "split" is train or heldout'),
        ({}, "marks every record"),
    ):
        rows = [
            {"prompt": "q", "completion": "a", "split": "heldout"},
            {"prompt": "r", "completion": "b"} | bad,
        ]
        if not bad:
            rows = rows[:1] * 2
        with pytest.raises(LifelongError, match=message):
            load_task(write_jsonl(tmp_path / "bad.jsonl", rows))


def test_skills_are_generated_right_and_held_out_apart() -> None:
    tasks = parse_skills("skills:train=300,heldout=50,seed=3")
    assert [t.name for t in tasks] == list(SKILL_NAMES)
    for task in tasks:
        assert len(task.train) == 300 and len(task.heldout) == 50
        assert {r.prompt for r in task.train}.isdisjoint(r.prompt for r in task.heldout)
    for record in skill_task("add", 50, 10).train:
        a, b = (int(x.replace(".", "")) for x in (record.prompt or "")[4:-1].split("+"))
        assert int((record.completion or "").replace(".", "")) == a + b
    for record in skill_task("reverse", 20, 5).train:
        assert (record.completion or "") == (record.prompt or "")[4:-1][::-1]
    for record in skill_task("upper", 20, 5).train:
        assert (record.completion or "") == (record.prompt or "")[3:-1].upper()
    for record in skill_task("shift", 20, 5).train:
        word, moved = (record.prompt or "")[5:-1].split("."), (record.completion or "").split(".")
        assert all((ord(b) - ord(a)) % 26 == 1 for a, b in zip(word, moved, strict=True))
    assert [t.name for t in parse_skills("skills:train=5,heldout=1,names=add+upper")] == ["add", "upper"]
    with pytest.raises(LifelongError, match="unknown skill 'mul'"):
        parse_skills("skills:names=mul")
    assert skill_task("add", 50, 10, seed=1).train == skill_task("add", 50, 10, seed=1).train


# ---- bad input: one line naming the file and the line ---------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "is not valid JSON"),
        (
            {"question": "q", "answer": "a"},
            "has neither prompt/completion, messages nor text (has: question, answer)",
        ),
        ({"prompt": "q"}, "has no 'completion'"),
        ({"messages": [{"role": "user", "content": "hi"}]}, "the messages have no assistant turn"),
        ({"messages": [{"role": "user"}]}, "message 0 is not a"),
        ({"text": 3}, "'text' holds int, not text"),
    ],
)
def test_bad_records_name_file_and_line(tmp_path: Path, line: Any, message: str) -> None:
    path = write_jsonl(tmp_path / "data.jsonl", [{"prompt": "a", "completion": "b"}, "", line])
    with pytest.raises(LifelongError) as caught:
        read_records(path)
    assert f"{path} line 3" in str(caught.value) and message in str(caught.value)


def test_messages_without_a_chat_template_name_the_line(tokenizer: Any, tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "chat.jsonl",
        [
            {"text": "x"},
            {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
        ],
    )
    records = read_records(path)
    tokenizer.chat_template = None
    with pytest.raises(
        LifelongError, match=rf"{path} line 2 has 'messages', but the tokenizer of m has no chat template"
    ):
        check_chat_template(tokenizer, records, "m")
