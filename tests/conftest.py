"""Shared fixtures: small models with non-trivial BatchNorm statistics; the umask."""

from __future__ import annotations

import os

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


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """One intra-op thread: servers, spawned trainers and JVMs share the 2 CI cores, and
    OpenMP threads that spin-wait for a busy core make everything several times slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# What a plain open() gives a new file under each umask the mode tests use.
OPEN_MODE = {0o022: 0o644, 0o077: 0o600}


@pytest.fixture(params=sorted(OPEN_MODE), ids=lambda m: f"umask{m:03o}")
def umask(request):
    """Run the test under umask 022 and again under 077 (the process's umask, restored)."""
    previous = os.umask(request.param)
    yield request.param
    os.umask(previous)
