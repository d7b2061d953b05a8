"""Placeholder until the strategy lands."""

from __future__ import annotations

from lifelong.strategies.base import Strategy


class Replay(Strategy):
    """Not implemented yet."""

    name = "replay"

    def __init__(self) -> None:
        raise NotImplementedError("replay is not implemented yet")
