"""How exact the dense network's arithmetic is: the float32 switch for TF32, and the
table of what each fast mode costs.

On CUDA, cuDNN convolutions run in TF32 by default (10-bit mantissa): heatmaps drift by
about 1e-3 from the CPU's float32 result (measured on an H200: 1.7e-3 with logits up to
1.8). milsil promises exact heatmaps by default, so every dense forward pass runs under
:func:`fp32_precision`: ``exact`` turns TF32 off for convolutions and matmuls, ``tf32``
turns it on (the fast mode, which says what it costs), and the caller's own settings are
back as soon as the pass returns, even between the bands of a generator.

The settings are process-wide (PyTorch's ``fp32_precision`` flags). Passes of one mode
may overlap (a server computes one band per device at once, on several devices): the
first pass in sets the flags, the last one out restores the caller's. Passes of
different modes must not overlap in one process; one that tries is refused. Only
PyTorch's newer per-backend API is used: mixing it with the legacy ``allow_tf32``
setters is an error in recent PyTorch.

A heatmap's *mode* (:data:`MODES`) is what the server's heatmap header and the CLIs
report: ``exact`` (float32, TF32 off), ``tf32`` (float32 with TF32 on CUDA) or ``bf16``
(the network in bfloat16). :data:`EXPECTED_MAX_LOGIT_DEVIATION` says what each costs.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from milsil.errors import MilsilError

#: The float32 modes of a heatmap, most exact first.
PRECISIONS = ("exact", "tf32")

#: A heatmap's arithmetic, most exact first: the float32 modes, then bfloat16.
MODES = ("exact", "tf32", "bf16")

#: Largest |logit - CPU float32 logit| to expect from each mode. ``exact``: the README's
#: promise (1e-4; the H200 run measured 4.4e-6 with TF32 off). ``tf32`` and ``bf16``:
#: measured once, on one NVIDIA H200 (torch 2.11, CUDA 13), BagNet-9 width 64, a 256 x 256
#: region with logits up to 1.8 (issue 16's table): cuDNN's default TF32 1.7e-3, bfloat16
#: 2.4e-2. On a CPU ``tf32`` changes nothing (CPUs have no TF32): its result is exact.
EXPECTED_MAX_LOGIT_DEVIATION = {"exact": 1e-4, "tf32": 1.7e-3, "bf16": 2.4e-2}

_lock = threading.Lock()
_active = {"value": "", "count": 0}  # the flags' value while passes run, and how many
_saved: list[str] = []  # the caller's settings, restored when the last pass ends


def _flags() -> list[object]:
    """The backends whose float32 mode a dense pass sets: cuDNN convolutions, CUDA matmuls."""
    return [torch.backends.cudnn.conv, torch.backends.cuda.matmul]


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise MilsilError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    return precision


def check_mode(mode: str) -> str:
    """``mode`` when it is one of :data:`MODES`; a message naming them otherwise."""
    if mode not in MODES:
        raise MilsilError(f"the heatmap mode must be one of {', '.join(MODES)}; got {mode!r}")
    return mode


def mode_arithmetic(mode: str) -> tuple[str, bool]:
    """``(precision, bf16)``, the arguments of :func:`~milsil.inference.heatmap.
    iter_logit_bands` that compute a heatmap in ``mode`` (the inverse of
    :func:`heatmap_mode`): bfloat16 leaves float32 exact for what it does not cover."""
    return ("exact", True) if check_mode(mode) == "bf16" else (mode, False)


def heatmap_mode(precision: str = "exact", bf16: bool = False) -> str:
    """The mode (:data:`MODES`) of a heatmap computed with these arguments: bfloat16 wins
    (its network has no float32 arithmetic left for TF32 to change)."""
    return "bf16" if bf16 else check_precision(precision)


def fast_mode(tf32: bool, bf16: bool) -> str:
    """The mode chosen by a CLI's ``--tf32`` / ``--bf16`` flags (neither: ``exact``)."""
    if tf32 and bf16:
        raise MilsilError("--tf32 and --bf16 are two fast modes; choose one (neither: exact)")
    return "bf16" if bf16 else "tf32" if tf32 else "exact"


@contextmanager
def fp32_precision(precision: str = "exact") -> Iterator[None]:
    """Run the block with TF32 off (``exact``) or on (``tf32``) for convolutions and matmuls,
    then restore what the caller had (once no other pass of the same mode still runs). No
    effect on CPU arithmetic (CPUs have no TF32)."""
    value = "ieee" if check_precision(precision) == "exact" else "tf32"
    flags = _flags()
    with _lock:
        if _active["count"] and _active["value"] != value:
            running = "exact" if _active["value"] == "ieee" else "tf32"
            raise MilsilError(
                f"a {running} pass is running in this process; a {precision} pass cannot "
                "overlap it (PyTorch's TF32 switch is process-wide): use one mode per process"
            )
        if not _active["count"]:
            _saved[:] = [flag.fp32_precision for flag in flags]
            for flag in flags:
                flag.fp32_precision = value
            _active["value"] = value
        _active["count"] += 1
    try:
        yield
    finally:
        with _lock:
            _active["count"] -= 1
            if not _active["count"]:
                for flag, old in zip(flags, _saved, strict=True):
                    flag.fp32_precision = old
