"""The frozen teacher of `LwF`: the model as it was when a task began.

Kept apart from ``lwf.py`` so that file stays the method's idea: this is mechanics (how to freeze a
model cheaply). `FrozenTeacher` serves causal LMs duck-typed (a forward taking ``input_ids`` and
returning ``.logits``, as Hugging Face models do), with no import of transformers.
"""

from __future__ import annotations

import copy
from typing import Any, cast

import torch
from torch import nn
from torch.func import functional_call

from lifelong.strategies.anchors import eval_mode

# What the teacher's forward is given of a batch: the inputs that decide the logits, not the labels.
_FORWARD_KEYS = ("input_ids", "attention_mask", "position_ids")


def frozen_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in eval mode that no gradient reaches."""
    teacher = copy.deepcopy(model).eval()
    teacher.requires_grad_(False)
    return teacher


def forward_inputs(inputs: dict[str, Any], rows: torch.Tensor | None = None) -> dict[str, Any]:
    """What the teacher's forward is given of a batch (of its ``rows`` only, when given)."""
    kwargs = {k: inputs[k] for k in _FORWARD_KEYS if k in inputs}
    return kwargs if rows is None else {k: v[rows] for k, v in kwargs.items()}


class FrozenTeacher:
    """A causal LM as it was when a task began, frozen.

    A model whose parameters all train is copied whole. One with frozen parameters (PEFT adapters on
    a frozen base) keeps only copies of the trainable tensors and calls the model itself with them in
    place of its own (`torch.func.functional_call`: nothing is overwritten, so the student's
    autograd graph stays valid): a copy of the base would double the memory of exactly the part
    that never changes.
    """

    def __init__(self, model: nn.Module) -> None:
        trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
        self.partial = len(trainable) < sum(1 for _ in model.parameters())
        self.copy: nn.Module | None = None
        self.saved: dict[str, torch.Tensor] = {}
        if self.partial:
            self.saved = {n: p.detach().clone() for n, p in trainable.items()}
        else:
            self.copy = frozen_copy(model)

    def logits(
        self, model: nn.Module, inputs: dict[str, Any], rows: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The teacher's logits on the batch, or on its ``rows`` only; ``model`` is the student,
        unwrapped (under DDP a second forward through the wrapper would be counted twice).

        The logits are constants to the loss (the KL never differentiates through the teacher), so
        no autograd state is kept for them.
        """
        kwargs = forward_inputs(inputs, rows)
        if self.copy is not None:
            # A model of its own: inference mode (no version counters or view tracking either) is
            # safe, as nothing it creates, a lazily built buffer included, reaches the student.
            with torch.inference_mode():
                return cast(torch.Tensor, self.copy(**kwargs, use_cache=False).logits)
        # The student's own modules run here: a buffer one of them builds lazily under inference mode
        # could not be saved for the student's backward later, so plain no_grad.
        with torch.no_grad(), eval_mode(model):
            out = functional_call(
                model, self.saved, args=(), kwargs={**kwargs, "use_cache": False}, strict=False
            )
        return cast(torch.Tensor, out.logits)
