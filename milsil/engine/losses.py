"""The training losses of the paper: per-patch (SIL), per-bag (MIL), and their sum."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from milsil.errors import MilsilError
from milsil.models import HEADS, BagOutput


def bag_loss(
    output: BagOutput, labels: torch.Tensor, head: str
) -> tuple[torch.Tensor, dict[str, float]]:
    """Cross-entropy for ``head``; returns the loss and its parts (for logging).

    ``sil`` gives every patch its bag's label; ``mil`` uses only the bag logits (so the
    per-patch logits receive gradient only through the bag mean); ``milsil`` sums both, as
    the paper trains its proposed model.
    """
    if head not in HEADS:
        raise MilsilError(f"unknown head {head!r}; allowed: {', '.join(HEADS)}")
    parts: dict[str, float] = {}
    total = None
    if head in ("sil", "milsil"):
        if output.sil_logits is None:
            raise MilsilError(
                f"head {head!r} needs per-patch logits; this model has none (use head 'mil')"
            )
        b, n, c = output.sil_logits.shape
        sil = F.cross_entropy(
            output.sil_logits.reshape(b * n, c).float(), labels.repeat_interleave(n)
        )
        parts["sil_loss"] = float(sil.detach())
        total = sil
    if head in ("mil", "milsil"):
        mil = F.cross_entropy(output.mil_logits.float(), labels)
        parts["mil_loss"] = float(mil.detach())
        total = mil if total is None else total + mil
    assert total is not None
    return total, parts
