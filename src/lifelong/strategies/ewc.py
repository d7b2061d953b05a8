"""Placeholder until the strategy lands."""

from __future__ import annotations

from lifelong.strategies.base import Strategy


class EWC(Strategy):
    """Not implemented yet."""

    name = "ewc"

    def __init__(self) -> None:
        raise NotImplementedError("ewc is not implemented yet")
