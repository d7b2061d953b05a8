"""Multiple-choice records: read and checked, learned as their right answer, and scored by the
likelihood of each choice exactly as a hand-written one-sequence-at-a-time loop scores them."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("transformers")

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from lifelong.core.metrics import mean_and_se
from lifelong.errors import LifelongError
from lifelong.llm.choices import encode_choices, score_choices
from lifelong.llm.instruct import IGNORE, encode, encode_prompt, read_records
from lifelong.llm.models import load_model

TINY = "tiny-llama:vocab_size=512,hidden=32,layers=1,heads=2"
TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
PROBE = [
    {"prompt": "Capital of France?", "choices": ["Paris", "Rome", "a big town by the sea"], "answer": 0},
    {"prompt": "2 + 2 =", "choices": [" 3", " 4", " 22"], "answer": " 4"},
    {"prompt": "Opposite of hot:", "choices": ["cold", "warm"], "answer": "cold"},
    {"prompt": "Say yes.", "choices": ["yes", "no", "maybe so", "perhaps not at all"], "answer": 0},
    {"prompt": "Colour of the sky on a clear day, in one word:", "choices": ["blue", "green"], "answer": 0},
]

pytestmark = pytest.mark.usefixtures("llm_cache")  # tiny-llama's tokenizer builds once, in a test folder


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return load_model(TINY)[1]


@pytest.fixture(scope="module")
def model(tokenizer: Any) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )
    torch.manual_seed(3)
    return LlamaForCausalLM(config).eval()


def probe_file(tmp_path: Path, rows: list[Any]) -> Path:
    path = tmp_path / "probe.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    return path


def hand_loglikelihood(model: Any, context: list[int], choice: list[int]) -> float:
    """log P(choice | context), one sequence, one token at a time from the full-sequence logits."""
    ids = torch.tensor([context + choice])
    with torch.no_grad():
        log_probs = torch.log_softmax(model(input_ids=ids).logits[0].double(), dim=-1)
    return sum(float(log_probs[len(context) + n - 1, token]) for n, token in enumerate(choice))


@pytest.mark.parametrize("chat", [False, True])
def test_scores_equal_a_hand_written_loglikelihood_loop(
    model: Any, tokenizer: Any, tmp_path: Path, chat: bool
) -> None:
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = TEMPLATE if chat else None
    records = read_records(probe_file(tmp_path, PROBE))
    items = [encode_choices(r, tok, 64) for r in records]
    if chat:  # the prompt is the user turn the chat template renders, as finetune asks it
        assert tok.decode(items[0].context).startswith("<|user|>Capital of France?<|end|>")
        assert tok.decode(items[0].context).endswith("<|assistant|>")
    expected_acc, expected_norm = [], []
    for record, item in zip(records, items, strict=True):
        lls = [hand_loglikelihood(model, item.context, c) for c in item.choices]
        normed = [ll / len(text) for ll, text in zip(lls, record.choices or (), strict=True)]
        expected_acc.append(float(lls.index(max(lls)) == record.correct))
        expected_norm.append(float(normed.index(max(normed)) == record.correct))
        for batch_size in (1, 3, 64):  # one forward pass per batch of (prompt, choice) pairs
            got = score_choices(model, items, tok.eos_token_id, batch_size).loglikelihoods
            assert got[records.index(record)] == pytest.approx(lls, abs=1e-4)
    scores = score_choices(model, items, tok.eos_token_id, 4)
    assert scores.acc == expected_acc and scores.acc_norm == expected_norm
    mean, se = mean_and_se(scores.acc_norm)  # the probe's score carries its binomial standard error
    assert se == pytest.approx(math.sqrt(mean * (1 - mean) / len(PROBE)))


def test_a_multiple_choice_record_is_learned_as_its_right_choice(tokenizer: Any, tmp_path: Path) -> None:
    record = read_records(probe_file(tmp_path, PROBE[2:3]))[0]
    example = encode(record, tokenizer, 64)
    answer = tokenizer.decode(
        [t for t, lab in zip(example.input_ids, example.labels, strict=True) if lab != IGNORE]
    )
    assert answer == "cold<|endoftext|>" and example.answer == "cold"
    assert encode_prompt(record, tokenizer, 64)[0] == example.prompt_ids


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (
            {"prompt": "q", "choices": ["a", "b"], "answer": 2},
            r"'answer' must be a choice's index \(0 to 1\)",
        ),
        ({"prompt": "q", "choices": ["a", "b"], "answer": "c"}, 'or one of the choices\' texts, got "c"'),
        ({"prompt": "q", "choices": ["a"], "answer": 0}, "at least two non-empty texts"),
        ({"choices": ["a", "b"], "answer": 0}, "has choices but no 'prompt'"),
    ],
)
def test_bad_multiple_choice_records_fail_in_one_line(tmp_path: Path, row: Any, message: str) -> None:
    with pytest.raises(LifelongError, match=message) as error:
        read_records(probe_file(tmp_path, [row]))
    assert "line 1" in str(error.value) and "\n" not in str(error.value)
