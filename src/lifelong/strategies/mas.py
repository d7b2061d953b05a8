"""Placeholder until the strategy lands."""

from __future__ import annotations

from lifelong.strategies.base import Strategy


class MAS(Strategy):
    """Not implemented yet."""

    name = "mas"

    def __init__(self) -> None:
        raise NotImplementedError("mas is not implemented yet")
