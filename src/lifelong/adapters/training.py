"""Training one adapter: examples encoded as tensors, its LoRA config, the training loop and its score."""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.nn.functional as F

from lifelong.adapters.base import ModelKind
from lifelong.adapters.peft_calls import freeze
from lifelong.core.settings import SEED_MAX, check_least
from lifelong.errors import LifelongError

if TYPE_CHECKING:
    from peft import LoraConfig, PeftModel
    from transformers import PretrainedConfig

# The seed's choice for Llama-style models, and the usual attention projections elsewhere; any other
# architecture falls back to PEFT's own table.
DEFAULT_TARGETS: dict[str, list[str]] = {
    "llama": ["q_proj", "v_proj"],
    "mistral": ["q_proj", "v_proj"],
    "qwen2": ["q_proj", "v_proj"],
    "gpt2": ["c_attn"],
    "bert": ["query", "value"],
}
LORA_DEFAULTS: dict[str, Any] = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.05}
TRAINING_DEFAULTS: dict[str, Any] = {
    "epochs": 3,
    "lr": 5e-4,
    "batch_size": 8,
    "max_length": 128,
    "weight_decay": 0.0,
    "seed": 0,
}

Example = tuple[str | Sequence[int], int | None]  # (text or token ids, label or None)


@dataclass
class Encoded:
    """Examples as right-padded tensors; ``labels`` is one class per example (classifiers only)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.input_ids)

    def batch(
        self, rows: torch.Tensor | slice, device: torch.device, kind: ModelKind
    ) -> dict[str, torch.Tensor]:
        ids, mask = self.input_ids[rows], self.attention_mask[rows]
        # Right padding: columns past the longest example of this batch are padding in every row.
        width = max(int(mask.sum(dim=1).max()), 1)
        out = {"input_ids": ids[:, :width].to(device), "attention_mask": mask[:, :width].to(device)}
        if kind == "causal-lm":
            out["labels"] = out["input_ids"].masked_fill(out["attention_mask"] == 0, -100)
        elif self.labels is not None:
            out["labels"] = self.labels[rows].to(device)
        return out


# ---- encoding -----------------------------------------------------------------------------------------


def read_examples(data: Any) -> list[Example]:
    """Every example of any accepted dataset form (see `AdapterLibrary.encode`), refusing an empty one."""
    examples = list(_rows(data))
    if not examples:
        raise LifelongError("the dataset is empty; give at least one example")
    return examples


def _rows(data: Any) -> Iterator[Example]:
    """(text or token ids, label or None) for every example of any accepted dataset form."""
    if isinstance(data, str):
        yield data, None
        return
    if hasattr(data, "column_names") and hasattr(data, "to_dict"):  # a datasets.Dataset
        data = data.to_dict()
    if isinstance(data, Mapping):
        yield from _column_rows(data)
        return
    if isinstance(data, torch.Tensor):
        data = data.tolist()
    for item in data:
        yield _row(item)


def _column_rows(data: Mapping[str, Any]) -> Iterator[Example]:
    columns = {k: (v.tolist() if isinstance(v, torch.Tensor) else v) for k, v in data.items()}
    source = columns.get("input_ids", columns.get("text"))
    if source is None:
        raise LifelongError(f"the dataset has columns {sorted(columns)}; give 'input_ids' or 'text'")
    labels = columns.get("labels", columns.get("label"))
    masks = columns.get("attention_mask")
    for i, item in enumerate(source):
        if masks is not None and not isinstance(item, str):
            item = [t for t, m in zip(item, masks[i], strict=False) if m]
        yield item, (None if labels is None else labels[i])


def _row(item: Any) -> Example:
    if isinstance(item, str):
        return item, None
    if isinstance(item, Mapping):
        source = item.get("input_ids", item.get("text"))
        if source is None:
            raise LifelongError(f"an example has keys {sorted(item)}; give 'input_ids' or 'text'")
        if isinstance(source, torch.Tensor):
            source = source.tolist()
        label = item.get("labels", item.get("label"))
        return source, (None if label is None else int(label))
    if isinstance(item, tuple) and len(item) == 2 and _is_label(item[1]):
        source = item[0].tolist() if isinstance(item[0], torch.Tensor) else item[0]
        return source, int(item[1])
    if isinstance(item, Sequence | torch.Tensor):
        return (item.tolist() if isinstance(item, torch.Tensor) else list(item)), None
    raise LifelongError(f"cannot read an example of type {type(item).__name__}; give text, ids or dicts")


def _is_label(value: Any) -> bool:
    return isinstance(value, int) or (isinstance(value, torch.Tensor) and value.dim() == 0)


def encode_examples(
    examples: list[Example], *, tokenizer: Any, config: PretrainedConfig, max_length: int, need_labels: bool
) -> Encoded:
    """Examples -> right-padded tensors; ``tokenizer`` may be None when no example is text."""
    ids = _token_ids(examples, tokenizer, max_length)
    vocab = int(getattr(config, "vocab_size", 0) or 0)
    top = max(max(row) for row in ids)
    if min(min(row) for row in ids) < 0 or (vocab and top >= vocab):
        raise LifelongError(
            f"token id {top} is outside the base model's vocabulary of {vocab}; use its tokenizer"
        )
    pad = pad_id(tokenizer, config)
    width = max(len(row) for row in ids)
    input_ids = torch.full((len(ids), width), pad, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for i, row in enumerate(ids):
        input_ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    labels = _label_tensor(examples, num_labels_of(config)) if need_labels else None
    return Encoded(input_ids, mask, labels)


def _token_ids(examples: list[Example], tokenizer: Any, max_length: int) -> list[list[int]]:
    texts = [i for i, (item, _) in enumerate(examples) if isinstance(item, str)]
    ids: list[list[int]] = [[] for _ in examples]
    if texts:
        encoded = tokenizer(
            [cast(str, examples[i][0]) for i in texts], truncation=True, max_length=max_length
        )
        for i, row_ids in zip(texts, encoded["input_ids"], strict=True):
            ids[i] = list(row_ids)
    for i, (item, _) in enumerate(examples):
        if not isinstance(item, str):
            try:
                ids[i] = [int(t) for t in item][:max_length]  # token ids: a list or a tensor
            except (TypeError, ValueError):
                raise LifelongError(
                    f"example {i} is neither text nor a list of token ids (a {type(item).__name__}); "
                    "give each example's text"
                ) from None
    if any(not row for row in ids):
        raise LifelongError("an example has no tokens; drop empty examples")
    return ids


def _label_tensor(examples: list[Example], num_labels: int) -> torch.Tensor:
    missing = [i for i, (_, label) in enumerate(examples) if label is None]
    if missing:
        raise LifelongError(f"example {missing[0]} has no label; a classifier needs a label per example")
    values = [int(cast(int, label)) for _, label in examples]
    bad = [v for v in values if not 0 <= v < num_labels]
    if bad:
        raise LifelongError(
            f"label {bad[0]} is outside the model's {num_labels} labels (0..{num_labels - 1})"
        )
    return torch.tensor(values, dtype=torch.long)


def num_labels_of(config: PretrainedConfig) -> int:
    return int(getattr(config, "num_labels", 0) or 0)


def pad_id(tokenizer: Any, config: PretrainedConfig) -> int:
    for source in (tokenizer, config):
        value = getattr(source, "pad_token_id", None)
        if isinstance(value, int):
            return value
    return 0


# ---- LoRA config and training arguments ---------------------------------------------------------------


def default_lora(config: PretrainedConfig, kind: ModelKind, **overrides: Any) -> LoraConfig:
    """r=16, alpha=32, dropout 0.05 on the architecture's attention projections (see DEFAULT_TARGETS)."""
    from peft import LoraConfig
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_TARGETS

    model_type = getattr(config, "model_type", "")
    targets = DEFAULT_TARGETS.get(model_type) or PEFT_TARGETS.get(model_type)
    if targets is None and "target_modules" not in overrides:
        raise LifelongError(
            f"no default LoRA target modules for model type '{model_type}'; pass lora={{'target_modules': [...]}}"
        )
    values = {**LORA_DEFAULTS, "target_modules": list(targets or []), **overrides}
    values.setdefault("fan_in_fan_out", model_type == "gpt2")  # GPT-2's Conv1D stores W transposed
    return LoraConfig(task_type=_task_type(kind), **values)


