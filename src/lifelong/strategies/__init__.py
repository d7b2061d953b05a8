"""Strategies by name, and compositions such as ``replay+ewc``.

A new strategy is one file here and one line in `REGISTRY`.
"""

from __future__ import annotations

from collections.abc import Sequence

from lifelong.core.spec import Spec, bind, describe_options, parse_composition
from lifelong.core.strategy import Batch, Strategy
from lifelong.errors import LifelongError
from lifelong.strategies.agem import AGEM
from lifelong.strategies.derpp import DERPP
from lifelong.strategies.ewc import EWC
from lifelong.strategies.joint import Joint
from lifelong.strategies.lora import LoRA
from lifelong.strategies.lwf import LwF
from lifelong.strategies.mas import MAS
from lifelong.strategies.naive import Naive
from lifelong.strategies.replay import Replay
from lifelong.strategies.si import SI

REGISTRY: dict[str, type[Strategy]] = {
    "naive": Naive,
    "joint": Joint,
    "replay": Replay,
    "der++": DERPP,
    "ewc": EWC,
    "si": SI,
    "mas": MAS,
    "lwf": LwF,
    "agem": AGEM,
    "lora": LoRA,
}
ALIASES: dict[str, str] = {"distill": "lwf", "derpp": "der++"}


def strategy_options(name: str) -> list[tuple[str, object]]:
    cls = REGISTRY[name]
    return describe_options(cls, skip=("model",), aliases=cls.aliases)


def build_strategy(spec: Spec) -> Strategy:
    name = ALIASES.get(spec.name, spec.name)
    if name not in REGISTRY:
        raise LifelongError(f"unknown strategy '{spec.name}'; choose one of: {', '.join(REGISTRY)}")
    cls = REGISTRY[name]
    strategy: Strategy = bind(cls, spec, what="strategy", skip=("model",), aliases=cls.aliases)
    return strategy


def build_strategies(composition: str | Sequence[Spec]) -> list[Strategy]:
    """``"replay:buffer_size=200+ewc"`` -> ``[Replay(...), EWC(...)]``, refusing conflicting pairs."""
    specs = parse_composition(composition) if isinstance(composition, str) else list(composition)
    strategies = [build_strategy(spec) for spec in specs]
    claimed: dict[str, str] = {}
    for strategy in strategies:
        for resource in strategy.exclusive:
            if resource in claimed:
                raise LifelongError(
                    f"strategies '{claimed[resource]}' and '{strategy.name}' both change the {resource} "
                    "and cannot be combined; run them separately"
                )
            claimed[resource] = strategy.name
    return strategies


__all__ = [
    "AGEM",
    "DERPP",
    "EWC",
    "MAS",
    "REGISTRY",
    "SI",
    "Batch",
    "Joint",
    "LoRA",
    "LwF",
    "Naive",
    "Replay",
    "Strategy",
    "build_strategies",
    "build_strategy",
    "strategy_options",
]
