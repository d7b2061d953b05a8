"""AdapterLibrary: per-task PEFT LoRA adapters trained, stored, routed, merged and exported.

Every model is tiny and built from a config (nothing is downloaded); text is encoded byte by byte
(id = byte + 3; 0 pad, 1 start), so no tokenizer is needed except in the CLI tests, which train one.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import pytest
import torch

pytest.importorskip("peft")
pytest.importorskip("transformers")

from peft import LoraConfig
from safetensors.torch import load_file, save_file
from tiny_llama import tiny_llama
from transformers import (
    AutoModelForCausalLM,
    BertConfig,
    BertForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaForCausalLM,
)

from lifelong.adapters import (
    CONFIG_FILE,
    META_FILE,
    WEIGHTS_FILE,
    AdapterLibrary,
    config_hash,
    list_adapters,
)
from lifelong.adapters.routing import RADIUS_MARGIN, PromptSignature, fit_signature, route_by_signature
from lifelong.errors import LifelongError

VOCAB = 260


def ids(text: str) -> list[int]:
    return [1] + [b + 3 for b in text.encode()]


def llama(seed: int = 0, hidden: int = 32, vocab: int = VOCAB) -> LlamaForCausalLM:
    """Two layers; the same seed gives the same weights, so two instances are the same base model."""
    special = {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}
    return tiny_llama(vocab, hidden, seed, layers=2, heads=4, max_position_embeddings=128, **special).eval()


# Three domains with disjoint alphabets: arithmetic, lowercase prose, DNA.
WORDS = [
    "the",
    "cat",
    "sat",
    "on",
    "a",
    "mat",
    "and",
    "then",
    "ran",
    "to",
    "see",
    "her",
    "dog",
    "who",
    "was",
    "very",
    "happy",
]


def arith(rng: random.Random) -> str:
    a, b = rng.randint(0, 99), rng.randint(0, 99)
    return f"{a}+{b}={a + b};{b}+{a}={a + b}"


def prose(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(7))


def dna(rng: random.Random) -> str:
    return "".join(rng.choice("ACGT") for _ in range(28))


DOMAINS: dict[str, Callable[[random.Random], str]] = {"arith": arith, "prose": prose, "dna": dna}


def domain_data(n: int, seed: int) -> dict[str, list[list[int]]]:
    rng = random.Random(seed)
    return {name: [ids(make(rng)) for _ in range(n)] for name, make in DOMAINS.items()}


TRAIN, TEST = domain_data(48, seed=1), domain_data(30, seed=2)
FAST: dict[str, Any] = {"epochs": 3, "lr": 3e-3, "batch_size": 8}


def snapshot(library: AdapterLibrary) -> tuple[dict[str, str], set[str]]:
    """Every file under root with its hash, and the adapters held in memory."""
    files = {
        str(p.relative_to(library.root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(library.root.rglob("*"))
        if p.is_file()
    }
    loaded = set(library.peft_model.peft_config) if library.peft_model is not None else set()
    return files, loaded


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> AdapterLibrary:
    """Three causal-LM adapters trained in a row, one per domain, scored right after each training."""
    library = AdapterLibrary(llama(), tmp_path_factory.mktemp("adapters") / "lib")
    for task in DOMAINS:
        library.train(task, TRAIN[task], eval_dataset=TEST[task], **FAST)
    return library


def fresh(root: Path, **kwargs: object) -> AdapterLibrary:
    """A second library on an identical base (same seed) reading the same folder."""
    return AdapterLibrary(llama(), root, **kwargs)  # type: ignore[arg-type]


def copy_library(trained: AdapterLibrary, tmp_path: Path) -> AdapterLibrary:
    root = tmp_path / "lib"
    shutil.copytree(trained.root, root)
    return fresh(root)


# ---- acceptance 1: zero forgetting by construction -------------------------------------------------------


def test_each_adapter_keeps_its_score_after_later_tasks(trained: AdapterLibrary) -> None:
    for task in DOMAINS:
        right_after = trained.info(task).eval
        assert right_after is not None and right_after["metric"] == "loss" and right_after["split"] == "eval"
        after_all = trained.evaluate(task, TEST[task])
        assert abs(after_all - right_after["value"]) <= 1e-6, task
    # ... and the same from disk, in a new library on an identical base.
    reopened = fresh(trained.root)
    for task in DOMAINS:
        assert abs(reopened.evaluate(task, TEST[task]) - trained.info(task).eval["value"]) <= 1e-6  # type: ignore[index]


def test_the_base_never_changes(trained: AdapterLibrary) -> None:
    untouched = llama()
    peft = trained.load("arith")
    assert not any(p.requires_grad for p in peft.parameters()), "loaded adapters are frozen"
    x = torch.tensor([ids("12+7=19")])
    with peft.disable_adapter(), torch.no_grad():
        assert torch.equal(peft(input_ids=x).logits, untouched(input_ids=x).logits)


def test_classifier_adapters_keep_their_own_heads(tmp_path: Path) -> None:
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
    )
    config.num_labels = 6
    library = AdapterLibrary(BertForSequenceClassification(config).eval(), tmp_path / "cls")
    rng = random.Random(0)

    def examples(labels: tuple[int, int], n: int) -> list[dict[str, object]]:
        # The label's marker token hidden among random tokens.
        rows = []
        for _ in range(n):
            label = rng.choice(labels)
            tokens = [rng.randint(20, 63) for _ in range(10)]
            tokens[rng.randint(0, 9)] = 10 + label
            rows.append({"input_ids": [1, *tokens], "label": label})
        return rows

    tasks = {"pairs01": (0, 1), "pairs23": (2, 3), "pairs45": (4, 5)}
    held_out = {t: examples(labels, 24) for t, labels in tasks.items()}
    for task, labels in tasks.items():
        library.train(task, examples(labels, 48), eval_dataset=held_out[task], epochs=4, lr=5e-3)
    for task in tasks:
        record = library.info(task)
        assert record.eval is not None and record.eval["metric"] == "accuracy"
        assert abs(library.evaluate(task, held_out[task]) - record.eval["value"]) <= 1e-6
        saved = load_file(str(library.root / task / WEIGHTS_FILE))
        assert any("classifier" in key for key in saved), (
            "the head is saved with the adapter (modules_to_save)"
        )
    routed = library.route([row["input_ids"] for row in held_out["pairs23"]])
    assert routed.metric == "confidence" and routed.predictions is not None
    with pytest.raises(LifelongError, match="heads"):
        library.merge(["pairs01", "pairs23"])


# ---- what is saved -------------------------------------------------------------------------------------


def test_saved_folder_and_record(trained: AdapterLibrary) -> None:
    folder = trained.root / "dna"
    assert sorted(p.name for p in folder.iterdir()) == sorted([WEIGHTS_FILE, CONFIG_FILE, META_FILE])
    meta = json.loads((folder / META_FILE).read_text())
    assert meta["task"] == "dna" and meta["kind"] == "trained" and meta["data_size"] == 48
    assert meta["base"]["config_hash"] == trained.base_hash
    assert meta["training"]["epochs"] == 3 and meta["lora"]["r"] == 16 and meta["lora"]["alpha"] == 32
    assert meta["lora"]["target_modules"] == ["q_proj", "v_proj"]
    assert meta["weights_sha256"] == hashlib.sha256((folder / WEIGHTS_FILE).read_bytes()).hexdigest()
    assert meta["created"].endswith("Z")
    assert not [p for p in trained.root.iterdir() if p.name.startswith(".")], "no staging folder left behind"
    assert [i.task for i in trained.list()] == sorted(DOMAINS)
    assert [i.task for i in list_adapters(trained.root)] == sorted(DOMAINS)


def test_config_hash_survives_save_and_reload(tmp_path: Path) -> None:
    model = llama()
    model.save_pretrained(tmp_path / "base")
    from_folder = AdapterLibrary(tmp_path / "base", tmp_path / "lib")
    assert (
        from_folder.base_hash
        == config_hash(model.config)
        == AdapterLibrary(model, tmp_path / "lib").base_hash
    )
    assert from_folder.kind == "causal-lm"
    assert config_hash(llama(hidden=48).config) != from_folder.base_hash


def test_default_targets_by_architecture(tmp_path: Path) -> None:
    gpt2 = GPT2LMHeadModel(
        GPT2Config(vocab_size=64, n_embd=32, n_layer=1, n_head=4, bos_token_id=1, eos_token_id=2)
    )
    bert = BertForSequenceClassification(
        BertConfig(
            vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64
        )
    )

    def targets(model: Any) -> set[str]:
        return set(cast(list[str], AdapterLibrary(model, tmp_path).default_lora().target_modules))

    assert targets(llama()) == {"q_proj", "v_proj"}
    assert targets(gpt2) == {"c_attn"}
    assert targets(bert) == {"query", "value"}
    config = AdapterLibrary(llama(), tmp_path).default_lora()
    assert (config.r, config.lora_alpha, config.lora_dropout) == (16, 32, 0.05)


def test_a_users_lora_config_wins(tmp_path: Path) -> None:
    library = AdapterLibrary(llama(), tmp_path / "lib")
    user = LoraConfig(r=2, lora_alpha=4, target_modules=["k_proj"])
    info = library.train("user", TRAIN["dna"][:8], user, epochs=1)
    assert (info.r, info.alpha, info.target_modules) == (2, 4, ["k_proj"])
    with pytest.raises(LifelongError, match="unknown training argument"):
        library.train("other", TRAIN["dna"][:8], epochz=1)
    with pytest.raises(LifelongError, match="already exists"):
        library.train("user", TRAIN["dna"][:8], epochs=1)


# ---- acceptance 2: merging -----------------------------------------------------------------------------


def by_hand(parts: list[tuple[Path, float]], combine: str) -> LlamaForCausalLM:
    """The base with merged updates applied straight to its weights, from the saved files alone.

    ``exact``: W + Σ w·s·B·A. ``linear``: W + (Σ √(w·s)·B)(Σ √(w·s)·A), PEFT's linear merge.
    """
    model = llama()
    updates: dict[str, list[tuple[float, torch.Tensor, torch.Tensor]]] = {}
    for folder, weight in parts:
        config = json.loads((folder / CONFIG_FILE).read_text())
        scale = config["lora_alpha"] / config["r"]
        tensors = load_file(str(folder / WEIGHTS_FILE))
        for key, a in tensors.items():
            if ".lora_A." in key:
                module = key.removeprefix("base_model.model.").split(".lora_A.")[0]
                b = tensors[key.replace(".lora_A.", ".lora_B.")]
                updates.setdefault(module, []).append((weight * scale, b, a))
    with torch.no_grad():
        for module, terms in updates.items():
            matrix = cast(torch.Tensor, model.get_submodule(module).weight)
            if combine == "exact":
                for c, b, a in terms:
                    matrix += c * b @ a
            else:
                b_sum = torch.stack([c**0.5 * b for c, b, _ in terms]).sum(dim=0)
                a_sum = torch.stack([c**0.5 * a for c, _, a in terms]).sum(dim=0)
                matrix += b_sum @ a_sum
    return model


PROBE = torch.tensor([ids("12+7=19;the cat sat ACGT")])


def test_cat_merge_is_the_exact_weighted_sum_of_updates(tmp_path: Path) -> None:
    library = AdapterLibrary(llama(), tmp_path / "lib")
    library.train("rank4", TRAIN["arith"], {"r": 4, "lora_alpha": 8}, **FAST)
    library.train("rank8", TRAIN["prose"], {"r": 8, "lora_alpha": 32}, **FAST)
    info = library.merge(["rank4", "rank8"], [0.7, 0.4], method="cat", name="both")
    assert info.kind == "merged" and info.parents == ["rank4", "rank8"] and info.weights == [0.7, 0.4]
    assert info.r == 12, "cat stacks the factors: the merged rank is the sum of the ranks"
    with torch.no_grad():
        merged = library.load("both")(input_ids=PROBE).logits
        expected = by_hand([(library.root / "rank4", 0.7), (library.root / "rank8", 0.4)], "exact")(
            input_ids=PROBE
        ).logits
        base = llama()(input_ids=PROBE).logits
    assert (expected - base).abs().max() > 1e-3, (
        "the adapters must change the output for this test to mean anything"
    )
    assert (merged - expected).abs().max() <= 1e-5
    # Saved like any other adapter, and it reloads to the same output.
    with torch.no_grad():
        reloaded = fresh(library.root).load("both")(input_ids=PROBE).logits
    assert (reloaded - merged).abs().max() <= 1e-6


def test_linear_merge_is_not_the_sum_of_updates(tmp_path: Path) -> None:
    """Why `cat` is the default: PEFT's `linear` (like the seed's separate averaging of A and B) sums
    the A and B factors separately, so B'A' = Σ_i Σ_j √(c_i c_j) B_i A_j carries cross terms B_i A_j
    (i ≠ j) that no adapter learned: B1A1 + B2A2 ≠ (B1 + B2)(A1 + A2)."""
    library = AdapterLibrary(llama(), tmp_path / "lib")
    library.train("one", TRAIN["arith"], {"r": 4, "lora_alpha": 8}, **FAST)
    library.train("two", TRAIN["dna"], {"r": 4, "lora_alpha": 8}, **FAST)
    parts = [(library.root / "one", 0.5), (library.root / "two", 0.5)]
    library.merge(["one", "two"], method="linear", name="lin")
    library.merge(["one", "two"], method="cat", name="exact")
    with torch.no_grad():
        linear = library.load("lin")(input_ids=PROBE).logits
        exact = library.load("exact")(input_ids=PROBE).logits
        cross_terms = by_hand(parts, "linear")(input_ids=PROBE).logits
        exact_by_hand = by_hand(parts, "exact")(input_ids=PROBE).logits
    assert (exact - exact_by_hand).abs().max() <= 1e-5
    assert (linear - cross_terms).abs().max() <= 1e-5, "linear is exactly the cross-term formula"
    assert (linear - exact).abs().max() > 100 * 1e-5, "... which is not the weighted sum of the updates"


@pytest.mark.parametrize("method", ["svd", "ties", "dare_ties", "dare_linear", "magnitude_prune"])
def test_every_merge_method_makes_a_saved_active_adapter(
    trained: AdapterLibrary, tmp_path: Path, method: str
) -> None:
    library = copy_library(trained, tmp_path)
    info = library.merge(["arith", "dna"], [0.6, 0.4], method=method)  # type: ignore[arg-type]
    assert info.task == f"arith-dna-{method}" and info.ok and info.method == method
    meta = json.loads((library.root / info.task / META_FILE).read_text())
    assert meta["parents"] == ["arith", "dna"] and meta["weights"] == [0.6, 0.4]
    assert library.peft_model is not None and library.peft_model.active_adapter == info.task


# ---- acceptance 3: routing -----------------------------------------------------------------------------


def test_routing_picks_the_right_adapter_on_distinct_domains(trained: AdapterLibrary) -> None:
    examples = [x for task in DOMAINS for x in TEST[task]]
    truth = [task for task in DOMAINS for _ in TEST[task]]
    result = trained.route(examples, batch_size=48)
    accuracy = sum(c == t for c, t in zip(result.choices, truth, strict=True)) / len(truth)
    assert accuracy >= 0.95, accuracy
    assert result.metric == "loss" and result.all_scores.shape == (len(truth), 3)
    assert result.scores == result.all_scores.min(dim=1).values.tolist()


def test_routing_by_prompts_sends_what_no_adapter_trained_on_to_the_base(trained: AdapterLibrary) -> None:
    """Each adapter keeps where its training examples sat in the base's hidden space; an example of a
    domain none of the candidates trained on falls outside all of them and goes to the bare base."""
    examples = TEST["arith"] + TEST["dna"] + TEST["prose"]
    truth = ["arith"] * len(TEST["arith"]) + ["dna"] * len(TEST["dna"]) + ["__base__"] * len(TEST["prose"])
    result = trained.route(examples, ["arith", "dna"], by="prompts")
    accuracy = sum(c == t for c, t in zip(result.choices, truth, strict=True)) / len(truth)
    assert accuracy >= 0.9, accuracy
    assert result.metric == "distance" and result.tasks == ["arith", "dna", "__base__"]
    assert result.all_scores.shape == (len(truth), 3) and result.all_scores[:, 2].eq(1.0).all()
    with pytest.raises(LifelongError, match="route classifiers by loss"):
        AdapterLibrary(trained.base, trained.root, kind="classification", num_labels=2).route(
            examples[:1], ["arith"], by="prompts"
        )


def test_a_prompt_signature_reaches_as_far_as_its_training_prompts_and_a_margin() -> None:
    east, north = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0])
    spread = torch.nn.functional.normalize(torch.stack([east + 0.1 * north, east - 0.1 * north]), dim=1)
    signature = fit_signature(spread)
    assert torch.allclose(signature.centroid, east)
    farthest = float(1 - spread[0] @ east)
    assert signature.radius == pytest.approx(farthest * RADIUS_MARGIN)
    again = PromptSignature.from_json(json.loads(json.dumps(signature.to_json())))
    assert torch.equal(again.centroid, signature.centroid) and again.radius == signature.radius
    queries = torch.nn.functional.normalize(torch.stack([east + 0.12 * north, north, east + north]), dim=1)
    result = route_by_signature(queries, {"east": signature, "north": fit_signature(north[None])})
    # Inside east's radius; exactly north; between the two, outside both: the bare base.
    assert result.choices == ["east", "north", "__base__"]


def test_mixed_batch_sends_each_example_through_its_own_adapter(trained: AdapterLibrary) -> None:
    rows = [TEST["arith"][0][:12], TEST["prose"][0][:12], TEST["dna"][0][:12]]
    names = ["arith", "prose", "__base__"]
    mixed = trained.logits(rows, names)
    for i, name in enumerate(names):
        alone = trained.logits([rows[i]], name)
        assert (mixed[i] - alone[0]).abs().max() <= 1e-5


def test_adapters_peft_cannot_mix_in_one_batch_still_route(tmp_path: Path) -> None:
    """DoRA adapters refuse PEFT's per-sample adapter_names; the library then runs one pass per adapter."""
    library = AdapterLibrary(llama(), tmp_path / "lib")
    for task in ("arith", "dna"):
        library.train(task, TRAIN[task], {"r": 4, "use_dora": True}, **FAST)
    result = library.route(TEST["arith"][:5] + TEST["dna"][:5])
    assert result.choices == ["arith"] * 5 + ["dna"] * 5
    rows = [TEST["arith"][0][:10], TEST["dna"][0][:10]]
    mixed = library.logits(rows, ["dna", "__base__"])
    assert (mixed[0] - library.logits([rows[0]], "dna")[0]).abs().max() <= 1e-5
    assert (mixed[1] - library.logits([rows[1]], "__base__")[0]).abs().max() <= 1e-5


