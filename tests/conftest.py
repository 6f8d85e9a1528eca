"""Shared fixtures: small models with non-trivial BatchNorm statistics."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from milsil.models import create_model


def randomize_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm arbitrary statistics and affine parameters (eval-mode exactness)."""
    gen = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.rand(n, generator=gen) - 0.5)
            module.running_var.copy_(torch.rand(n, generator=gen) * 1.5 + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=gen) + 0.5)
            module.bias.data.copy_(torch.rand(n, generator=gen) * 0.6 - 0.3)
    return model.eval()


@pytest.fixture
def small_bagnet():
    """A width-8 BagNet-9 with 3 classes and random BatchNorm statistics."""

    def make(arch: str = "bagnet9", num_classes: int = 3, width: int = 8, seed: int = 0):
        torch.manual_seed(seed)
        return randomize_batchnorm(create_model(arch, num_classes, width=width), seed)

    return make
