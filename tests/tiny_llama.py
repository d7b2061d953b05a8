"""The one-layer Llama the causal-LM tests train (built from a config, seeded, in a second) and the
short training run they give it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import LlamaConfig, LlamaForCausalLM, TrainingArguments


def tiny_llama(
    vocab: int, hidden: int, seed: int = 0, layers: int = 1, heads: int = 2, **config: Any
) -> LlamaForCausalLM:
    """``layers`` layers of ``heads`` heads, an MLP twice as wide as ``hidden``, positions up to
    ``vocab`` unless ``config`` (more `LlamaConfig` fields) says otherwise."""
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        **{"max_position_embeddings": vocab, **config},
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def training_args(tmp_path: Path, **overrides: Any) -> TrainingArguments:
    """Two steps of batch 4 on the CPU, nothing saved or reported, unless ``overrides`` say otherwise."""
    settings: dict[str, Any] = {
        "output_dir": str(tmp_path / "out"),
        "per_device_train_batch_size": 4,
        "learning_rate": 1e-2,
        "max_steps": 2,
        "report_to": "none",
        "use_cpu": True,
        "save_strategy": "no",
        "disable_tqdm": True,
        "logging_steps": 1,
        "seed": 0,
    }
    settings.update(overrides)
    return TrainingArguments(**settings)
