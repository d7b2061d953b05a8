"""Merging adapters into a new one (PEFT ``add_weighted_adapter``), and folding one into a standalone model.

Why ``merge(method="cat")`` is the default
------------------------------------------
A LoRA adapter changes a weight matrix by ``ΔW = s·B·A`` (``B`` is ``d×r``, ``A`` is ``r×k``, ``s =
alpha/r``). The merge a user means by "adapter 1 with weight w1 plus adapter 2 with weight w2" is
``w1·s1·B1A1 + w2·s2·B2A2``. ``cat`` produces exactly that: it stacks the factors,
``B = [B1 | B2]`` and ``A = [w1·s1·A1 ; w2·s2·A2]``, so ``B·A = w1·s1·B1A1 + w2·s2·B2A2`` with no
approximation, for any ranks (the merged rank is r1 + r2).

Averaging the ``A`` and ``B`` matrices separately, as the seed's ``merge_adapters`` did (over the
whole state dict, base weights included), gives ``((B1 + B2)/2)·((A1 + A2)/2) = (B1A1 + B2A2 + B1A2
+ B2A1)/4``: half the intended update plus two cross terms ``B1A2`` and ``B2A1`` that neither
adapter ever learned (``B1A1 + B2A2 ≠ (B1 + B2)(A1 + A2)/4``). PEFT's ``linear`` has the same cross
terms (it sums ``√(w·s)``-scaled ``A`` and ``B`` separately), which is why it needs equal ranks and is
only an approximation; ``ties``, ``dare_*`` and ``magnitude_prune`` prune and sum the factors the
same way. ``svd`` computes the exact sum and then truncates it to a rank (exact only when that rank
is enough).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from lifelong.adapters.peft_calls import _peft_call, _quiet_warnings, freeze
from lifelong.adapters.saving import save_export
from lifelong.adapters.store import adapter_folder, adapter_rank, check_task_name, read_meta
from lifelong.errors import LifelongError

if TYPE_CHECKING:
    from peft import PeftModel

MergeMethod = Literal["cat", "linear", "svd", "ties", "dare_ties", "dare_linear", "magnitude_prune"]
MERGE_METHODS: tuple[str, ...] = (
    "cat",
    "linear",
    "svd",
    "ties",
    "dare_ties",
    "dare_linear",
    "magnitude_prune",
)
SAME_RANK_METHODS = frozenset({"linear", "ties", "dare_ties", "dare_linear", "magnitude_prune"})
DENSITY_METHODS = frozenset({"ties", "dare_ties", "dare_linear", "magnitude_prune"})


@dataclass
class MergePlan:
    """A merge's checked arguments: ``tasks`` (the parents) with ``weights`` into the new adapter ``name``."""

    tasks: list[str]
    weights: list[float]
    name: str
    method: str
    density: float | None
    svd_rank: int | None

    def details(self) -> dict[str, Any]:
        """What the merged adapter's record says about how it was made."""
        return {
            "parents": self.tasks,
            "weights": self.weights,
            "method": self.method,
            "density": self.density,
            "svd_rank": self.svd_rank,
        }


def plan_merge(
    tasks: Sequence[str],
    weights: Sequence[float] | None,
    method: str,
    name: str | None,
    *,
    density: float | None,
    svd_rank: int | None,
) -> MergePlan:
    """The merge's arguments checked, with their defaults: equal weights, a name from the parents and the
    method, density 0.5 for the methods that prune."""
    tasks = [check_task_name(t) for t in tasks]
    if method not in MERGE_METHODS:
        raise LifelongError(f"unknown merge method '{method}'; choose one of: {', '.join(MERGE_METHODS)}")
    if not tasks or len(set(tasks)) != len(tasks):
        raise LifelongError(f"merge needs one or more distinct tasks, got {tasks}")
    weights = [1.0 / len(tasks)] * len(tasks) if weights is None else [float(w) for w in weights]
    if len(weights) != len(tasks) or not all(math.isfinite(w) for w in weights):
        raise LifelongError(f"merge needs one finite weight per task: {len(tasks)} tasks, weights {weights}")
    if density is not None and not 0.0 < density <= 1.0:
        raise LifelongError(f"density must be in (0, 1], got {density}")
    name = check_task_name(name or f"{'-'.join(tasks)}-{method}"[:64].rstrip("-_"))
    if method in DENSITY_METHODS and density is None:
        density = 0.5
    return MergePlan(tasks, weights, name, method, density, svd_rank)


def merge_parents(
    root: Path, plan: MergePlan, kind: str, checked_meta: Callable[[str], dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """The records of the adapters of ``root`` to merge, refusing any merge that cannot work;
    ``checked_meta`` reads one and refuses a foreign base or missing files."""
    if (root / plan.name).exists():
        raise LifelongError(f"an adapter named '{plan.name}' already exists in {root}; pass another name")
    if kind == "classification":
        raise LifelongError(
            "classifier adapters each carry their own head (modules_to_save), and PEFT cannot merge heads; "
            "merge causal-LM adapters, or use route() to pick a classifier's adapter per example"
        )
    metas = {task: read_meta(adapter_folder(root, task)) for task in plan.tasks}
    check_same_base(metas)
    for task in plan.tasks:
        checked_meta(task)
    check_ranks(plan.method, {task: adapter_rank(adapter_folder(root, task)) for task in plan.tasks})
    return metas


def check_same_base(metas: Mapping[str, dict[str, Any]]) -> None:
    bases = {t: (m["base"].get("config_hash"), m["base"].get("name")) for t, m in metas.items()}
    if len({h for h, _ in bases.values()}) > 1:
        listed = ", ".join(f"{t} on {n!r} ({h})" for t, (h, n) in bases.items())
        raise LifelongError(f"cannot merge adapters trained on different base models: {listed}")


def check_ranks(method: str, ranks: Mapping[str, int]) -> None:
    if method in SAME_RANK_METHODS and len(set(ranks.values())) > 1:
        listed = ", ".join(f"{t} r={r}" for t, r in ranks.items())
        raise LifelongError(
            f"method '{method}' combines the LoRA factors themselves and needs equal ranks, got {listed}; "
            "use method='cat' (exact, any ranks) or 'svd'"
        )


def add_merged_adapter(peft: PeftModel, plan: MergePlan) -> None:
    """The merge of ``plan.tasks`` as ``peft``'s adapter ``plan.name``: active, frozen and in eval mode."""
    with _peft_call():
        peft.add_weighted_adapter(
            adapters=plan.tasks,
            weights=plan.weights,
            adapter_name=plan.name,
            combination_type=plan.method,
            svd_rank=plan.svd_rank,
            svd_full_matrices=False,  # the same leading singular vectors, much cheaper
            density=plan.density,
        )
    peft.set_adapter(plan.name)
    freeze(peft)
    peft.eval()


def export_merged(peft: PeftModel, task: str, target: Path, tokenizer: Any, meta: dict[str, Any]) -> None:
    """``peft``'s base with ``task``'s update folded in, saved to ``target``; ``peft`` itself stays as it is."""
    clone = copy.deepcopy(peft)
    clone.set_adapter(task)
    with _quiet_warnings():
        merged = clone.merge_and_unload(adapter_names=[task])
    save_export(merged, tokenizer, target, task, meta)
