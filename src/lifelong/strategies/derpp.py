"""Placeholder until the strategy lands."""

from __future__ import annotations

from lifelong.strategies.base import Strategy


class DERPP(Strategy):
    """Not implemented yet."""

    name = "der++"

    def __init__(self) -> None:
        raise NotImplementedError("derpp is not implemented yet")
