"""Plain fine-tuning, task after task: the lower bound every method must beat."""

from __future__ import annotations

from lifelong.core.strategy import Strategy


class Naive(Strategy):
    """Plain fine-tuning on each task in turn (the lower bound: it forgets)."""

    name = "naive"
    supports = frozenset({"classifier", "causal-lm"})
