"""Residual networks (He et al., "Deep Residual Learning for Image Recognition", 2016) that
take and return crumpets' sample dicts.

``forward(sample)`` reads ``sample[input_key]`` (NCHW; uint8 is scaled to [0, 1], float is
used as is), writes the logits to ``sample[output_key]`` and returns the sample;
``logits(x)`` is the same on a tensor.

- CIFAR ResNets (section 4.2 of the paper): a 3x3 stem with 16 channels, three stages of n
  basic blocks with 16, 32 and 64 channels (stride 2 at the start of stages 2 and 3),
  global average pooling, a linear layer; depth 6n + 2. Shortcuts that change shape
  subsample and zero-pad channels (the paper's option A), so they have no parameters.
- ImageNet ResNets: a 7x7 stride 2 stem with a 3x3 stride 2 max pool, four stages with 64,
  128, 256 and 512 channels (times 4 for bottlenecks), projection shortcuts (1x1 conv +
  batch norm) where the shape changes, the stride in the bottleneck's 3x3 conv.

Example:
    >>> net = resnet20(num_classes=10)
    >>> net({"image": torch.zeros(2, 3, 32, 32, dtype=torch.uint8)})["output"].shape
    torch.Size([2, 10])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ._sample import get

__all__ = [
    "BasicBlock",
    "Bottleneck",
    "CifarResNet",
    "ResNet",
    "resnet18",
    "resnet20",
    "resnet32",
    "resnet34",
    "resnet44",
    "resnet50",
    "resnet56",
    "resnet101",
    "resnet110",
    "resnet152",
]


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    # no bias: the batch norm that follows has one
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


class _PadShortcut(nn.Module):
    """Identity shortcut that subsamples by ``stride`` and appends zero channels."""

    def __init__(self, extra_channels: int, stride: int):
        super().__init__()
        self.extra_channels = extra_channels
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.extra_channels))


def _projection(in_channels: int, out_channels: int, stride: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
        nn.BatchNorm2d(out_channels),
    )


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm and a shortcut: ``relu(f(x) + shortcut(x))``.

    Args:
        in_channels: input channels.
        channels: output channels.
        stride: stride of the first convolution.
        pad_shortcut: if the shape changes, subsample and zero-pad (CIFAR) instead of a
            1x1 projection (ImageNet).
    """

    expansion = 1

    def __init__(
        self, in_channels: int, channels: int, stride: int = 1, pad_shortcut: bool = False
    ):
        super().__init__()
        self.conv1 = _conv3x3(in_channels, channels, stride)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = _conv3x3(channels, channels)
        self.bn2 = nn.BatchNorm2d(channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != channels:
            if pad_shortcut:
                self.shortcut = _PadShortcut(channels - in_channels, stride)
            else:
                self.shortcut = _projection(in_channels, channels, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (with the stride), 1x1 expand to ``4 * channels``, plus a shortcut.

    Args:
        in_channels: input channels.
        channels: channels of the 3x3 convolution; the output has 4 times as many.
        stride: stride of the 3x3 convolution.
    """

    expansion = 4

    def __init__(self, in_channels: int, channels: int, stride: int = 1):
        super().__init__()
        out_channels = channels * self.expansion
        self.conv1 = nn.Conv2d(in_channels, channels, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = _conv3x3(channels, channels, stride)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv3 = nn.Conv2d(channels, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = _projection(in_channels, out_channels, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


class _SampleNet(nn.Module):
    """Reads the image from a sample dict, writes the logits back."""

    fc: nn.Linear  # the last layer, made by the subclass

    def __init__(self, input_key: str, output_key: str):
        super().__init__()
        self.input_key = input_key
        self.output_key = output_key

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, sample: dict) -> dict:
        """Store the logits of ``sample[input_key]`` in ``sample[output_key]``.

        Raises:
            KeyError: if the sample has no ``input_key``.
            TypeError: for integer images other than uint8.
        """
        x = get(sample, self.input_key, self)
        if x.dtype == torch.uint8:
            x = x.to(self.fc.weight.dtype) / 255
        elif not x.is_floating_point():
            raise TypeError(f"{type(self).__name__} takes uint8 or float images, got {x.dtype}")
        sample[self.output_key] = self.logits(x)
        return sample

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)


class CifarResNet(_SampleNet):
    """The CIFAR ResNet of depth ``6 * num_blocks + 2`` (see the module docstring).

    Args:
        num_blocks: basic blocks per stage, >= 1.
        num_classes: number of logits.
        in_channels: image channels.
        input_key: key of the images in the sample.
        output_key: key the logits are stored under.
    """

    def __init__(
        self,
        num_blocks: int,
        num_classes: int = 10,
        in_channels: int = 3,
        input_key: str = "image",
        output_key: str = "output",
    ):
        super().__init__(input_key, output_key)
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {num_blocks!r}")
        self.conv1 = _conv3x3(in_channels, 16)
        self.bn1 = nn.BatchNorm2d(16)
        blocks: list[nn.Module] = []
        channels = 16
        for stage, width in enumerate((16, 32, 64)):
            for i in range(num_blocks):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(BasicBlock(channels, width, stride, pad_shortcut=True))
                channels = width
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(64, num_classes)
        self._init_weights()

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.blocks(x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class ResNet(_SampleNet):
    """An ImageNet ResNet (see the module docstring).

    Args:
        block: BasicBlock or Bottleneck.
        layers: blocks per stage, four numbers.
        num_classes: number of logits.
        in_channels: image channels.
        input_key: key of the images in the sample.
        output_key: key the logits are stored under.
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: Sequence[int],
        num_classes: int = 1000,
        in_channels: int = 3,
        input_key: str = "image",
        output_key: str = "output",
    ):
        super().__init__(input_key, output_key)
        if len(layers) != 4 or min(layers) < 1:
            raise ValueError(f"layers must be four numbers >= 1, got {list(layers)}")
        self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        blocks: list[nn.Module] = []
        channels = 64
        for stage, (width, n) in enumerate(zip((64, 128, 256, 512), layers)):
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(block(channels, width, stride))
                channels = width * block.expansion
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(channels, num_classes)
        self._init_weights()

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.max_pool2d(x, 3, stride=2, padding=1)
        x = self.blocks(x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def _cifar(n: int, num_classes: int, in_channels: int, input_key: str, output_key: str):
    return CifarResNet(n, num_classes, in_channels, input_key, output_key)


def resnet20(
    num_classes: int = 10,
    in_channels: int = 3,
    input_key: str = "image",
    output_key: str = "output",
) -> CifarResNet:
    """CIFAR ResNet-20 (3 blocks per stage, 0.27M parameters for 10 classes)."""
    return _cifar(3, num_classes, in_channels, input_key, output_key)


def resnet32(
    num_classes: int = 10,
    in_channels: int = 3,
    input_key: str = "image",
    output_key: str = "output",
) -> CifarResNet:
    """CIFAR ResNet-32 (5 blocks per stage)."""
    return _cifar(5, num_classes, in_channels, input_key, output_key)


def resnet44(
    num_classes: int = 10,
    in_channels: int = 3,
    input_key: str = "image",
    output_key: str = "output",
) -> CifarResNet:
    """CIFAR ResNet-44 (7 blocks per stage)."""
    return _cifar(7, num_classes, in_channels, input_key, output_key)


def resnet56(
    num_classes: int = 10,
    in_channels: int = 3,
    input_key: str = "image",
    output_key: str = "output",
) -> CifarResNet:
    """CIFAR ResNet-56 (9 blocks per stage)."""
    return _cifar(9, num_classes, in_channels, input_key, output_key)


def resnet110(
    num_classes: int = 10,
    in_channels: int = 3,
    input_key: str = "image",
    output_key: str = "output",
) -> CifarResNet:
    """CIFAR ResNet-110 (18 blocks per stage)."""
    return _cifar(18, num_classes, in_channels, input_key, output_key)


def resnet18(
    num_classes: int = 1000,
    in_channels: int = 3,
    input_key: str = "image",
    output_key: str = "output",
) -> ResNet:
    """ImageNet ResNet-18: basic blocks, (2, 2, 2, 2) per stage."""
    return ResNet(BasicBlock, (2, 2, 2, 2), num_classes, in_channels, input_key, output_key)


def resnet34(
    num_classes: int = 1000,
    in_channels: int = 3,
    input_key: str = "image",
    output_key: str = "output",
) -> ResNet:
    """ImageNet ResNet-34: basic blocks, (3, 4, 6, 3) per stage."""
    return ResNet(BasicBlock, (3, 4, 6, 3), num_classes, in_channels, input_key, output_key)


def resnet50(
    num_classes: int = 1000,
    in_channels: int = 3,
    input_key: str = "image",
    output_key: str = "output",
) -> ResNet:
    """ImageNet ResNet-50: bottlenecks, (3, 4, 6, 3) per stage."""
    return ResNet(Bottleneck, (3, 4, 6, 3), num_classes, in_channels, input_key, output_key)


def resnet101(
    num_classes: int = 1000,
    in_channels: int = 3,
    input_key: str = "image",
    output_key: str = "output",
) -> ResNet:
    """ImageNet ResNet-101: bottlenecks, (3, 4, 23, 3) per stage."""
    return ResNet(Bottleneck, (3, 4, 23, 3), num_classes, in_channels, input_key, output_key)


def resnet152(
    num_classes: int = 1000,
    in_channels: int = 3,
    input_key: str = "image",
    output_key: str = "output",
) -> ResNet:
    """ImageNet ResNet-152: bottlenecks, (3, 8, 36, 3) per stage."""
    return ResNet(Bottleneck, (3, 8, 36, 3), num_classes, in_channels, input_key, output_key)