# ---- export and delete ---------------------------------------------------------------------------------


def test_merge_and_unload_writes_a_standalone_model(trained: AdapterLibrary, tmp_path: Path) -> None:
    out = trained.merge_and_unload("prose", tmp_path / "export")
    plain = AutoModelForCausalLM.from_pretrained(str(out), local_files_only=True).eval()
    assert not any("lora" in name for name, _ in plain.named_parameters())
    with torch.no_grad():
        expected = trained.load("prose")(input_ids=PROBE).logits
        assert (plain(input_ids=PROBE).logits - expected).abs().max() <= 1e-5
    assert trained.peft_model is not None and "prose" in trained.peft_model.peft_config, "library untouched"
    with pytest.raises(LifelongError, match="not empty"):
        trained.merge_and_unload("prose", out)


def test_export_never_replaces_the_library_an_adapter_or_the_base(
    trained: AdapterLibrary, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # issue 15, case 9: `adapters export --overwrite --out` replaced the library root, an adapter's
    # folder or the base model's folder wholesale; an existing file or '.' gave a traceback
    base = tmp_path / "base"
    llama().save_pretrained(base)
    shutil.copytree(trained.root, tmp_path / "lib")
    library = AdapterLibrary(base, tmp_path / "lib")
    base_files = sorted(p.name for p in base.iterdir())
    (tmp_path / "afile").write_text("mine")
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    for out, phrase in [
        (library.root, "is the adapter library"),
        (tmp_path, "holds the adapter library"),
        (library.root / "arith", "is inside the adapter library"),
        (library.root / "new", "is inside the adapter library"),
        (base, "is the base model's folder"),
        (base / "sub", "is inside the base model's folder"),
        (tmp_path / "afile", "is a file"),
        (Path("."), "names no new folder"),
        (tmp_path / "cwd", "is the current folder"),
    ]:
        refused(library, phrase, lambda out=out: library.merge_and_unload("arith", out, overwrite=True))
    assert sorted(p.name for p in base.iterdir()) == base_files
    assert (tmp_path / "afile").read_text() == "mine"
    default = library.merge_and_unload("arith", overwrite=True)
    assert default == library.root / "_exports" / "arith" and (default / "config.json").is_file()


def test_delete_removes_the_adapter_from_disk_and_memory(trained: AdapterLibrary, tmp_path: Path) -> None:
    library = copy_library(trained, tmp_path)
    library.load("dna")
    library.delete("dna")
    assert not (library.root / "dna").exists() and "dna" not in library.tasks()
    assert library.peft_model is not None and "dna" not in library.peft_model.peft_config
    with pytest.raises(LifelongError, match="unknown task 'dna'"):
        library.delete("dna")


# ---- acceptance 5: bad input ---------------------------------------------------------------------------


def refused(library: AdapterLibrary, match: str, action: Callable[[], object]) -> str:
    """The action fails with one clear line and leaves the library (disk and memory) as it was."""
    before = snapshot(library)
    with pytest.raises(LifelongError, match=match) as caught:
        action()
    message = str(caught.value)
    assert "\n" not in message
    assert snapshot(library) == before
    return message


def test_unknown_task(trained: AdapterLibrary, tmp_path: Path) -> None:
    library = copy_library(trained, tmp_path)
    library.load("arith")
    message = refused(library, "unknown task 'nope'", lambda: library.load("nope"))
    assert "arith, dna, prose" in message
    refused(library, "unknown task", lambda: library.merge(["arith", "nope"]))
    refused(library, "unknown task", lambda: library.route(TEST["dna"][:2], ["nope"]))
    refused(library, "not allowed", lambda: library.load("../arith"))


@pytest.mark.parametrize("damage", ["corrupt", "truncate", "missing"])
def test_damaged_weights_file(trained: AdapterLibrary, tmp_path: Path, damage: str) -> None:
    library = copy_library(trained, tmp_path)
    library.load("prose")
    weights = library.root / "dna" / WEIGHTS_FILE
    data = weights.read_bytes()
    if damage == "corrupt":
        weights.write_bytes(data[:-64] + bytes(64))
    elif damage == "truncate":
        weights.write_bytes(data[: len(data) // 2])
    else:
        weights.unlink()
    match = "has no adapter_model" if damage == "missing" else "does not match the checksum"
    refused(library, match, lambda: library.load("dna"))
    assert not library.info("dna").ok  # info and list say what the load would


def test_unreadable_weights_file_with_a_matching_checksum(trained: AdapterLibrary, tmp_path: Path) -> None:
    library = copy_library(trained, tmp_path)
    weights = library.root / "dna" / WEIGHTS_FILE
    weights.write_bytes(b"not a safetensors file")
    meta_path = library.root / "dna" / META_FILE
    meta = json.loads(meta_path.read_text())
    meta["weights_sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()
    meta_path.write_text(json.dumps(meta))
    refused(library, "cannot be read", lambda: library.load("dna"))


@pytest.mark.parametrize("checksum", ["missing", "empty"])
def test_weights_without_a_checksum_are_refused(
    trained: AdapterLibrary, tmp_path: Path, checksum: str
) -> None:
    # issue 15, case 3: with no weights_sha256, or "", changed weights loaded and exported with exit 0
    library = copy_library(trained, tmp_path)
    weights = library.root / "dna" / WEIGHTS_FILE
    tensors = {name: torch.full_like(value, 7.0) for name, value in load_file(weights).items()}
    save_file(tensors, weights)
    meta_path = library.root / "dna" / META_FILE
    meta = json.loads(meta_path.read_text())
    if checksum == "missing":
        del meta["weights_sha256"]
    else:
        meta["weights_sha256"] = ""
    meta_path.write_text(json.dumps(meta))
    export = tmp_path / "export"
    refused(library, "no weights_sha256", lambda: library.load("dna"))
    refused(library, "no weights_sha256", lambda: library.merge(["arith", "dna"]))
    refused(library, "no weights_sha256", lambda: library.merge_and_unload("dna", export))
    assert not export.exists()
    assert "no weights_sha256" in str(library.info("dna").problem)


def test_adapter_of_another_base_model(trained: AdapterLibrary, tmp_path: Path) -> None:
    other = AdapterLibrary(llama(hidden=48), tmp_path / "other")
    shutil.copytree(trained.root / "arith", other.root / "arith")
    message = refused(other, "trained on base model", lambda: other.load("arith"))
    assert trained.base_hash in message and other.base_hash in message
    assert not other.info("arith").ok
    # Even with its record edited to claim this base, the weights do not fit and nothing is kept.
    meta_path = other.root / "arith" / META_FILE
    meta = json.loads(meta_path.read_text())
    meta["base"]["config_hash"] = other.base_hash
    meta_path.write_text(json.dumps(meta))
    refused(other, "does not fit", lambda: other.load("arith"))


def test_merge_refuses_adapters_of_different_bases(trained: AdapterLibrary, tmp_path: Path) -> None:
    library = copy_library(trained, tmp_path)
    meta_path = library.root / "dna" / META_FILE
    meta = json.loads(meta_path.read_text())
    meta["base"].update(config_hash="0123456789abcdef", name="some/other-model")
    meta_path.write_text(json.dumps(meta))
    refused(library, "different base models", lambda: library.merge(["arith", "dna"]))


def test_mismatched_ranks(tmp_path: Path) -> None:
    library = AdapterLibrary(llama(), tmp_path / "lib")
    library.train("small", TRAIN["arith"][:8], {"r": 2}, epochs=1)
    library.train("large", TRAIN["dna"][:8], {"r": 4}, epochs=1)
    for method in ("linear", "ties", "dare_linear", "dare_ties", "magnitude_prune"):

        def merge(method: Any = method) -> object:
            return library.merge(["small", "large"], method=method)

        assert "small r=2, large r=4" in refused(library, "needs equal ranks", merge)
    assert library.merge(["small", "large"], method="cat").r == 6  # cat takes any ranks


def test_bad_merge_arguments(trained: AdapterLibrary, tmp_path: Path) -> None:
    library = copy_library(trained, tmp_path)
    refused(library, "unknown merge method", lambda: library.merge(["arith", "dna"], method="average"))  # type: ignore[arg-type]
    refused(library, "one finite weight per task", lambda: library.merge(["arith", "dna"], [1.0]))
    refused(library, "already exists", lambda: library.merge(["arith", "dna"], name="prose"))


def test_bad_data(tmp_path: Path) -> None:
    library = AdapterLibrary(llama(), tmp_path / "lib")
    refused(library, "empty", lambda: library.train("t", []))
    refused(library, "outside the base model's vocabulary", lambda: library.train("t", [[1, 2, 999]]))
    refused(library, "no tokenizer", lambda: library.train("t", ["plain text"]))


# ---- the command line ----------------------------------------------------------------------------------


@pytest.fixture
def adapters_cli(cli: Callable[..., tuple[int, str, str]]) -> Callable[..., tuple[int, str, str]]:
    """The real `lifelong` entry point with the `adapters` group mounted (a no-op once cli.py mounts it)."""
    from lifelong.cli.adapters import adapters_app
    from lifelong.cli.app import app

    if not any(group.name == "adapters" for group in app.registered_groups):
        app.add_typer(adapters_app, name="adapters")
    return cli


@pytest.fixture(scope="module")
def base_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny Llama with a byte-level BPE tokenizer trained here, in one folder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    rng = random.Random(0)
    tokenizer.train_from_iterator([make(rng) for make in DOMAINS.values() for _ in range(50)], trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    )
    folder = tmp_path_factory.mktemp("base") / "tiny-llama"
    llama(vocab=len(fast)).save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


def test_cli_train_list_route_merge_export_delete(
    adapters_cli: Callable[..., tuple[int, str, str]], base_folder: Path, tmp_path: Path
) -> None:
    root = tmp_path / "adapters"
    rng = random.Random(3)
    for task in ("arith", "dna"):
        data = tmp_path / f"{task}.jsonl"
        data.write_text("".join(json.dumps({"text": DOMAINS[task](rng)}) + "\n" for _ in range(40)))
        code, out, err = adapters_cli(
            "adapters", "train", task, "--data", str(data), "--base", str(base_folder), "--root", str(root),
            "--epochs", "3", "--lr", "3e-3", "--r", "4", "--json",
        )  # fmt: skip
        assert code == 0, err
        assert json.loads(out)["task"] == task
    code, out, _ = adapters_cli("adapters", "list", "--root", str(root), "--json")
    assert code == 0 and [row["task"] for row in json.loads(out)] == ["arith", "dna"]
    code, out, _ = adapters_cli("adapters", "list", "--root", str(root))
    assert code == 0 and "arith" in out and "dna" in out
    code, out, _ = adapters_cli("adapters", "show", "arith", "--root", str(root), "--json")
    assert code == 0 and json.loads(out)["adapter_config"]["r"] == 4
    code, out, err = adapters_cli(
        "adapters", "route", "--base", str(base_folder), "--root", str(root),
        "--text", "12+30=42;30+12=42", "--text", "ACGTTGCAACGTAGCTAGCTAGGATCCA", "--json",
    )  # fmt: skip
    assert code == 0, err
    assert [row["choice"] for row in json.loads(out)] == ["arith", "dna"]
    code, out, err = adapters_cli(
        "adapters", "route", "--base", str(base_folder), "--root", str(root), "--by", "prompts",
        "--text", "12+30=42;30+12=42", "--text", "ACGTTGCAACGTAGCTAGCTAGGATCCA", "--json",
    )  # fmt: skip
    assert code == 0, err
    rows = json.loads(out)
    assert [row["choice"] for row in rows] == ["arith", "dna"]
    assert all(row["scores"]["__base__"] == 1.0 and row["distance"] < 1.0 for row in rows)
    code, _, err = adapters_cli(
        "adapters", "route", "--base", str(base_folder), "--root", str(root), "--by", "[b]x", "--text", "1",
    )  # fmt: skip
    assert code == 2 and "--by must be loss or prompts, got '[b]x'" in err
    code, out, err = adapters_cli(
        "adapters",
        "merge",
        "arith",
        "dna",
        "--base",
        str(base_folder),
        "--root",
        str(root),
        "--weights",
        "1,1",
    )
    assert code == 0, err
    assert "arith-dna-cat" in out
    code, out, err = adapters_cli(
        "adapters", "export", "arith-dna-cat", "--base", str(base_folder), "--root", str(root),
        "--out", str(tmp_path / "standalone"), "--json",
    )  # fmt: skip
    assert code == 0, err
    assert (Path(json.loads(out)["path"]) / "tokenizer.json").is_file()
    for bad in (".", str(tmp_path / "arith.jsonl")):  # issue 15, case 9: tracebacks before
        code, _, err = adapters_cli(
            "adapters", "export", "arith", "--base", str(base_folder), "--root", str(root), "--out", bad,
            "--overwrite",
        )  # fmt: skip
        assert code == 2 and len(err.strip().splitlines()) == 1, err
    code, out, _ = adapters_cli("adapters", "delete", "dna", "--root", str(root), "--yes")
    assert code == 0 and not (root / "dna").exists()


def test_cli_errors_are_one_line(adapters_cli: Callable[..., tuple[int, str, str]], tmp_path: Path) -> None:
    code, _, err = adapters_cli("adapters", "show", "nope", "--root", str(tmp_path))
    assert code == 2 and "unknown task 'nope'" in err and len(err.strip().splitlines()) == 1
    code, _, err = adapters_cli(
        "adapters",
        "train",
        "t",
        "--data",
        str(tmp_path / "missing.jsonl"),
        "--base",
        str(tmp_path),
        "--root",
        str(tmp_path),
    )
    assert code == 2 and "config.json" in err


@pytest.mark.parametrize(
    "change", [{"r": "abc"}, {"peft_type": "PREFIX_TUNING"}, {"r": -4}, {"target_modules": 5}]
)
def test_a_damaged_adapter_config_is_one_error(
    trained: AdapterLibrary, tmp_path: Path, change: dict[str, object]
) -> None:
    # issue "Nothing lost, nothing injected, no traceback": r "abc" or another PEFT type crashed export
    library = copy_library(trained, tmp_path)
    path = library.root / "prose" / CONFIG_FILE
    path.write_text(json.dumps({**json.loads(path.read_text()), **change}))
    with pytest.raises(LifelongError, match=CONFIG_FILE):
        library.merge_and_unload("prose", tmp_path / "export")
    assert not (tmp_path / "export").exists()


def test_impossible_training_input_is_refused_by_name_before_training(tmp_path: Path) -> None:
    library = fresh(tmp_path / "lib")
    good = domain_data(4, seed=0)["arith"]
    cases = [
        ({"max_length": 0}, good, r"max_length \(--max-length\) must be at least 1"),
        ({"lr": float("nan")}, good, r"lr \(--lr\) must be positive, got nan"),
        ({"lora": {"lora_dropout": float("nan")}}, good, r"LoRA dropout must be in \[0, 1\), got nan"),
        ({"seed": -1}, good, r"seed \(--seed\) must be a whole number from 0"),
        ({}, [*good, {"text": 5}], "example 4 is neither text nor a list of token ids"),
    ]
    for options, data, says in cases:
        with pytest.raises(LifelongError, match=says):
            library.train("t", data, **options)  # type: ignore[arg-type]
        assert not (tmp_path / "lib" / "t").exists()


def test_list_marks_a_truncated_adapter_as_the_load_would(trained: AdapterLibrary, tmp_path: Path) -> None:
    library = copy_library(trained, tmp_path)
    weights = library.root / "dna" / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:100])
    rows = {info.task: info for info in list_adapters(library.root)}
    assert not rows["dna"].ok and "does not match the checksum" in (rows["dna"].problem or "")
    assert rows["arith"].ok
