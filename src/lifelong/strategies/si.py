"""Placeholder until the strategy lands."""

from __future__ import annotations

from lifelong.strategies.base import Strategy


class SI(Strategy):
    """Not implemented yet."""

    name = "si"

    def __init__(self) -> None:
        raise NotImplementedError("si is not implemented yet")
