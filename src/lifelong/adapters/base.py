"""The frozen base model under the adapters: which kind it is, and loading it offline from a folder."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

import torch

from lifelong.adapters.peft_calls import freeze
from lifelong.errors import LifelongError
from lifelong.models.hf import first_line, from_pretrained_whole, load_errors, offline, weights_format

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel

ModelKind = Literal["causal-lm", "classification"]


def model_kind_of(architecture: str) -> ModelKind | None:
    if architecture.endswith("ForSequenceClassification"):
        return "classification"
    if architecture.endswith(("ForCausalLM", "LMHeadModel")):
        return "causal-lm"
    return None


def check_kind(architecture: str, kind: ModelKind | None) -> ModelKind:
    """``kind`` if given, else the kind ``architecture`` names, refusing a model of neither kind."""
    found = kind or model_kind_of(architecture)
    if found not in ("causal-lm", "classification"):
        raise LifelongError(
            f"base model is a {architecture}; AdapterLibrary needs a causal LM (...ForCausalLM) or a sequence "
            "classifier (...ForSequenceClassification); for a bare encoder pass kind='classification', num_labels=N"
        )
    return found


def choose_device(device: str | torch.device | None, model: PreTrainedModel | None) -> torch.device:
    """``device`` if given, else where a built ``model`` already is, else CUDA when there is one."""
    if device is not None:
        return torch.device(device)
    if model is not None:
        return next(model.parameters()).device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def read_base_config(path: Path, num_labels: int | None) -> PretrainedConfig:
    from transformers import AutoConfig

    if not (path / "config.json").is_file():
        raise LifelongError(
            f"base model folder {path} has no config.json; give a saved Hugging Face model folder"
        )
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local folder must never reach for the network
    extra = {"num_labels": num_labels} if num_labels else {}
    try:
        return AutoConfig.from_pretrained(str(path), local_files_only=True, **extra)
    except load_errors() as err:
        raise LifelongError(f"cannot read the config of base model {path}: {first_line(err)}") from None


def load_base_model(
    path: Path, config: PretrainedConfig, kind: ModelKind, allow_pickle: bool = False
) -> PreTrainedModel:
    """The base model in ``path``, from safetensors only unless ``allow_pickle`` (see `weights_format`)."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    auto = AutoModelForCausalLM if kind == "causal-lm" else AutoModelForSequenceClassification
    safe = weights_format(path, allow_pickle)
    try:
        with offline():  # and no load report or progress bar on the terminal
            if kind == "causal-lm":
                return from_pretrained_whole(auto, path, config=config, local_files_only=True, **safe)
            return auto.from_pretrained(str(path), config=config, local_files_only=True, **safe)
    except load_errors() as err:
        raise LifelongError(
            f"cannot load base model {path}: {first_line(err)}; pass a folder written by save_pretrained"
        ) from None


def prepare_base(model: PreTrainedModel, device: torch.device) -> None:
    cast(torch.nn.Module, model).to(device)
    freeze(model)  # the base is frozen for good; only adapters ever train
    model.eval()


def folder_tokenizer(path: Path) -> Any:
    """The tokenizer saved in a base model folder, or None when it has none that loads."""
    from transformers import AutoTokenizer

    if not any((path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt")):
        return None
    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError):
        return None
