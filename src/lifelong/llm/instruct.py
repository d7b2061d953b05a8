"""Instruction data for continual fine-tuning: records in the formats users have, and their loss masks.

One JSONL line is one record, in one of three formats:

- ``{"prompt": ..., "completion": ...}``: the loss is on the completion and the end-of-text token
  after it (so the model learns to stop);
- ``{"messages": [{"role": ..., "content": ...}, ...]}``: rendered with the tokenizer's chat
  template; the loss is on every assistant turn, its content and the template's end-of-turn marks;
- ``{"text": ...}``: plain text, loss on every token. It has no answer, so it is scored by loss only;
- ``{"prompt": ..., "choices": [...], "answer": index or choice text}``: a multiple-choice question,
  scored by the likelihood of each choice (`lifelong.llm.choices`) and learned as its prompt with the
  right choice as the answer: a single user turn through the chat template where the tokenizer has
  one, else the raw prompt followed by the choice.

Prompt tokens (everything that is not a completion or an assistant turn) are labelled -100 and never
carry loss. A prompt and its answer are tokenized apart and joined, so the tokens the model learns
to produce after a prompt are exactly those it is asked to produce when it answers that prompt.

An `Example` is a record in tokens; `lifelong.llm.batches` turns examples into batches.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from lifelong.data.jsonl import json_lines, parse_json
from lifelong.errors import LifelongError
from lifelong.llm.corpora import read_text, split_documents

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

IGNORE = -100  # the label the loss skips (PyTorch's and transformers' ignore_index)
# Batch key of the positions a distillation teacher is matched at, present only when some example is
# soft or not distilled; every other batch distills where the labels are.
DISTILL_MASK = "distill_mask"
JSON_KINDS = {
    list: "array",
    str: "string",
    int: "number",
    float: "number",
    bool: "true/false",
    type(None): "null",
}
FORMATS = "{prompt, completion}, {messages}, {prompt, choices, answer} or {text}"


@dataclass(frozen=True)
class Record:
    """One training or evaluation record as read; ``where`` names its file and line for messages."""

    where: str
    prompt: str | None = None
    completion: str | None = None
    messages: tuple[Mapping[str, str], ...] | None = None
    text: str | None = None
    choices: tuple[str, ...] | None = None  # a multiple-choice question: its choices, and the right one
    correct: int | None = None
    split: str | None = None  # the record's "split" key as given (see `SPLITS`); None: split by position

    @property
    def answered(self) -> bool:
        """True when the record has an answer to score by exact match (not plain text)."""
        return self.text is None


@dataclass
class Example:
    """A record in token ids. ``labels`` is ``input_ids`` with -100 on every prompt token.

    ``prompt_ids`` is what generation starts from to answer the record (its final answer) and
    ``answer`` the reference text of that answer; both are empty for plain text. ``stop_ids`` end a
    generated answer (end-of-text and the chat template's end-of-turn token). When a distillation
    teacher runs, it is matched at the answer positions of ``distilled`` examples; a ``soft`` example
    is learned from the teacher alone, never from its tokens: batches give it no label. Either
    makes batches mark the distilled positions in ``DISTILL_MASK``.
    """

    input_ids: list[int]
    labels: list[int]
    prompt_ids: list[int] = field(default_factory=list)
    answer: str | None = None
    stop_ids: tuple[int, ...] = ()
    soft: bool = False
    distilled: bool = True


@dataclass
class InstructionTask:
    """One task of the stream: its records, split once into a training and a held-out part."""

    name: str
    train: list[Record]
    heldout: list[Record]
    origin: str

    @property
    def answered(self) -> bool:
        return all(r.answered for r in self.heldout)


# ---- reading -------------------------------------------------------------------------------------------


def read_records(path: str | Path, prompts_only: bool = False) -> list[Record]:
    """Every record of a JSONL file, checked; a bad line raises one error naming the file and line.

    ``prompts_only``: the records are questions for self-replay, ``{"prompt"}`` or ``{"messages"}``
    without an answer (an answer, if there, is ignored: the model writes its own).
    """
    path = Path(path)
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "does not exist"
        raise LifelongError(
            f"instruction data {path} {what}; pass a .jsonl file with one {FORMATS} record per line, or skills"
        )
    records = []
    for number, line in json_lines(read_text(path)):
        records.append(parse_record(line, f"{path} line {number}", prompts_only))
    if not records:
        raise LifelongError(f"{path} has no records; give one {FORMATS} JSON object per line")
    return records


# A record's "split": where a task's loader puts it. Exports of other tools say test or validation.
SPLITS = {"train": False, "heldout": True, "test": True, "validation": True}


def parse_record(line: str, where: str, prompts_only: bool = False) -> Record:
    row = parse_json(line, where)
    if not isinstance(row, dict):
        raise LifelongError(
            f"{where} is a JSON {JSON_KINDS.get(type(row), 'value')}, not an object with {FORMATS}"
        )
    record = _record(row, where, prompts_only)
    split = row.get("split")
    if split is None:
        return record
    return replace(record, split=split if isinstance(split, str) else json.dumps(split)[:40])


def _record(row: dict[str, Any], where: str, prompts_only: bool) -> Record:
    if "messages" in row:
        return Record(where, messages=_messages(row["messages"], where, need_answer=not prompts_only))
    if "choices" in row and not prompts_only:
        return _choice_record(row, where)
    if prompts_only:
        if "prompt" not in row:
            raise LifelongError(
                f"{where} has no 'prompt' or 'messages'; self-replay prompts need one of them"
            )
        return Record(where, prompt=_string(row, "prompt", where), completion="")
    if "prompt" in row or "completion" in row:
        if "prompt" not in row or "completion" not in row:
            missing = "completion" if "prompt" in row else "prompt"
            raise LifelongError(
                f"{where} has no '{missing}'; a prompt record needs both prompt and completion"
            )
        return Record(
            where, prompt=_string(row, "prompt", where), completion=_string(row, "completion", where)
        )
    if "text" in row:
        return Record(where, text=_string(row, "text", where))
    keys = ", ".join(row) or "none"
    raise LifelongError(
        f"{where} has neither prompt/completion, messages nor text (has: {keys}); use {FORMATS}"
    )


def _choice_record(row: Mapping[str, Any], where: str) -> Record:
    choices, answer = row["choices"], row.get("answer")
    if (
        not isinstance(choices, list)
        or len(choices) < 2
        or not all(isinstance(c, str) and c for c in choices)
    ):
        raise LifelongError(f"{where}: 'choices' must be a list of at least two non-empty texts")
    if isinstance(answer, str) and answer in choices:
        correct = choices.index(answer)
    elif isinstance(answer, int) and not isinstance(answer, bool) and 0 <= answer < len(choices):
        correct = answer
    else:
        raise LifelongError(
            f"{where}: 'answer' must be a choice's index (0 to {len(choices) - 1}) or one of the choices' "
            f"texts, got {json.dumps(answer)[:40]}"
        )
    if "prompt" not in row:
        raise LifelongError(
            f"{where} has choices but no 'prompt'; a multiple-choice record needs the question"
        )
    return Record(where, prompt=_string(row, "prompt", where), choices=tuple(choices), correct=correct)


def as_answered(record: Record, tokenizer: PreTrainedTokenizerBase) -> Record:
    """A multiple-choice record as the record it is learned as: its prompt answered by the right choice,
    one user turn through the chat template where the tokenizer has one; any other record as it is."""
    if record.choices is None or record.correct is None:
        return record
    choice = record.choices[record.correct]
    if getattr(tokenizer, "chat_template", None):
        turns = ({"role": "user", "content": record.prompt or ""}, {"role": "assistant", "content": choice})
        return Record(record.where, messages=turns)
    return Record(record.where, prompt=record.prompt, completion=choice)


def _string(row: Mapping[str, Any], key: str, where: str) -> str:
    value = row[key]
    if not isinstance(value, str):
        raise LifelongError(f"{where}: '{key}' holds {type(value).__name__}, not text")
    if not value.strip():  # an empty prompt leaves a model whose tokenizer adds no BOS nothing to go on
        raise LifelongError(f"{where}: '{key}' is empty; give it text, or use a {{text}} record instead")
    return value


def _messages(value: Any, where: str, need_answer: bool = True) -> tuple[Mapping[str, str], ...]:
    if not isinstance(value, list) or not value:
        raise LifelongError(f"{where}: 'messages' must be a non-empty list of {{role, content}} objects")
    for index, message in enumerate(value):
        if (
            not isinstance(message, dict)
            or not isinstance(message.get("role"), str)
            or not isinstance(message.get("content"), str)
        ):
            raise LifelongError(
                f'{where}: message {index} is not a {{"role": ..., "content": ...}} object with text values'
            )
    if need_answer and not any(m["role"] == "assistant" for m in value):
        raise LifelongError(
            f"{where}: the messages have no assistant turn, so there is nothing to learn; "
            'add the answer as {"role": "assistant", "content": ...}'
        )
    empty = next(
        (i for i, m in enumerate(value) if m["role"] == "assistant" and not m["content"].strip()), None
    )
    if empty is not None:  # as an empty 'completion' is: an empty answer scores 1.0 and teaches nothing
        raise LifelongError(f"{where}: message {empty} is an empty assistant turn; give it the answer's text")
    return tuple(value)


def load_task(path: str | Path, name: str | None = None) -> InstructionTask:
    """A JSONL file as one task: the records marked ``"split": "heldout"`` (or test, validation) held out
    for evaluation, those marked train trained on, or where none is marked, one record in ten (at least one)."""
    records = read_records(path)
    if len(records) < 2:
        raise LifelongError(
            f"{path} has one record; a task needs at least two (one is held out for evaluation)"
        )
    if any(r.split is not None for r in records):
        odd = next((r for r in records if r.split not in SPLITS), None)
        if odd is not None:
            raise LifelongError(
                f'{odd.where}: "split" is train or heldout (or test, validation), got {odd.split!r}; '
                "mark every record of a task that marks any"
            )
        heldout = [r for r in records if SPLITS[str(r.split)]]
        train = [r for r in records if not SPLITS[str(r.split)]]
        if not train or not heldout:
            raise LifelongError(
                f'{path} marks every record "split": "{"heldout" if heldout else "train"}"; '
                "a task needs records of both splits"
            )
        return InstructionTask(name or Path(path).stem, train, heldout, str(path))
    train, heldout = split_documents(records)
    if not heldout:
        train, heldout = records[:-1], records[-1:]
    return InstructionTask(name or Path(path).stem, train, heldout, str(path))


# ---- tokens -----------------------------------------------------------------------------------------------


def check_chat_template(tokenizer: PreTrainedTokenizerBase, records: Sequence[Record], model: str) -> None:
    """Messages need a chat template; say so naming the first record that needs one."""
    first = next((r for r in records if r.messages is not None), None)
    if first is not None and not getattr(tokenizer, "chat_template", None):
        raise LifelongError(
            f"{first.where} has 'messages', but the tokenizer of {model} has no chat template to render them; "
            "use prompt/completion records, or a model whose tokenizer sets chat_template"
        )


def encode(record: Record, tokenizer: PreTrainedTokenizerBase, max_length: int) -> Example:
    """``record`` in tokens, with -100 on prompt tokens, cut to ``max_length`` (the prompt's start first)."""
    eos = tokenizer.eos_token_id
    record = as_answered(record, tokenizer)
    if record.messages is not None:
        example = _encode_chat(record, tokenizer)
    elif record.text is not None:
        ids = _ids(tokenizer, record.text, special=True) + ([eos] if eos is not None else [])
        example = Example(ids, list(ids))
    else:
        prompt = _ids(tokenizer, record.prompt or "", special=True)
        answer = _ids(tokenizer, record.completion or "", special=False) + ([eos] if eos is not None else [])
        example = Example(
            prompt + answer,
            [IGNORE] * len(prompt) + answer,
            prompt_ids=prompt,
            answer=(record.completion or "").strip(),
            stop_ids=(eos,) if eos is not None else (),
        )
    return _fit(example, max_length)


def encode_prompt(
    record: Record, tokenizer: PreTrainedTokenizerBase, max_length: int
) -> tuple[list[int], tuple[int, ...]]:
    """(prompt tokens, stop tokens) to ask ``record``'s question; a final assistant turn is left out."""
    eos = (tokenizer.eos_token_id,) if tokenizer.eos_token_id is not None else ()
    record = as_answered(record, tokenizer)
    if record.messages is None:
        return _ids(tokenizer, record.prompt or "", special=True)[-max_length:], eos
    messages = [dict(m) for m in record.messages]
    if messages[-1]["role"] == "assistant":
        messages = messages[:-1]
    text = _render(tokenizer, messages, prompt=True, where=record.where)
    turn = _render(
        tokenizer, [*messages, {"role": "assistant", "content": "x"}], prompt=False, where=record.where
    )
    return _ids(tokenizer, text, special=False)[-max_length:], _chat_stops(tokenizer, turn[len(text) :], "x")


def _ids(tokenizer: PreTrainedTokenizerBase, text: str, special: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


def _encode_chat(record: Record, tokenizer: PreTrainedTokenizerBase) -> Example:
    """Each assistant turn is the text the template adds between "prompt up to it" and "through it".

    That needs a template whose rendering of a conversation starts with its rendering of every
    earlier part (true of the usual ones); one that rewrites earlier turns is refused by name.
    """
    messages = [dict(m) for m in record.messages or ()]
    ids: list[int] = []
    labels: list[int] = []
    done = ""
    prompt_ids: list[int] = []
    answer_text = ""
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = _render(tokenizer, messages[:index], prompt=True, where=record.where)
        through = _render(tokenizer, messages[: index + 1], prompt=False, where=record.where)
        if not before.startswith(done) or not through.startswith(before):
            raise LifelongError(
                f"{record.where}: the tokenizer's chat template renders earlier turns differently once "
                "later ones follow, so the assistant tokens cannot be found; use prompt/completion records"
            )
        context = _ids(tokenizer, before[len(done) :], special=False)
        answer_text = through[len(before) :]
        answer = _ids(tokenizer, answer_text, special=False)
        ids += context
        labels += [IGNORE] * len(context)
        prompt_ids = list(ids)
        ids += answer
        labels += answer
        done = through
    content = messages[max(i for i, m in enumerate(messages) if m["role"] == "assistant")]["content"]
    return Example(
        ids,
        labels,
        prompt_ids=prompt_ids,
        answer=content.strip(),
        stop_ids=_chat_stops(tokenizer, answer_text, content),
    )


def _render(
    tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]], prompt: bool, where: str
) -> str:
    if not messages:
        return ""
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt)
    except Exception as err:  # jinja errors: a template that refuses these roles or this order
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise LifelongError(
            f"{where}: the tokenizer's chat template cannot render these messages ({first})"
        ) from None
    return cast(str, text)


def _chat_stops(tokenizer: PreTrainedTokenizerBase, turn: str, content: str) -> tuple[int, ...]:
    """End-of-text, plus the first token the template writes after an answer's content (end of turn)."""
    stops = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    at = turn.rfind(content)
    tail = turn[at + len(content) :].strip() if at >= 0 and content else ""
    if tail:
        stops.append(_ids(tokenizer, tail, special=False)[0])
    return tuple(dict.fromkeys(stops))


def _fit(example: Example, max_length: int) -> Example:
    extra = len(example.input_ids) - max_length
    if extra <= 0:
        return example
    # Answers are what is learned: cut the prompt's start first, then (rarely) the answer's end.
    prompt_cut = min(extra, len(example.prompt_ids))
    ids, labels = example.input_ids[prompt_cut:], example.labels[prompt_cut:]
    return Example(
        ids[:max_length],
        labels[:max_length],
        example.prompt_ids[prompt_cut:],
        example.answer,
        example.stop_ids,
    )


def encode_all(
    records: Sequence[Record], tokenizer: PreTrainedTokenizerBase, max_length: int
) -> list[Example]:
    return [encode(r, tokenizer, max_length) for r in records]
