"""Loading Hugging Face models with no network: what every loader in the package goes through."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lifelong.errors import LifelongError

# Weights in these formats are Python pickles: loading one can run any code its author put in it.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
ALLOW_PICKLE_HELP = (
    "Also load a model folder whose weights are only pickle files (.bin): loading one can run code "
    "its author put in it, so only for a folder you trust."
)


@contextlib.contextmanager
def offline() -> Iterator[None]:
    """No network for anything under it, and no load reports or progress bars from transformers."""
    saved = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    from transformers.utils import logging as hf_logging

    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()
        if saved is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = saved


def load_errors() -> tuple[type[Exception], ...]:
    """What loading a model folder raises when the folder is at fault: broken or truncated weights,
    a config.json with impossible values, weights of another shape, a pickle refused by torch."""
    import pickle

    from huggingface_hub.errors import StrictDataclassError
    from safetensors import SafetensorError

    python = (OSError, ValueError, TypeError, KeyError, RuntimeError, pickle.UnpicklingError)
    return (*python, SafetensorError, StrictDataclassError)


def first_line(err: BaseException) -> str:
    """An exception's first line (transformers' run to many), for a one-line error."""
    text = str(err).strip().splitlines()
    return text[0][:200] if text else type(err).__name__


def from_pretrained_whole(auto: Any, folder: Path, **kwargs: Any) -> Any:
    """``auto.from_pretrained(folder, **kwargs)``, refusing weights that lack some of the model's
    tensors (a partial copy, or a config.json of another model), which transformers would fill with
    random values under a warning that `offline` silences. Not for a classifier made from a base
    model, whose new head is missing on purpose."""
    model, info = auto.from_pretrained(str(folder), **kwargs, output_loading_info=True)
    missing = sorted(info.get("missing_keys") or ())
    if missing:
        raise LifelongError(
            f"the weights in {folder} lack {len(missing)} of the model's tensors (e.g. {missing[0]}): "
            "a partial copy, or a config.json of another model; save the model there again with save_pretrained"
        )
    return model


def cache_dir() -> Path:
    """Where built models and generated data are kept: ``$LIFELONG_CACHE``, else ``lifelong`` in
    ``$XDG_CACHE_HOME`` (default ``~/.cache``)."""
    if os.environ.get("LIFELONG_CACHE"):
        return Path(os.environ["LIFELONG_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lifelong"


def weights_format(folder: Path, allow_pickle: bool = False) -> dict[str, Any]:
    """The ``from_pretrained`` keywords that load ``folder``'s weights from safetensors only.

    A folder whose only weights are pickles is refused, unless ``allow_pickle`` says its author is
    trusted; then transformers picks safetensors where there are some and unpickles the rest.
    """
    if allow_pickle:
        return {}
    files = [p for p in folder.iterdir() if p.is_file()] if folder.is_dir() else []
    pickles = sorted(p.name for p in files if p.suffix in PICKLE_SUFFIXES)
    if pickles and not any(p.suffix == ".safetensors" for p in files):
        raise LifelongError(
            f"model folder {folder} holds its weights only as pickle files ({', '.join(pickles[:3])}), "
            "which can run code when loaded; convert them to safetensors (load the model once and "
            "save_pretrained it), or, if you trust the folder, pass --allow-pickle (allow_pickle=True "
            "in Python)"
        )
    return {"use_safetensors": True}
