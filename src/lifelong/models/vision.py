"""Image models: the reduced ResNet-18 of the continual-learning literature, a small CNN for
MNIST-sized inputs, any torchvision model by name, and the input layer that turns stored uint8 images
into normalised floats."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lifelong.errors import LifelongError


class ImageInput(nn.Module):
    """uint8 ``[N, C, H, W]`` pixels to floats normalised per channel: images stay four times smaller
    in memory and in replay buffers than as floats, and every model reads them alike."""

    reads_pixels = True  # what the Learner looks for before it feeds an image stream to a model
    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        shape = (1, len(mean), 1, 1)
        # Not persistent: they follow from the stream, so checkpoints hold only what training changes.
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(shape), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(shape), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # A channels-last input (numpy's transposes make them) crashes torch 2.13's CPU backward
        # through small convolutions; the standard layout costs nothing when x already has it.
        x = x.contiguous()
        if x.dtype == torch.uint8:
            x = x.float().div_(255)
        return (x - self.mean) / self.std


def _image_shape(input_shape: tuple[int, ...], model: str) -> tuple[int, int, int]:
    if len(input_shape) != 3:
        raise LifelongError(
            f"{model} reads images [channels, height, width], but this stream's inputs are "
            f"{list(input_shape)}; use mlp or cnn1d"
        )
    c, h, w = input_shape
    return c, h, w


class _Block(nn.Module):
    """ResNet's basic block: two 3x3 convolutions and a shortcut (projected where the shape changes)."""

    def __init__(self, inputs: int, outputs: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inputs, outputs, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(outputs)
        self.conv2 = nn.Conv2d(outputs, outputs, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(outputs)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or inputs != outputs:
            self.shortcut = nn.Sequential(
                nn.Conv2d(inputs, outputs, 1, stride, bias=False), nn.BatchNorm2d(outputs)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ReducedResNet18(nn.Module):
    """ResNet-18 with ``width`` (20) filters in its first stage instead of 64, and a 3x3 stem without
    pooling: the backbone of GEM (Lopez-Paz & Ranzato, 2017) that Mammoth and Avalanche use."""

    def __init__(self, channels: int, num_classes: int, width: int = 20) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
        )
        stages, inputs = [], width
        for stage, outputs in enumerate((width, 2 * width, 4 * width, 8 * width)):
            stride = 1 if stage == 0 else 2
            stages += [_Block(inputs, outputs, stride), _Block(outputs, outputs, 1)]
            inputs = outputs
        self.stages = nn.Sequential(*stages)
        self.head = nn.Linear(inputs, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = F.adaptive_avg_pool2d(self.stages(self.stem(x)), 1).flatten(1)
        out: torch.Tensor = self.head(features)
        return out


def reduced_resnet18(input_shape: tuple[int, ...], num_classes: int, width: int = 20) -> nn.Module:
    """Reduced ResNet-18 (GEM's; width 20) for CIFAR-sized images."""
    if width < 1:
        raise LifelongError(f"reduced-resnet18 needs width >= 1, got {width}")
    channels, _, _ = _image_shape(input_shape, "reduced-resnet18")
    return ReducedResNet18(channels, num_classes, width)


def cnn(input_shape: tuple[int, ...], num_classes: int, channels: int = 32, hidden: int = 128) -> nn.Module:
    """Small CNN for MNIST-sized images: two conv-pool stages and a hidden layer."""
    if channels < 1 or hidden < 1:
        raise LifelongError(f"cnn needs channels >= 1 and hidden >= 1, got {channels} and {hidden}")
    c, h, w = _image_shape(input_shape, "cnn")
    return nn.Sequential(
        nn.Conv2d(c, channels, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(channels, 2 * channels, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(2 * channels * (h // 4) * (w // 4), hidden),
        nn.ReLU(),
        nn.Linear(hidden, num_classes),
    )


def torchvision_model(input_shape: tuple[int, ...], num_classes: int, name: str = "resnet18") -> nn.Module:
    """Any ``torchvision.models`` architecture by name, with random weights (nothing is downloaded)."""
    _image_shape(input_shape, "torchvision")
    try:
        from torchvision import models
    except ImportError:
        raise LifelongError(
            "torchvision models need torchvision; pip install 'lifelong[vision]', or use reduced-resnet18 or cnn"
        ) from None
    if name not in models.list_models():
        raise LifelongError(f"torchvision has no model '{name}'; see torchvision.models.list_models()")
    model: nn.Module = models.get_model(name, weights=None, num_classes=num_classes)
    return model
