"""BagNet (Brendel & Bethge, ICLR 2019) and its ResNet-50 sibling, as feature extractors.

BagNet is a ResNet-50 whose convolutions are mostly 1x1 and never padded, so every
feature vector of the last map sees only a small square of the input (9, 17 or 33
pixels). That locality is what makes the paper's per-pixel logit heatmaps exact.

The layout of parameters (``conv1``, ``bn1``, ``layer1.0.conv2`` ...) is the reference
implementation's, so a local copy of the official ImageNet weights loads directly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

BAGNET_KERNEL3 = {
    "bagnet9": (1, 1, 0, 0),
    "bagnet17": (1, 1, 1, 0),
    "bagnet33": (1, 1, 1, 1),
}
STAGE_BLOCKS = (3, 4, 6, 3)
STAGE_STRIDES = (2, 2, 2, 1)
# The reference BagNet's stem BatchNorm (``bn1``) has momentum 0.001 (all others 0.1).
STEM_BN_MOMENTUM = 0.001


def reference_init(module: nn.Module) -> None:
    """The reference BagNet's (and torchvision ResNet's) initialisation: He-normal convs,
    ``N(0, sqrt(2 / (k * k * out_channels)))``, BatchNorm weight 1 and bias 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / n))
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class Bottleneck(nn.Module):
    """1x1 -> kxk (stride s) -> 1x1 with a projection shortcut when shapes change.

    With ``padding=0`` (BagNet) the kxk convolution shrinks the map; the shortcut is then
    cropped at the bottom/right so that each output keeps the top-left input pixel of its
    window, exactly as the reference BagNet does.
    """

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        kernel_size: int = 1,
        padding: int = 0,
        downsample: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(
            planes, planes, kernel_size, stride=stride, padding=padding, bias=False
        )
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + crop_to(residual, out))


def crop_to(residual: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Crop ``residual`` at the bottom/right to the spatial size of ``out``."""
    h, w = out.shape[-2:]
    return residual[..., :h, :w]


class ResNetStages(nn.Module):
    """The four bottleneck stages shared by BagNet and ResNet-50."""

    def __init__(
        self,
        width: int,
        kernel3: Sequence[int] | None,
        padding: int,
        strides: Sequence[int] = STAGE_STRIDES,
    ) -> None:
        super().__init__()
        self.inplanes = width
        for stage, (blocks, stride) in enumerate(zip(STAGE_BLOCKS, strides, strict=True)):
            planes = width * 2**stage
            n3 = blocks if kernel3 is None else kernel3[stage]
            layer = self._make_layer(planes, blocks, stride, n3, padding)
            self.add_module(f"layer{stage + 1}", layer)

    def _make_layer(
        self, planes: int, blocks: int, stride: int, n3: int, padding: int
    ) -> nn.Sequential:
        out_planes = planes * Bottleneck.expansion
        downsample = None
        if stride != 1 or self.inplanes != out_planes:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, out_planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_planes),
            )
        layers = []
        for i in range(blocks):
            kernel = 3 if i < n3 else 1
            layers.append(
                Bottleneck(
                    self.inplanes,
                    planes,
                    stride=stride if i == 0 else 1,
                    kernel_size=kernel,
                    padding=padding if kernel == 3 else 0,
                    downsample=downsample if i == 0 else None,
                )
            )
            self.inplanes = out_planes
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


class BagNet(ResNetStages):
    """BagNet feature extractor: ``[M, 3, h, w] -> [M, 32*width, h', w']``.

    Stem: 1x1 conv 3->width, 3x3 conv (no padding), BN (momentum 0.001, as the
    reference), ReLU; no max-pool. Output stride 8; a ``receptive_field`` x
    ``receptive_field`` input gives a 1x1 map. Training from scratch initialises it as the
    reference does (:func:`reference_init`, applied by the training loop).
    """

    def __init__(self, kernel3: Sequence[int], width: int = 64) -> None:
        super().__init__(width, kernel3, padding=0)
        self.conv1 = nn.Conv2d(3, width, 1, bias=False)
        self.conv2 = nn.Conv2d(width, width, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width, momentum=STEM_BN_MOMENTUM)
        self.relu = nn.ReLU(inplace=True)
        self.kernel3 = tuple(kernel3)
        self.out_channels = width * 8 * Bottleneck.expansion
        self.receptive_field = bagnet_receptive_field(kernel3)
        self.output_stride = 8

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv2(self.conv1(x))))
        return super().forward(x)


def bagnet_receptive_field(kernel3: Sequence[int]) -> int:
    """Receptive field of a BagNet: 3 from the stem, then 2*jump for each 3x3 conv.

    A block's kxk conv is its strided one, so it sees the input at the jump (cumulative
    stride) before its own stride applies.
    """
    rf, jump = 3, 1
    for stage, stride in enumerate(STAGE_STRIDES):
        for block in range(kernel3[stage]):
            rf += 2 * jump
            if block == 0:
                jump *= stride
        if kernel3[stage] == 0:
            jump *= stride
    return rf


class ResNet50(ResNetStages):
    """torchvision's ResNet-50 body (7x7/2 stem, max-pool, padded 3x3 convs), any width.

    At width 64 its parameters and their names match ``torchvision.models.resnet50``;
    training from scratch initialises it as torchvision does (:func:`reference_init`).
    """

    def __init__(self, width: int = 64) -> None:
        super().__init__(width, None, padding=1)
        self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.out_channels = width * 8 * Bottleneck.expansion
        self.receptive_field = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return super().forward(x)
