"""What a training run tells its caller: a :class:`TrainProgress` snapshot after every step
and epoch (the CLI's lines, the server's job progress), and the :class:`TrainResult` it
returns."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class TrainProgress:
    """A snapshot of a running training, sent to the ``progress`` callback.

    ``event`` is ``step`` (after every optimisation step), ``epoch`` (after an epoch's
    validation; the val_* fields are then current) or ``end`` (state finished/cancelled).
    ``epoch`` counts from 1; ``step`` is the step within the epoch (1..steps_per_epoch).
    """

    state: str = "running"
    epoch: int = 0
    epochs: int = 0
    step: int = 0
    steps_per_epoch: int = 0
    loss: float = math.nan
    sil_accuracy: float = math.nan
    mil_accuracy: float = math.nan
    val_sil_accuracy: float = math.nan
    val_mil_accuracy: float = math.nan
    val_mil_auroc: float = math.nan
    eta_seconds: float = math.nan
    elapsed_seconds: float = 0.0
    event: str = "step"
    bags_per_second: float = math.nan  # the epoch's, on ``epoch`` events

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TrainResult:
    """Where a run left its checkpoints, its per-epoch history, and whether it was stopped."""

    best_checkpoint: Path
    last_checkpoint: Path
    history: list[dict[str, Any]] = field(default_factory=list)
    stopped: bool = False
    best_epoch: int = 0
    out_dir: Path | None = None


def nan_if_none(value: Any) -> float:
    return math.nan if value is None else float(value)


def val_fields(row: dict[str, Any]) -> dict[str, float]:
    """The validation fields of a :class:`TrainProgress` from a history row."""
    return {
        k: nan_if_none(row.get(k))
        for k in ("val_sil_accuracy", "val_mil_accuracy", "val_mil_auroc")
    }
