"""Causal language models by name: ``tiny-llama`` (built here), ``smollm2-135m`` (a real chat model,
see `lifelong.models.smollm2`) or a local Hugging Face model folder.

``tiny-llama`` is a small Llama (from a ``LlamaConfig``, random weights) with a byte-level BPE
tokenizer trained locally with ``tokenizers`` on the train parts of the built-in corpora. Both are
saved together as an ordinary Hugging Face folder (``config.json``, ``model.safetensors``,
``tokenizer.json``, ...) in the cache (`lifelong.models.hf.cache_dir`), so it loads
exactly the way a user's own model folder does and is built once per option set and Python version.
Nothing is ever downloaded: every load is ``local_files_only`` with the Hub switched off.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import tempfile
from collections.abc import Callable, Collection
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from lifelong.core.spec import bind, parse_spec
from lifelong.errors import LifelongError
from lifelong.llm.corpora import BUILTIN_CORPORA, builtin_corpus, split_documents
from lifelong.models.hf import (
    cache_dir,
    first_line,
    from_pretrained_whole,
    load_errors,
    offline,
    weights_format,
)
from lifelong.models.smollm2 import SMOLLM2, is_smollm2, smollm2_folder

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

TINY_LLAMA = "tiny-llama"
END_OF_TEXT = "<|endoftext|>"
# Any one of these makes a folder loadable by AutoTokenizer (fast JSON, sentencepiece, BPE or WordPiece vocab).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt")
_FORMAT = 1  # bump when the tiny-llama recipe changes, so old cached folders are not reused


# ---- tiny-llama ---------------------------------------------------------------------------------------


def train_tokenizer(vocab_size: int = 2048) -> PreTrainedTokenizerBase:
    """Byte-level BPE trained on the train parts of the built-in corpora (so any text encodes, no UNK).

    Held-out documents are left out so perplexity is measured on text the tokenizer never saw.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < 300:
        raise LifelongError(f"tiny-llama vocab must be at least 300 (256 bytes + merges), got {vocab_size}")
    texts = [doc for name in BUILTIN_CORPORA for doc in split_documents(builtin_corpus(name).documents)[0]]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[END_OF_TEXT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer)
    # One special token does every job: it separates documents (eos), and fills pads nobody trains on.
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=END_OF_TEXT, eos_token=END_OF_TEXT, pad_token=END_OF_TEXT
    )