def _task_type(kind: ModelKind) -> str:
    # The task type makes PEFT save a classifier's head with the adapter (modules_to_save).
    return "CAUSAL_LM" if kind == "causal-lm" else "SEQ_CLS"


def lora_config(
    lora: LoraConfig | Mapping[str, Any] | None, config: PretrainedConfig, kind: ModelKind
) -> LoraConfig:
    """``lora`` as given (a LoraConfig, copied), as fields over the defaults (a mapping), or the defaults."""
    from peft import LoraConfig

    if lora is None:
        return default_lora(config, kind)
    if isinstance(lora, LoraConfig):
        copied = copy.deepcopy(lora)
        if copied.task_type is None:
            copied.task_type = _task_type(kind)
        return copied
    if isinstance(lora, Mapping):
        dropout = lora.get("lora_dropout", 0.0)
        if not (isinstance(dropout, int | float) and 0 <= dropout < 1):  # nan too: saving it fails late
            raise LifelongError(f"LoRA dropout must be in [0, 1), got {dropout}; try 0.05")
        try:
            return default_lora(config, kind, **dict(lora))
        except (TypeError, ValueError) as err:  # an unknown field, or one LoraConfig refuses
            raise LifelongError(f"bad LoRA option: {err}") from None
    raise LifelongError(
        f"lora must be a peft LoraConfig or a mapping of its fields, got {type(lora).__name__}"
    )


