"""Continual pre-training end to end: tiny-llama, a user's own model folder, the CLI, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("datasets")

import typer
from transformers import AutoModelForCausalLM, AutoTokenizer

from lifelong.cli.llm import perplexity as perplexity_command
from lifelong.cli.llm import pretrain as pretrain_command
from lifelong.errors import LifelongError
from lifelong.llm.corpora import load_corpus
from lifelong.llm.data import pack
from lifelong.llm.models import load_model, resolve_model_folder, vocab_size
from lifelong.llm.pretrain import TrainSettings, continual_pretrain, forgetting_summary, run_pretrain

TINY = "tiny-llama:vocab_size=512,hidden=32,layers=1,heads=2"


def fast() -> TrainSettings:
    return TrainSettings(block_size=16, batch_size=8, eval_blocks=4, learning_rate=3e-3)


pytestmark = pytest.mark.usefixtures("llm_cache")  # tiny-llama builds once, in a test folder


@pytest.fixture(scope="module")
def corpora(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("corpora")
    prose = load_corpus("prose").documents[:20]  # about 100 blocks of 16 tokens: a few steps per task
    code = load_corpus("code").documents[:4]
    (folder / "prose.txt").write_text("\n".join(prose), encoding="utf-8")
    (folder / "code.jsonl").write_text(
        "\n".join(json.dumps({"text": c[:800]}) for c in code), encoding="utf-8"
    )
    return folder / "prose.txt", folder / "code.jsonl"


@pytest.fixture(scope="module")
def user_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A user's own model folder: a GPT-2 (not a Llama) with its own BPE tokenizer, saved the usual way."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.train_from_iterator(
        load_corpus("prose").documents[:200],
        trainers.BpeTrainer(
            vocab_size=400, special_tokens=["</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="</s>")
    torch.manual_seed(0)
    model = GPT2LMHeadModel(
        GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_embd=32, n_layer=1, n_head=2)
    )
    folder = tmp_path_factory.mktemp("user") / "my-gpt"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def one_line(err: pytest.ExceptionInfo[LifelongError]) -> str:
    text = str(err.value)
    assert text and "\n" not in text
    return text


def cli(*argv: str) -> tuple[int, str]:
    """The two commands mounted as `lifelong.cli.app` will mount them, run the way `lifelong.cli.app.main` runs them."""
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(pretrain_command)
    app.command()(perplexity_command)
    try:
        app(list(argv), standalone_mode=False)
    except LifelongError as err:
        return 2, str(err)
    return 0, ""


# ---- models ---------------------------------------------------------------------------------------------


def test_tiny_llama_is_a_normal_hugging_face_folder() -> None:
    folder = resolve_model_folder(TINY)
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModelForCausalLM.from_pretrained(str(folder))
    assert len(tokenizer) == 512 and model.config.hidden_size == 32
    assert tokenizer.decode(tokenizer("def f(x):\n    return x")["input_ids"]) == "def f(x):\n    return x"
    assert resolve_model_folder(TINY) == folder  # cached, not rebuilt


def test_bad_model_folders_get_one_clear_line(tmp_path: Path, user_model: Path) -> None:
    no_tokenizer = tmp_path / "no-tokenizer"
    no_tokenizer.mkdir()
    for name in ("config.json", "model.safetensors"):
        (no_tokenizer / name).write_bytes((user_model / name).read_bytes())
    (tmp_path / "empty").mkdir()
    cases = {
        no_tokenizer: "has no tokenizer",
        tmp_path / "empty": "not a model folder (no config.json)",
        tmp_path / "missing": "does not exist",
    }
    for folder, expected in cases.items():
        with pytest.raises(LifelongError) as err:
            load_model(folder)
        assert expected in one_line(err)
    with pytest.raises(LifelongError) as err:
        load_model("tiny-llama:depth=3")
    assert "no option 'depth'" in one_line(err)


# ---- continual_pretrain ---------------------------------------------------------------------------------


def test_continual_pretrain_writes_model_perplexities_and_results(
    tmp_path: Path, corpora: tuple[Path, Path]
) -> None:
    prose, code = corpora
    settings = fast()
    result = continual_pretrain(
        TINY,
        code,
        tmp_path / "cpt",
        replay_corpus=prose,
        replay_ratio=0.2,
        strategies="ewc+lwf",
        settings=settings,
    )
    assert set(result.before) == set(result.after) == {"prose", "code"}
    assert result.after["code"] < result.before["code"]  # it learned the new domain
    saved = tmp_path / "cpt" / "model"
    assert (saved / "model.safetensors").is_file() and AutoTokenizer.from_pretrained(str(saved))
    doc = json.loads((tmp_path / "cpt" / "results.json").read_text())
    assert doc["higher_is_better"] is False and doc["tasks"] == ["prose", "code"]
    (record,) = doc["results"]
    assert record["strategy"] == "replay:ratio=0.2+ewc+lwf"
    assert record["accuracy_matrix"][1] == [result.after["prose"], result.after["code"]]
    assert record["metrics"]["forgetting"] == pytest.approx(result.after["prose"] - result.before["prose"])


def test_a_users_own_model_folder_works_like_tiny_llama(
    tmp_path: Path, corpora: tuple[Path, Path], user_model: Path
) -> None:
    """Acceptance 4: the same stream, strategies and outputs from a saved GPT-2 folder."""
    prose, code = corpora
    document = run_pretrain(
        model=str(user_model),
        corpora=[prose, code],
        compositions=["naive", "replay+ewc", "lwf"],
        out=tmp_path / "run",
        settings=fast(),
    )
    assert document["tasks"] == ["prose", "code"] and not document["config"]["shared_first_task"]
    assert [r["strategy"] for r in document["results"]] == ["naive", "replay:ratio=0.2+ewc", "lwf"]
    for record in document["results"]:
        assert len(record["accuracy_matrix"]) == 2 and record["metrics"]["bwt"] is not None
    checkpoint = tmp_path / "run" / "checkpoints" / "1-replay_ratio=0.2+ewc" / "task-1"
    assert AutoModelForCausalLM.from_pretrained(str(checkpoint)).config.model_type == "gpt2"
    assert (tmp_path / "run" / "report.html").is_file()


def test_tiny_llama_stream_shares_the_first_domain(tmp_path: Path, corpora: tuple[Path, Path]) -> None:
    prose, code = corpora
    document = run_pretrain(
        model=TINY,
        corpora=[prose, code],
        compositions=["naive", "replay:ratio=0.3"],
        out=tmp_path / "run",
        settings=fast(),
    )
    naive, replay = document["results"]
    assert naive["accuracy_matrix"][0] == replay["accuracy_matrix"][0]  # one shared first domain
    assert (tmp_path / "run" / "checkpoints" / "shared" / "task-0" / "perplexity.json").is_file()
    rows = forgetting_summary(document)
    assert rows[1]["last_vs_naive"] is not None
    # naive's cut against itself is 0, or undefined when this tiny run did not forget at all
    assert rows[0]["cut"] is None or rows[0]["cut"] == pytest.approx(0.0)


# ---- the commands ---------------------------------------------------------------------------------------


def test_pretrain_and_perplexity_commands(
    tmp_path: Path, corpora: tuple[Path, Path], user_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prose, code = corpora
    out = tmp_path / "run"
    argv = [
        "--model",
        str(user_model),
        "--corpus",
        str(prose),
        "--corpus",
        str(code),
        "-s",
        "naive",
        "-s",
        "replay",
    ]
    fast = [
        "--block-size",
        "16",
        "--batch-size",
        "4",
        "--eval-blocks",
        "4",
        "--lr",
        "3e-3",
        "--out",
        str(out),
    ]
    assert cli("pretrain", *argv, *fast) == (0, "")
    printed = capsys.readouterr().out
    assert "forgetting" in printed and "old-domain" in printed and "results written" in printed
    code_, message = cli("pretrain", *argv, *fast)
    assert code_ == 2 and "already holds a finished run" in message

    checkpoint = out / "checkpoints" / "1-replay_ratio=0.2" / "task-1"
    score = ["--model", str(checkpoint), "--data", str(prose), "--split", "heldout", "--max-blocks", "4"]
    assert cli("perplexity", *score) == (0, "")  # --max-blocks 4 as the run's --eval-blocks 4
    table = capsys.readouterr().out
    assert "perplexity" in table and "prose" in table
    saved = json.loads((checkpoint / "perplexity.json").read_text())
    assert f"{saved['after']['prose']:.2f}" in table  # the same number the run recorded


def test_commands_refuse_bad_input_with_one_line(
    tmp_path: Path, corpora: tuple[Path, Path], user_model: Path
) -> None:
    """Acceptance 5: empty corpus, binary file, replay ratio outside [0, 1), model folder without tokenizer."""
    prose, _ = corpora
    (tmp_path / "empty.txt").write_text("", encoding="utf-8")
    (tmp_path / "image.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" * 20)
    no_tok = tmp_path / "no-tok"
    no_tok.mkdir()
    (no_tok / "config.json").write_bytes((user_model / "config.json").read_bytes())
    base = ["pretrain", "--model", str(user_model), "--out", str(tmp_path / "run")]
    cases: list[tuple[list[str], str]] = [
        ([*base, "--corpus", str(tmp_path / "empty.txt")], "has no text"),
        ([*base, "--corpus", str(tmp_path / "image.txt")], "not a text file"),
        ([*base, "--corpus", str(prose), "--replay-ratio", "1"], "must be in [0, 1)"),
        ([*base, "--corpus", str(prose), "--replay-ratio", "-0.2"], "must be in [0, 1)"),
        ([*base, "-s", "ewc", "--replay-ratio", "0.3"], "add it, e.g. -s replay+ewc"),
        (["pretrain", "--model", str(no_tok), "--corpus", str(prose)], "has no tokenizer"),
        (["perplexity", "--model", str(no_tok)], "has no tokenizer"),
        ([*base, "-s", "agem"], "no causal-LM form"),
        ([*base, "--corpus", str(prose), "--precision", "fp8"], "unknown precision 'fp8'"),
        ([*base, "--corpus", str(prose), "--precision", "fp16", "--device", "cpu"], "try bf16"),
    ]
    for argv, expected in cases:
        status, message = cli(*argv)
        assert status == 2 and expected in message and "\n" not in message, (argv, message)
    assert not (tmp_path / "run").exists()  # nothing half-written


def test_pack_of_user_tokenizer_respects_its_vocab(user_model: Path, corpora: tuple[Path, Path]) -> None:
    model, tokenizer = load_model(user_model)
    packed = pack(load_corpus(corpora[0]), tokenizer, 16, vocab_size(model))
    assert int(packed.train.max()) < len(tokenizer)


def test_a_peft_adapter_folder_loads_on_its_local_base(tmp_path: Path) -> None:
    peft = pytest.importorskip("peft")
    base_folder = resolve_model_folder(TINY)
    base, tokenizer = load_model(base_folder)
    adapted = peft.get_peft_model(base, peft.LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    adapted.save_pretrained(tmp_path / "adapter")
    tokenizer.save_pretrained(tmp_path / "adapter")
    model, _ = load_model(tmp_path / "adapter")
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
