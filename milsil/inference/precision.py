"""How exact the dense network's float32 arithmetic is: the one switch for TF32.

On CUDA, cuDNN convolutions run in TF32 by default (10-bit mantissa): heatmaps drift by
about 1e-3 from the CPU's float32 result (measured on an H200: 1.7e-3 with logits up to
1.8). milsil promises exact heatmaps by default, so every dense forward pass runs under
:func:`fp32_precision`: ``exact`` turns TF32 off for convolutions and matmuls, ``tf32``
turns it on (the fast mode, which says what it costs), and the caller's own settings are
back as soon as the pass returns, even between the bands of a generator.

The settings are process-wide (PyTorch's ``fp32_precision`` flags), so two passes of
different modes must not overlap in time on one process; the server runs one pass per
device at a time. Only PyTorch's newer per-backend API is used: mixing it with the legacy
``allow_tf32`` setters is an error in recent PyTorch.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from milsil.errors import MilsilError

#: The float32 modes of a heatmap, most exact first.
PRECISIONS = ("exact", "tf32")


def _flags() -> list[object]:
    """The backends whose float32 mode a dense pass sets: cuDNN convolutions, CUDA matmuls."""
    return [torch.backends.cudnn.conv, torch.backends.cuda.matmul]


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise MilsilError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    return precision


@contextmanager
def fp32_precision(precision: str = "exact") -> Iterator[None]:
    """Run the block with TF32 off (``exact``) or on (``tf32``) for convolutions and matmuls,
    then restore what the caller had. No effect on CPU arithmetic (CPUs have no TF32)."""
    value = "ieee" if check_precision(precision) == "exact" else "tf32"
    flags = _flags()
    saved = [flag.fp32_precision for flag in flags]
    try:
        for flag in flags:
            flag.fp32_precision = value
        yield
    finally:
        for flag, old in zip(flags, saved, strict=True):
            flag.fp32_precision = old