def training_arguments(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """TRAINING_DEFAULTS with ``overrides``, refusing unknown names and impossible values."""
    unknown = sorted(set(overrides) - set(TRAINING_DEFAULTS))
    if unknown:
        raise LifelongError(
            f"unknown training argument(s) {', '.join(unknown)}; use: {', '.join(TRAINING_DEFAULTS)}"
        )
    args = {**TRAINING_DEFAULTS, **overrides}
    check_least(args, epochs=1, batch_size=1, max_length=1)
    check_least(args, strictly=True, lr=0)
    seed = args["seed"]
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= SEED_MAX:
        raise LifelongError(f"seed (--seed) must be a whole number from 0 to {SEED_MAX}, got {seed}")
    return args


# ---- the loop and the score ---------------------------------------------------------------------------


def train_adapter(
    peft: PeftModel,
    task: str,
    data: Encoded,
    held_out: Encoded | None,
    args: dict[str, Any],
    device: torch.device,
    kind: ModelKind,
) -> dict[str, Any]:
    """Train ``peft``'s new adapter ``task`` on ``data``, then score it on ``held_out`` (else on
    ``data``); returns what the adapter's record says about its training."""
    freeze(peft)
    peft.set_adapter(task)  # trainable: only this adapter (and its head copy)
    fit(peft, data, args, device, kind)
    freeze(peft)
    peft.eval()
    scored_on = held_out if held_out is not None else data
    result = score(peft, task, scored_on, device, kind)
    return {
        "training": args,
        "data_size": len(data),
        "labels": sorted(set(data.labels.tolist())) if data.labels is not None else None,
        "eval": {**result, "split": "eval" if held_out is not None else "train", "size": len(scored_on)},
    }


def fit(peft: PeftModel, data: Encoded, args: dict[str, Any], device: torch.device, kind: ModelKind) -> None:
    """AdamW over ``peft``'s trainable parameters (the active adapter), batches shuffled per epoch by seed."""
    params = [p for p in peft.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=float(args["lr"]), weight_decay=float(args["weight_decay"]))
    generator = torch.Generator().manual_seed(int(args["seed"]))
    peft.train()
    for epoch in range(int(args["epochs"])):
        order = torch.randperm(len(data), generator=generator)
        for start in range(0, len(data), int(args["batch_size"])):
            batch = data.batch(order[start : start + int(args["batch_size"])], device, kind)
            loss = peft(**batch).loss
            if not torch.isfinite(loss):
                raise LifelongError(
                    f"loss became {loss.item()} in epoch {epoch + 1}; lower the learning rate (lr)"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    peft.eval()


@torch.no_grad()
def score(
    peft: PeftModel, task: str, data: Encoded, device: torch.device, kind: ModelKind, batch_size: int = 32
) -> dict[str, Any]:
    """Accuracy (classifier) or mean token loss (causal LM) of ``task``'s adapter on ``data``."""
    peft.set_adapter(task, inference_mode=True)
    freeze(peft)
    peft.eval()
    if kind == "classification":
        if data.labels is None:
            raise LifelongError("scoring a classifier needs labels")
        correct = 0
        for start in range(0, len(data), batch_size):
            batch = data.batch(slice(start, start + batch_size), device, kind)
            logits = peft(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            correct += int((logits.argmax(dim=-1) == batch["labels"]).sum())
        return {"metric": "accuracy", "value": correct / len(data), "higher_is_better": True}
    total = count = 0.0
    for start in range(0, len(data), batch_size):
        batch = data.batch(slice(start, start + batch_size), device, kind)
        logits = peft(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        sums, counts = token_losses(logits, batch["input_ids"], batch["attention_mask"])
        total += float(sums.sum())
        count += float(counts.sum())
    return {"metric": "loss", "value": total / max(count, 1.0), "higher_is_better": False}


def token_losses(
    logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per example: (sum of next-token losses, number of predicted tokens)."""
    targets = ids[:, 1:]
    valid = mask[:, 1:].bool()
    losses = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), targets, reduction="none")
    losses = losses.masked_fill(~valid, 0.0)
    return losses.sum(dim=1), valid.sum(dim=1).to(losses.dtype)
