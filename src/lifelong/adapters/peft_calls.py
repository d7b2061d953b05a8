"""How the adapter package calls PEFT and transformers: quietly, seeded, and leaving weights frozen."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch for LoRA's initialisation and dropout without disturbing the caller's RNG."""
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


@contextlib.contextmanager
def _peft_call() -> Iterator[None]:
    """PEFT 0.21 asks transformers 5 for a deprecated attribute whenever it wraps a model; that
    FutureWarning is theirs to fix and says nothing to a user of the library."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


@contextlib.contextmanager
def _quiet_warnings() -> Iterator[None]:
    """PEFT's and transformers' warnings and progress bars, which say nothing a user can act on here."""
    import warnings

    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        if bars:
            hf_logging.enable_progress_bar()


def freeze(model: torch.nn.Module) -> None:
    """No parameter of ``model`` trains; PEFT's ``set_adapter`` makes the active adapter trainable again."""
    for parameter in model.parameters():
        parameter.requires_grad_(False)
