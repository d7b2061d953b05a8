"""LLM text inputs: every corpus format, the built-in domains, packing, and exact token-share mixing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("datasets")

from lifelong.errors import LifelongError
from lifelong.llm.corpora import HELDOUT_EVERY, builtin_corpus, load_corpus, split_documents
from lifelong.llm.data import CausalCollator, mix_by_token_share, pack, token_shares
from lifelong.llm.models import load_model

TINY = "tiny-llama:vocab_size=512,hidden=32,layers=1,heads=2"


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    # One tiny-llama cache for the whole session: the first module to ask builds it.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LIFELONG_CACHE", str(tmp_path_factory.getbasetemp() / "llm-cache"))
        yield load_model(TINY)[1]


def one_line(err: pytest.ExceptionInfo[LifelongError]) -> str:
    text = str(err.value)
    assert "\n" not in text and text
    return text


# ---- reading --------------------------------------------------------------------------------------------


def test_txt_whole_file_and_one_doc_per_line(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("first line\n\nsecond line\nthird\n", encoding="utf-8")
    whole = load_corpus(path)
    assert whole.name == "notes" and whole.documents == ["first line\n\nsecond line\nthird\n"]
    assert load_corpus(path, one_doc_per_line=True).documents == ["first line", "second line", "third"]


def test_jsonl_parquet_folder_and_saved_dataset(tmp_path: Path) -> None:
    import pandas as pd
    from datasets import Dataset, DatasetDict

    rows = [{"text": f"document {i}", "id": i} for i in range(3)]
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    pd.DataFrame({"body": ["x one", "x two"]}).to_parquet(tmp_path / "b.parquet")
    assert load_corpus(tmp_path / "a.jsonl").documents == ["document 0", "document 1", "document 2"]
    assert load_corpus(tmp_path / "b.parquet", text_field="body").documents == ["x one", "x two"]

    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "part10.txt").write_text("ten", encoding="utf-8")
    (folder / "part2.txt").write_text("two", encoding="utf-8")
    (folder / "skip.bin").write_bytes(b"\x00\x01")  # not a corpus suffix: ignored in a folder
    assert load_corpus(folder).documents == ["two", "ten"]  # natural order: 2 before 10

    Dataset.from_dict({"text": ["saved a", "saved b"]}).save_to_disk(str(tmp_path / "saved"))
    assert load_corpus(tmp_path / "saved").documents == ["saved a", "saved b"]
    DatasetDict(
        {"train": Dataset.from_dict({"text": ["tr"]}), "test": Dataset.from_dict({"text": ["te"]})}
    ).save_to_disk(str(tmp_path / "dd"))
    assert load_corpus(tmp_path / "dd").documents == ["tr"]


def test_bad_corpora_get_one_clear_line(tmp_path: Path) -> None:
    (tmp_path / "empty.txt").write_text("  \n", encoding="utf-8")
    (tmp_path / "blob.txt").write_bytes(bytes(range(256)) * 4)
    (tmp_path / "latin.txt").write_bytes("caf\xe9".encode("latin-1"))
    (tmp_path / "rows.jsonl").write_text('{"content": "x"}\n', encoding="utf-8")
    (tmp_path / "data.csv").write_text("a,b\n", encoding="utf-8")
    (tmp_path / "nothing").mkdir()
    cases = {
        "empty.txt": "has no text",
        "blob.txt": "not a text file",
        "latin.txt": "not UTF-8",
        "rows.jsonl": "no 'text' field (has: content); pass --text-field",
        "data.csv": "not a supported corpus file",
        "nothing": "holds no .txt",
        "missing.txt": "does not exist",
    }
    for name, expected in cases.items():
        with pytest.raises(LifelongError) as err:
            load_corpus(tmp_path / name)
        assert expected in one_line(err), name


def test_builtin_domains_are_deterministic_and_split_cleanly() -> None:
    prose, code = builtin_corpus("prose"), builtin_corpus("code")
    assert len(prose.documents) > 500 and len(code.documents) > 50
    assert builtin_corpus("prose").documents == prose.documents
    assert "def " in "".join(code.documents) and "def " not in prose.documents[0]
    train, held = split_documents(code.documents)
    assert len(held) == len(code.documents[HELDOUT_EVERY // 2 :: HELDOUT_EVERY]) and not set(held) & set(
        train
    )
    with pytest.raises(LifelongError) as err:
        builtin_corpus("poetry")
    assert "prose, code" in one_line(err)


# ---- packing -----------------------------------------------------------------------------------------


def test_pack_splits_by_document_or_by_block(tokenizer: Any, tmp_path: Path) -> None:
    many = load_corpus("prose")
    packed = pack(many, tokenizer, 32)
    assert packed.train.shape[1] == 32 and packed.train.dtype == torch.long
    assert 0.05 < len(packed.heldout) / (len(packed.train) + len(packed.heldout)) < 0.15

    (tmp_path / "one.txt").write_text("word " * 400, encoding="utf-8")
    single = pack(load_corpus(tmp_path / "one.txt"), tokenizer, 16)
    assert len(single.heldout) >= 1 and len(single.train) > len(single.heldout)

    (tmp_path / "short.txt").write_text("hi", encoding="utf-8")
    with pytest.raises(LifelongError) as err:
        pack(load_corpus(tmp_path / "short.txt"), tokenizer, 64)
    assert "at least 2" in one_line(err)
    with pytest.raises(LifelongError) as err:
        pack(many, tokenizer, 32, vocab_size=100)
    assert "tokenizer saved with the model" in one_line(err)


# ---- mixing: acceptance 2 ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ratio", "new_blocks", "old_blocks"), [(0.2, 997, 300), (0.2, 400, 30), (0.35, 123, 5000)]
)
def test_mixing_is_exact_by_token_share_and_never_drops_new_blocks(
    ratio: float, new_blocks: int, old_blocks: int
) -> None:
    """Counts the tokens of each corpus in the mixed set: the requested share within 1%."""
    block = 8
    new = torch.arange(new_blocks * block).view(new_blocks, block)  # every block unique
    old = -1 - torch.arange(old_blocks * block).view(old_blocks, block)  # negative ids: never confused
    mixed = mix_by_token_share(new, old, ratio, seed=3)
    ids = torch.as_tensor(mixed["input_ids"])
    tokens_new = int((ids >= 0).sum())
    tokens_old = int((ids < 0).sum())
    assert abs(tokens_old / (tokens_new + tokens_old) - ratio) <= 0.01
    assert token_shares(mixed) == {0: tokens_new, 1: tokens_old}  # the source column agrees
    # Every new block exactly once: the new corpus is never truncated nor repeated.
    new_rows = ids[ids[:, 0] >= 0]
    assert sorted(new_rows[:, 0].tolist()) == new[:, 0].tolist()
    # Old blocks are genuine blocks of the old corpus, spread through training (not all at the end).
    assert set((-1 - ids[ids[:, 0] < 0][:, 0]).tolist()) <= set(range(0, old_blocks * block, block))
    positions = (ids[:, 0] < 0).nonzero().squeeze(1).float()
    assert positions.mean() / len(ids) == pytest.approx(0.5, abs=0.15)


def test_mixing_is_deterministic_and_ratio_zero_is_new_only() -> None:
    new, old = torch.zeros(50, 4, dtype=torch.long), torch.ones(20, 4, dtype=torch.long)
    a, b = mix_by_token_share(new, old, 0.2, seed=1), mix_by_token_share(new, old, 0.2, seed=1)
    assert a["input_ids"] == b["input_ids"]
    assert token_shares(mix_by_token_share(new, old, 0.0)) == {0: 200}


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5, float("nan"), True])
def test_replay_ratio_outside_zero_one_is_refused(ratio: float) -> None:
    with pytest.raises(LifelongError) as err:
        mix_by_token_share(torch.zeros(4, 4, dtype=torch.long), torch.ones(4, 4, dtype=torch.long), ratio)
    assert "[0, 1)" in one_line(err)


def test_collator_makes_labels_from_inputs_and_keeps_given_ones() -> None:
    batch = CausalCollator()([{"input_ids": [1, 2, 3], "source": 0}, {"input_ids": [4, 5, 6], "source": 1}])
    assert batch["labels"].tolist() == batch["input_ids"].tolist() and set(batch) == {"input_ids", "labels"}
    kept = CausalCollator()([{"input_ids": [1, 2], "labels": [-100, 2]}])
    assert kept["labels"].tolist() == [[-100, 2]]
