"""Routing: every example through several adapters in one batch, and the adapter that explains it best."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from lifelong.adapters.base import ModelKind
from lifelong.adapters.peft_calls import freeze
from lifelong.adapters.training import Encoded, token_losses
from lifelong.errors import LifelongError

if TYPE_CHECKING:
    from peft import PeftModel

BASE = "__base__"  # the bare base model as a routing candidate (PEFT's name for it in adapter_names)


@dataclass
class RouteResult:
    """Which adapter `AdapterLibrary.route` picked for each example, and why.

    ``scores[i]`` is the chosen adapter's score for example i; ``all_scores[i, k]`` that of
    ``tasks[k]``. ``metric`` is ``"loss"`` (causal LM: mean token loss, lower wins), ``"confidence"``
    (classifier: highest softmax probability among the adapter's own labels, higher wins) or
    ``"distance"`` (routing by prompts: distance in units of each adapter's radius, lower wins; the
    last of ``tasks`` is then `BASE`, the bare base, at 1).
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
    if not any(getattr(peft.peft_config[n], "use_dora", False) for n in set(names) - {BASE}):
        logits: torch.Tensor = peft(input_ids=ids, attention_mask=mask, adapter_names=names).logits
        return logits
    active = peft.active_adapters
    parts: dict[str, torch.Tensor] = {}
    for name in dict.fromkeys(names):
        rows = torch.tensor([i for i, n in enumerate(names) if n == name], device=ids.device)
        if name == BASE:
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


# ---- routing by where a prompt sits ------------------------------------------------------------------------

RADIUS_MARGIN = 1.5  # a new prompt belongs to a task up to 1.5x its farthest training prompt


@dataclass
class PromptSignature:
    """Where a task's prompts sit in the base model's hidden space: their mean direction (unit length),
    and how far from it (cosine distance) its training prompts reach, with a margin."""

    centroid: torch.Tensor
    radius: float

    def to_json(self) -> dict[str, Any]:
        return {"centroid": self.centroid.tolist(), "radius": self.radius}

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> PromptSignature:
        return cls(torch.tensor(value["centroid"], dtype=torch.float32), float(value["radius"]))


@torch.no_grad()
def prompt_embeddings(
    model: Any, prompts: list[list[int]], pad_id: int, batch_size: int = 32
) -> torch.Tensor:
    """``[N, hidden]``: each prompt's last hidden states averaged over its tokens, unit length, through
    the bare base (a PEFT model's adapters are off for it): the same space whichever adapter trains.
    The model is left as it was: its train/eval mode and which parameters train."""
    device = next(model.parameters()).device
    context = model.disable_adapter() if hasattr(model, "disable_adapter") else contextlib.nullcontext()
    backbone = getattr(model, "get_base_model", lambda: model)().base_model  # no LM head: only hidden states
    # PEFT's disable_adapter makes the active adapter trainable again on exit, frozen or not before.
    trains = {p: p.requires_grad for p in model.parameters()}
    was_training = model.training
    model.eval()  # no dropout noise in where a prompt sits
    out = []
    try:
        with context:
            for start in range(0, len(prompts), batch_size):
                chunk = prompts[start : start + batch_size]
                width = max(len(p) for p in chunk)
                ids = torch.tensor([p + [pad_id] * (width - len(p)) for p in chunk], device=device)
                mask = torch.tensor([[1] * len(p) + [0] * (width - len(p)) for p in chunk], device=device)
                hidden = backbone(input_ids=ids, attention_mask=mask).last_hidden_state.float()
                mean = (hidden * mask.unsqueeze(-1)).sum(dim=1) / mask.sum(dim=1, keepdim=True)
                out.append(torch.nn.functional.normalize(mean, dim=-1).cpu())
    finally:
        model.train(was_training)
        for parameter, trained in trains.items():
            parameter.requires_grad_(trained)
    return torch.cat(out)


def encoded_embeddings(model: Any, data: Encoded, batch_size: int = 32) -> torch.Tensor:
    """`prompt_embeddings` of right-padded examples."""
    lengths = data.attention_mask.sum(dim=1).tolist()
    rows = [ids[:n].tolist() for ids, n in zip(data.input_ids, lengths, strict=True)]
    return prompt_embeddings(model, rows, pad_id=0, batch_size=batch_size)


def signatures(metas: Mapping[str, Mapping[str, Any]]) -> dict[str, PromptSignature]:
    """The `PromptSignature` of each adapter's record, refusing one that has none."""
    unsigned = [task for task, meta in metas.items() if not meta.get("router")]
    if unsigned:
        raise LifelongError(
            f"adapter '{unsigned[0]}' has no record of where its training examples sit (a merge, or trained "
            "before that was kept); route between trained adapters, retrain it, or route by loss"
        )
    return {task: PromptSignature.from_json(meta["router"]) for task, meta in metas.items()}


def fit_signature(embeddings: torch.Tensor) -> PromptSignature:
    centroid = torch.nn.functional.normalize(embeddings.mean(dim=0), dim=0)
    farthest = float((1 - embeddings @ centroid).max())
    return PromptSignature(centroid, max(farthest, 1e-6) * RADIUS_MARGIN)


def route_by_signature(embeddings: torch.Tensor, signatures: Mapping[str, PromptSignature]) -> RouteResult:
    """Each prompt to the task whose prompts it sits among (nearest in units of each task's radius), or
    to the bare base (`BASE`) when it is outside every task's radius: a question no task trained on.
    Scores are those distances; the base's is 1, the edge of every radius."""
    names = list(signatures)
    centroids = torch.stack([signatures[n].centroid for n in names])
    radii = torch.tensor([signatures[n].radius for n in names])
    relative = (1 - embeddings @ centroids.T) / radii
    all_scores = torch.cat([relative, torch.ones(len(relative), 1)], dim=1)
    best, pick = all_scores.min(dim=1)  # a tie at the edge goes to the task (it comes first)
    candidates = [*names, BASE]
    return RouteResult(
        tasks=candidates,
        choices=[candidates[int(k)] for k in pick],
        scores=best.tolist(),
        all_scores=all_scores,
        metric="distance",
    )
