"""Placeholder until the strategy lands."""

from __future__ import annotations

from lifelong.strategies.base import Strategy


class AGEM(Strategy):
    """Not implemented yet."""

    name = "agem"

    def __init__(self) -> None:
        raise NotImplementedError("agem is not implemented yet")
