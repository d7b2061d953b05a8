"""What a checkpoint holds besides the weights, the same on every side: the strategies' state and
every random number generator, as (tensors, JSON) pairs that `lifelong.core.checkpoint` writes."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from lifelong.core.checkpoint import flatten_state, unflatten_state
from lifelong.core.strategy import Strategy
from lifelong.errors import LifelongError


def strategies_state(strategies: Sequence[Strategy], tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Every strategy's `state_dict` (its tensors moved into ``tensors``) and the strategies' names."""
    return {
        "strategies": [
            flatten_state(st.state_dict(), f"strategy{i}", tensors) for i, st in enumerate(strategies)
        ],
        "strategy_names": [st.name for st in strategies],
    }


def load_strategies(
    strategies: Sequence[Strategy], tree: Mapping[str, Any], tensors: dict[str, torch.Tensor]
) -> None:
    """Undo `strategies_state`, refusing a checkpoint of other strategies."""
    names = [st.name for st in strategies]
    if tree["strategy_names"] != names:
        raise LifelongError(
            f"checkpoint holds strategies {tree['strategy_names']}, this run has {names}; resume with the same strategies"
        )
    for strategy, state in zip(strategies, tree["strategies"], strict=True):
        strategy.load_state_dict(unflatten_state(state, tensors))


def rng_state(
    tensors: dict[str, torch.Tensor], generators: Mapping[str, torch.Generator] | None = None
) -> dict[str, Any]:
    """torch's (CPU and CUDA), NumPy's and Python's global RNG states, plus ``generators`` by name."""
    rng: dict[str, Any] = {name: g.get_state() for name, g in (generators or {}).items()}
    rng["torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    return {
        "rng": flatten_state(rng, "rng", tensors),
        "numpy_rng": [kind, np.asarray(keys).tolist(), pos, has_gauss, cached],
        "python_rng": random.getstate(),
    }


def restore_rng(
    tree: Mapping[str, Any],
    tensors: dict[str, torch.Tensor],
    generators: Mapping[str, torch.Generator] | None = None,
) -> None:
    """Undo `rng_state`; a generator the checkpoint has no state for keeps its own."""
    rng = unflatten_state(tree["rng"], tensors)
    for name, generator in (generators or {}).items():
        if name in rng:
            generator.set_state(rng[name])
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    kind, keys, pos, has_gauss, cached = tree["numpy_rng"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss = tree["python_rng"]
    random.setstate((version, tuple(internal), gauss))


def seed_all(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global RNGs (torch's CUDA ones too)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