def build_tiny_llama(
    folder: str | Path,
    vocab_size: int = 2048,
    hidden: int = 128,
    layers: int = 2,
    heads: int = 4,
    max_positions: int = 1024,
    seed: int = 0,
) -> Path:
    """Write a tiny Llama (random weights from ``seed``) and its tokenizer to ``folder``, whole or not at all."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if hidden % heads:
        raise LifelongError(f"tiny-llama hidden ({hidden}) must be a multiple of heads ({heads})")
    folder = Path(folder)
    tokenizer = train_tokenizer(vocab_size)
    eot = int(cast(int, tokenizer.convert_tokens_to_ids(END_OF_TEXT)))
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=3 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,  # at this size the embedding is most of the model: share it with the head
        bos_token_id=eot,
        eos_token_id=eot,
        pad_token_id=eot,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    folder.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        with offline():  # no "Writing model shards" progress bar
            model.save_pretrained(partial)
            tokenizer.save_pretrained(partial)
        if folder.exists() and not _complete(folder):
            shutil.rmtree(folder)
        try:
            os.replace(partial, folder)
        except OSError:  # the processes of one run build the same folder at once; one of them wins
            if not _complete(folder):
                raise
            shutil.rmtree(partial, ignore_errors=True)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return folder


def tiny_llama_folder(**options: Any) -> Path:
    """The cached tiny-llama folder for these options (built on first use)."""
    import tokenizers
    import transformers

    key = json.dumps(
        {
            "options": options,
            "format": _FORMAT,
            # The built-in corpora follow the Python version; the files follow the library versions.
            "python": platform.python_version(),
            "transformers": transformers.__version__.split(".")[0],
            "tokenizers": tokenizers.__version__,
        },
        sort_keys=True,
    )
    folder = cache_dir() / f"{TINY_LLAMA}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    if not _complete(folder):
        build_tiny_llama(folder, **options)
    return folder


def _complete(folder: Path) -> bool:
    return (folder / "config.json").is_file() and (folder / "tokenizer.json").is_file()


def _tiny_options(
    vocab_size: int = 2048, hidden: int = 128, layers: int = 2, heads: int = 4, seed: int = 0
) -> dict[str, Any]:
    # A demo model: bounds far past any use of it, so a slip of the keyboard is not hours of building.
    sizes = {"vocab_size": (vocab_size, 64, 65536), "hidden": (hidden, 8, 4096), "layers": (layers, 1, 64)}
    for name, (value, low, high) in {**sizes, "heads": (heads, 1, 64)}.items():
        if not low <= value <= high:
            raise LifelongError(f"tiny-llama option {name} must be between {low} and {high}, got {value}")
    return {"vocab_size": vocab_size, "hidden": hidden, "layers": layers, "heads": heads, "seed": seed}


def resolve_model_folder(model: str | Path) -> Path:
    """``tiny-llama[:options]`` or ``smollm2-135m`` -> its cached folder; anything else must be a local
    model folder."""
    text = str(model)
    if is_smollm2(text):
        return smollm2_folder()
    if text.split(":", 1)[0] == TINY_LLAMA and not Path(text).exists():
        options = bind(_tiny_options, parse_spec(text), what="model")
        return tiny_llama_folder(**options)
    return Path(model)


def is_tiny_llama(model: str | Path) -> bool:
    return str(model).split(":", 1)[0] == TINY_LLAMA and not Path(str(model)).exists()


# ---- loading ----------------------------------------------------------------------------------------------


def check_model_folder(folder: Path) -> None:
    """Name what is missing from a model folder before transformers fails on it less clearly."""
    if not folder.exists():
        raise LifelongError(
            f"model folder {folder} does not exist; pass {TINY_LLAMA}, {SMOLLM2} or a folder written by save_pretrained "
            "(nothing is downloaded)"
        )
    if not folder.is_dir():
        raise LifelongError(
            f"model {folder} is a file; pass the folder that holds config.json and the weights"
        )
    if not (folder / "config.json").is_file() and not (folder / "adapter_config.json").is_file():
        raise LifelongError(
            f"{folder} is not a model folder (no config.json); save the model there with model.save_pretrained"
        )
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise LifelongError(
            f"model folder {folder} has no tokenizer (no tokenizer.json or tokenizer_config.json); "
            f"save the model's tokenizer there with tokenizer.save_pretrained('{folder}')"
        )


def load_model(
    model: str | Path, dtype: Any = None, *, allow_pickle: bool = False
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """(model, tokenizer) for ``tiny-llama[:hidden=..,layers=..]``, ``smollm2-135m`` or a local Hugging Face folder.

    A folder holding a PEFT adapter (``adapter_config.json``) loads its base model from the local
    folder the adapter names, with the adapter trainable. ``dtype`` is passed to ``from_pretrained``
    (default: what the folder was saved in). Weights load from safetensors only: a folder holding
    only pickled weights (``pytorch_model.bin``) is refused unless ``allow_pickle=True``.
    """
    folder = resolve_model_folder(model)
    check_model_folder(folder)
    from transformers import AutoConfig, AutoTokenizer

    kwargs: dict[str, Any] = {"local_files_only": True}
    if dtype is not None:
        kwargs["dtype"] = dtype
    with offline():
        try:  # first, as the tokenizer reads it too and would take the blame
            if (folder / "config.json").is_file():
                AutoConfig.from_pretrained(str(folder), local_files_only=True)
        except load_errors() as err:
            raise LifelongError(
                f"{folder / 'config.json'} is not a valid model config ({first_line(err)}); "
                "save the model there again with model.save_pretrained"
            ) from None
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        except load_errors() as err:
            raise LifelongError(
                f"the tokenizer in {folder} cannot be loaded ({first_line(err)}); save it again with "
                "tokenizer.save_pretrained"
            ) from None
        try:
            if (folder / "adapter_config.json").is_file() and not (folder / "config.json").is_file():
                loaded = _load_adapter(folder, kwargs, allow_pickle)
            else:
                loaded = _causal_lm(folder, kwargs, allow_pickle)
        except load_errors() as err:
            raise LifelongError(
                f"the model in {folder} cannot be loaded as a causal LM ({first_line(err)}); "
                "pass a folder written by model.save_pretrained"
            ) from None
    if tokenizer.eos_token_id is None and tokenizer.bos_token_id is None:
        raise LifelongError(
            f"the tokenizer in {folder} has no end-of-text (eos) token to separate documents; set eos_token"
        )
    return loaded, tokenizer


ADAPTER_WEIGHTS = "adapter_model.safetensors"  # PEFT reads it first; adapter_model.bin, a pickle, else


def _load_adapter(folder: Path, kwargs: dict[str, Any], allow_pickle: bool) -> PreTrainedModel:
    from peft import PeftModel

    config = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
    base = Path(str(config.get("base_model_name_or_path") or ""))
    if not (base / "config.json").is_file():
        raise LifelongError(
            f"the adapter in {folder} names base model '{base}', which is not a local model folder; "
            "set base_model_name_or_path in adapter_config.json to the base model's folder"
        )
    if not allow_pickle and not (folder / ADAPTER_WEIGHTS).is_file():  # PEFT would unpickle the .bin
        raise LifelongError(
            f"the adapter in {folder} has no {ADAPTER_WEIGHTS}, and its weights would be unpickled, which "
            "can run code; save it again with save_pretrained, or pass --allow-pickle if you trust it"
        )
    model = _causal_lm(base, kwargs, allow_pickle)
    peft_model: Any = PeftModel.from_pretrained(model, str(folder), is_trainable=True)
    return cast("PreTrainedModel", peft_model)


def _causal_lm(folder: Path, kwargs: dict[str, Any], allow_pickle: bool) -> PreTrainedModel:
    from transformers import AutoModelForCausalLM

    loaded: PreTrainedModel = from_pretrained_whole(
        AutoModelForCausalLM, folder, **kwargs, **weights_format(folder, allow_pickle)
    )
    return loaded


def check_positions(model: Any, tokens: int, flag: str) -> None:
    """Refuse ``tokens`` a sequence (``flag``) beyond the positions the model has, before any data is
    cut to it: past them a model fails or computes garbage, and a huge value is slow long before."""
    positions = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if isinstance(positions, int) and tokens > positions:
        raise LifelongError(
            f"{flag} {tokens} exceeds the model's {positions} positions; use at most {positions}"
        )


def vocab_size(model: Any) -> int:
    """Rows of the input embedding: the largest token id the model can read, plus one."""
    return int(model.get_input_embeddings().weight.shape[0])


def to_device(model: Any, device: str) -> None:
    model.to(device)


class ModelSupply:
    """Models for one composition after another: ``loaded`` first (unless None), then fresh loads of
    ``model`` on ``device``, so that one model (not two) is in memory at a time."""

    def __init__(self, model: str | Path, loaded: Any, device: str, *, allow_pickle: bool = False) -> None:
        self.model, self.device, self.allow_pickle = model, device, allow_pickle
        self.untouched = [] if loaded is None else [loaded]

    def fresh(self) -> Any:
        return self.untouched.pop() if self.untouched else self._load(self.model)

    def saved(self, folder: Path) -> Any:
        """The model saved in ``folder`` (a checkpoint) instead of a fresh one."""
        self.untouched.clear()  # not needed by this composition: a later one loads the model again
        return self._load(folder)

    def _load(self, folder: str | Path) -> Any:
        return load_to(folder, self.device, allow_pickle=self.allow_pickle)


def load_to(folder: str | Path, device: str, *, allow_pickle: bool = False) -> Any:
    """The model of ``folder`` (its tokenizer left unused) on ``device``."""
    loaded, _ = load_model(folder, allow_pickle=allow_pickle)
    to_device(loaded, device)
    return loaded


def write_model(model: Any, tokenizer: Any, folder: Path) -> None:
    """``save_pretrained`` of model and tokenizer into ``folder`` (safetensors: transformers 5 writes no other)."""
    with offline():
        model.save_pretrained(str(folder))
        tokenizer.save_pretrained(str(folder))


def save_model(model: Any, tokenizer: Any, folder: Path) -> Path:
    """`write_model` into ``folder``, whole or not at all."""
    return _whole(folder, lambda partial: write_model(model, tokenizer, partial))


def link_model(saved: Path, folder: Path, leave: Collection[str]) -> Path:
    """The files of ``saved`` (a folder a model was written into, with others named in ``leave``) as
    ``folder``, whole or not at all: hard links where the file system takes them, so a real model's
    weights are not written a second time; copies where it does not."""

    def link(partial: Path) -> None:
        partial.mkdir()
        for file in sorted(saved.iterdir()):
            if file.name in leave:
                continue
            if file.is_dir():
                shutil.copytree(file, partial / file.name)
                continue
            try:
                os.link(file, partial / file.name)
            except OSError:
                shutil.copy2(file, partial / file.name)

    return _whole(folder, link)


def _whole(folder: Path, write: Callable[[Path], None]) -> Path:
    folder.parent.mkdir(parents=True, exist_ok=True)
    partial = folder.with_name(folder.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    write(partial)
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(partial, folder)
    return folder
