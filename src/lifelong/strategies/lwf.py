"""Placeholder until the strategy lands."""

from __future__ import annotations

from lifelong.strategies.base import Strategy


class LwF(Strategy):
    """Not implemented yet."""

    name = "lwf"

    def __init__(self) -> None:
        raise NotImplementedError("lwf is not implemented yet")
