"""Small reference models, built by name from a stream's input shape and class count."""

from __future__ import annotations

from collections.abc import Callable
from math import prod

import torch
from torch import nn

from lifelong.core.spec import Spec, bind, describe_options, parse_spec
from lifelong.errors import LifelongError
from lifelong.models.text import minilm, tiny_bert
from lifelong.models.vision import ImageInput, cnn, reduced_resnet18, torchvision_model


def mlp(input_shape: tuple[int, ...], num_classes: int, hidden: int = 256, depth: int = 2) -> nn.Module:
    """Multi-layer perceptron: `depth` hidden ReLU layers of width `hidden` (default 64-256-256-10 on digits)."""
    if hidden < 1 or depth < 0:
        raise LifelongError(f"mlp needs hidden >= 1 and depth >= 0, got hidden={hidden}, depth={depth}")
    layers: list[nn.Module] = [nn.Flatten()]
    width = prod(input_shape)
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def cnn1d(input_shape: tuple[int, ...], num_classes: int, channels: int = 32) -> nn.Module:
    """1-D convolutional network for sequences such as MNIST-1D (three conv layers, one linear head)."""
    if channels < 1:
        raise LifelongError(f"cnn1d needs channels >= 1, got {channels}")
    length = input_shape[-1]
    return nn.Sequential(
        nn.Unflatten(1, (1, length)) if len(input_shape) == 1 else nn.Identity(),
        nn.Conv1d(1 if len(input_shape) == 1 else input_shape[0], channels, 5, stride=2, padding=2),
        nn.ReLU(),
        nn.Conv1d(channels, channels, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv1d(channels, channels, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(channels * ((((length + 1) // 2 + 1) // 2 + 1) // 2), num_classes),
    )


MODELS: dict[str, Callable[..., nn.Module]] = {
    "mlp": mlp,
    "cnn1d": cnn1d,
    "cnn": cnn,
    "reduced-resnet18": reduced_resnet18,
    "torchvision": torchvision_model,
    "minilm": minilm,
    "tiny-bert": tiny_bert,
}


def model_options(name: str) -> list[tuple[str, object]]:
    return describe_options(MODELS[name], skip=("input_shape", "num_classes"))


def build_model(
    spec: str | Spec,
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    seed: int | None = None,
    normalize: tuple[list[float], list[float]] | None = None,
) -> nn.Module:
    """``build_model("mlp:hidden=512", (64,), 10, seed=0)``; unknown names or options raise `LifelongError`.

    With ``seed`` the initial weights are a function of it alone (drawn from a generator of their own,
    leaving the global one as it was); without, they come from torch's global generator. An image
    stream's ``normalize`` (its ``Stream.normalize``: channel means and deviations) puts an
    `ImageInput` first, which reads the stream's uint8 pixels.
    """
    spec = parse_spec(spec) if isinstance(spec, str) else spec
    if spec.name not in MODELS:
        raise LifelongError(f"unknown model '{spec.name}'; choose one of: {', '.join(MODELS)}")
    with torch.random.fork_rng(devices=[], enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        model: nn.Module = bind(
            MODELS[spec.name], spec, what="model", input_shape=tuple(input_shape), num_classes=num_classes
        )
    if normalize is not None:
        return nn.Sequential(ImageInput(*normalize), model)
    return model
