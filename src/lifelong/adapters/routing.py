"""Routing: every example through several adapters in one batch, and the adapter that explains it best."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from lifelong.adapters.base import ModelKind
from lifelong.adapters.peft_calls import freeze
from lifelong.adapters.training import Encoded, token_losses

if TYPE_CHECKING:
    from peft import PeftModel


@dataclass
class RouteResult:
    """Which adapter `AdapterLibrary.route` picked for each example, and why.

    ``scores[i]`` is the chosen adapter's score for example i; ``all_scores[i, k]`` that of
    ``tasks[k]``. ``metric`` is ``"loss"`` (causal LM: mean token loss, lower wins) or ``"confidence"``
    (classifier: highest softmax probability among the adapter's own labels, higher wins).
    ``predictions`` holds the chosen adapter's predicted label (classifiers only).
    """

    tasks: list[str]
    choices: list[str]
    scores: list[float]
    all_scores: torch.Tensor
    metric: str
    predictions: list[int] | None = None

    def to_json(self) -> list[dict[str, Any]]:
        rows = []
        for i, choice in enumerate(self.choices):
            row: dict[str, Any] = {"choice": choice, self.metric: self.scores[i]}
            row["scores"] = dict(zip(self.tasks, self.all_scores[i].tolist(), strict=True))
            if self.predictions is not None:
                row["prediction"] = self.predictions[i]
            rows.append(row)
        return rows


def mixed_logits(peft: PeftModel, ids: torch.Tensor, mask: torch.Tensor, names: list[str]) -> torch.Tensor:
    """One forward pass with a per-sample adapter; one pass per adapter where PEFT cannot mix
    them (DoRA adapters, merged weights), with the same result."""
    # Ask first rather than catch PEFT's refusal: a refused call leaves its forward hooks behind.
    if not any(getattr(peft.peft_config[n], "use_dora", False) for n in set(names) - {"__base__"}):
        logits: torch.Tensor = peft(input_ids=ids, attention_mask=mask, adapter_names=names).logits
        return logits
    active = peft.active_adapters
    parts: dict[str, torch.Tensor] = {}
    for name in dict.fromkeys(names):
        rows = torch.tensor([i for i, n in enumerate(names) if n == name], device=ids.device)
        if name == "__base__":
            with peft.disable_adapter():
                parts[name] = peft(input_ids=ids[rows], attention_mask=mask[rows]).logits
        else:
            peft.set_adapter(name, inference_mode=True)
            parts[name] = peft(input_ids=ids[rows], attention_mask=mask[rows]).logits
    peft.set_adapter(active[0], inference_mode=True)
    freeze(peft)
    first = next(iter(parts.values()))
    out = first.new_empty((len(names), *first.shape[1:]))
    for name, value in parts.items():
        out[[i for i, n in enumerate(names) if n == name]] = value
    return out


def own_label_mask(
    metas: Mapping[str, dict[str, Any]], candidates: list[str], num_labels: int, device: torch.device
) -> torch.Tensor:
    """``[candidate, label]``: True for the labels each classifier adapter was trained on (all when unrecorded)."""
    allowed = torch.zeros(len(candidates), num_labels, dtype=torch.bool)
    for k, task in enumerate(candidates):
        labels = metas[task].get("labels") or list(range(num_labels))
        allowed[k, labels] = True
    return allowed.to(device)


@torch.no_grad()
def route_examples(
    peft: PeftModel,
    data: Encoded,
    candidates: list[str],
    own_labels: torch.Tensor | None,
    *,
    batch_size: int,
    device: torch.device,
    kind: ModelKind,
) -> RouteResult:
    """Score every example with every candidate, one pass per chunk repeated once per candidate, and pick
    the lowest loss, or with ``own_labels`` (see `own_label_mask`) the most confident classifier."""
    k = len(candidates)
    chunk = max(1, batch_size // k)
    scores, predictions = [], []
    for start in range(0, len(data), chunk):
        batch = data.batch(slice(start, start + chunk), device, kind)
        n = len(batch["input_ids"])
        names = [task for task in candidates for _ in range(n)]
        ids = batch["input_ids"].repeat(k, 1)
        mask = batch["attention_mask"].repeat(k, 1)
        logits = mixed_logits(peft, ids, mask, names)
        if own_labels is None:
            sums, counts = token_losses(logits, ids, mask)
            scores.append((sums / counts.clamp(min=1.0)).view(k, n).T)
        else:
            allowed = own_labels.repeat_interleave(n, dim=0)
            probs = logits.float().masked_fill(~allowed, -math.inf).softmax(dim=-1)
            best, label = probs.max(dim=-1)
            scores.append(best.view(k, n).T)
            predictions.append(label.view(k, n).T)
    all_scores = torch.cat(scores).cpu()
    pick = all_scores.argmin(dim=1) if own_labels is None else all_scores.argmax(dim=1)
    rows = torch.arange(len(all_scores))
    return RouteResult(
        tasks=candidates,
        choices=[candidates[int(i)] for i in pick],
        scores=all_scores[rows, pick].tolist(),
        all_scores=all_scores,
        metric="loss" if own_labels is None else "confidence",
        predictions=None if own_labels is None else torch.cat(predictions).cpu()[rows, pick].tolist(),
    )
