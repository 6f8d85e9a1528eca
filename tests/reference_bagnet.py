"""An independent transcription of the official BagNet (Brendel & Bethge), for the tests.

Written by hand from the reference repository's ``bagnets/pytorchnet.py``
(github.com/wielandbrendel/bag-of-local-features-models), NOT from milsil's classes: the
names and shapes of every tensor, the geometry of every convolution, and a functional
forward pass over a state dict. Tests compare milsil's BagNet with this.

What the reference says, in words:

* stem: ``conv1`` 1x1 3->64, ``conv2`` 3x3 64->64, both without bias or padding, then
  ``bn1`` (momentum 0.001) and ReLU; no max-pool;
* four stages ``layer1..layer4`` of [3, 4, 6, 3] bottlenecks with planes 64, 128, 256,
  512 (expansion 4), strides [2, 2, 2, 1] on each stage's first block;
* a bottleneck: ``conv1`` 1x1 -> ``bn1`` -> ReLU -> ``conv2`` kxk with the block's stride
  and padding 0 -> ``bn2`` -> ReLU -> ``conv3`` 1x1 to 4*planes -> ``bn3``; the residual is
  the input, or ``downsample`` (``0``: 1x1 conv with the stride, ``1``: BN) when the stride
  is not 1 or the channels change (the first block of every stage); when the residual is
  larger it is cropped by ``diff`` at the bottom and right (``[:, :, :-diff, :-diff]``);
  add, ReLU;
* k = 3 for the first ``kernel3[stage]`` blocks of a stage, else 1; BagNet-9 [1, 1, 0, 0],
  BagNet-17 [1, 1, 1, 0], BagNet-33 [1, 1, 1, 1];
* head: average over the whole map, then ``fc`` (2048 -> classes);
* init: convs N(0, sqrt(2 / (k * k * out_channels))), BN weight 1 and bias 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

KERNEL3 = {"bagnet9": (1, 1, 0, 0), "bagnet17": (1, 1, 1, 0), "bagnet33": (1, 1, 1, 1)}
BLOCKS = (3, 4, 6, 3)
PLANES = (64, 128, 256, 512)
STRIDES = (2, 2, 2, 1)


def _bn(name: str, n: int, tracked: bool) -> list[tuple[str, tuple[int, ...]]]:
    out = [(f"{name}.{k}", (n,)) for k in ("weight", "bias", "running_mean", "running_var")]
    return out + ([(f"{name}.num_batches_tracked", ())] if tracked else [])


def convs(arch: str, width: int = 64) -> list[tuple[str, int, int, int, int, int]]:
    """Every convolution: ``(name, in, out, kernel, stride, padding)`` in forward order."""
    scale = width / 64
    stem = int(64 * scale)
    out = [("conv1", 3, stem, 1, 1, 0), ("conv2", stem, stem, 3, 1, 0)]
    inplanes = stem
    for s, (blocks, planes, stride) in enumerate(zip(BLOCKS, PLANES, STRIDES, strict=True)):
        planes = int(planes * scale)
        for b in range(blocks):
            k = 3 if b < KERNEL3[arch][s] else 1
            st = stride if b == 0 else 1
            name = f"layer{s + 1}.{b}"
            out += [
                (f"{name}.conv1", inplanes, planes, 1, 1, 0),
                (f"{name}.conv2", planes, planes, k, st, 0),
                (f"{name}.conv3", planes, 4 * planes, 1, 1, 0),
            ]
            if b == 0:
                out.append((f"{name}.downsample.0", inplanes, 4 * planes, 1, st, 0))
            inplanes = 4 * planes
    return out


def layout(
    arch: str, width: int = 64, classes: int = 1000, tracked: bool = True
) -> dict[str, tuple[int, ...]]:
    """Every tensor of the reference model's state dict: ``name -> shape``."""
    shapes: dict[str, tuple[int, ...]] = {}
    for name, cin, cout, k, _, _ in convs(arch, width):
        shapes[f"{name}.weight"] = (cout, cin, k, k)
        if name == "conv2":
            bn = "bn1"
        elif name.endswith("downsample.0"):
            bn = name[: -len("0")] + "1"
        else:
            bn = name.replace("conv", "bn")
        if name != "conv1":
            shapes.update(_bn(bn, cout, tracked))
    features = int(2048 * width / 64)
    shapes["fc.weight"] = (classes, features)
    shapes["fc.bias"] = (classes,)
    return shapes


def random_state(
    arch: str, width: int = 64, classes: int = 1000, seed: int = 0, tracked: bool = True
) -> dict[str, torch.Tensor]:
    """A state dict in the reference layout with arbitrary values (positive variances)."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in layout(arch, width, classes, tracked).items():
        if name.endswith("num_batches_tracked"):
            state[name] = torch.tensor(7)
        elif name.endswith("running_var"):
            state[name] = torch.rand(shape, generator=gen) + 0.5
        else:
            state[name] = torch.randn(shape, generator=gen) * 0.1
    return state


def forward(state: dict[str, torch.Tensor], arch: str, x: torch.Tensor) -> torch.Tensor:
    """The reference forward pass (eval-mode BatchNorm) over ``state``: logits ``[B, C]``."""

    def bn(t: torch.Tensor, name: str) -> torch.Tensor:
        return F.batch_norm(
            t,
            state[f"{name}.running_mean"],
            state[f"{name}.running_var"],
            state[f"{name}.weight"],
            state[f"{name}.bias"],
            training=False,
            eps=1e-5,
        )

    geometry = {name: (stride, pad) for name, _, _, _, stride, pad in convs(arch, 64)}

    def conv(t: torch.Tensor, name: str) -> torch.Tensor:
        stride, pad = geometry[name]
        return F.conv2d(t, state[f"{name}.weight"], stride=stride, padding=pad)

    x = F.relu(bn(conv(conv(x, "conv1"), "conv2"), "bn1"))
    for s, blocks in enumerate(BLOCKS):
        for b in range(blocks):
            p = f"layer{s + 1}.{b}"
            out = F.relu(bn(conv(x, f"{p}.conv1"), f"{p}.bn1"))
            out = F.relu(bn(conv(out, f"{p}.conv2"), f"{p}.bn2"))
            out = bn(conv(out, f"{p}.conv3"), f"{p}.bn3")
            residual = x
            if f"{p}.downsample.0.weight" in state:
                residual = bn(conv(x, f"{p}.downsample.0"), f"{p}.downsample.1")
            if residual.size(-1) != out.size(-1):
                diff = residual.size(-1) - out.size(-1)
                residual = residual[:, :, :-diff, :-diff]
            x = F.relu(out + residual)
    pooled = x.mean(dim=(2, 3))
    return F.linear(pooled, state["fc.weight"], state["fc.bias"])
