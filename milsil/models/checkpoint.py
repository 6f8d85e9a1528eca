"""Checkpoints: config + weights + provenance, written atomically, read with weights_only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from milsil.atomic import atomic_write
from milsil.errors import CheckpointError, NotFoundError
from milsil.models.mil import ConfiguredModel, ModelConfig

CHECKPOINT_FORMAT = "milsil-checkpoint"
CHECKPOINT_VERSION = 1


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` so that a crash leaves either the old file or the new one."""
    atomic_write(path, lambda fh: torch.save(obj, fh))


def save_checkpoint(
    model: ConfiguredModel,
    path: str | Path,
    provenance: dict[str, Any] | None = None,
    training_state: dict[str, Any] | None = None,
) -> Path:
    """Save a model with its config (architecture, classes, normalization) and provenance.

    ``provenance``: plain values (strings, numbers, lists, dicts) describing how the model
    was made. ``training_state``: optimizer/scheduler state for resuming, plain tensors only.
    """
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "config": model.config.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "provenance": provenance or {},
    }
    if training_state is not None:
        payload["training_state"] = training_state
    atomic_torch_save(payload, path)
    return Path(path)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read and validate a checkpoint's payload (tensors on CPU), without building a model."""
    path = Path(path)
    if not path.is_file():
        raise NotFoundError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{path} is not a readable milsil checkpoint (corrupt, truncated or foreign file): {first}"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path} is not a milsil checkpoint (no '{CHECKPOINT_FORMAT}' marker); "
            "write checkpoints with milsil.models.save_checkpoint"
        )
    if payload.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint version {payload.get('version')!r}; this milsil reads version {CHECKPOINT_VERSION}"
        )
    return payload


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> ConfiguredModel:
    """Rebuild the model a checkpoint describes, in eval mode, with its weights."""
    from milsil.models.registry import create_model

    payload = read_checkpoint(path)
    try:
        config = ModelConfig.from_dict(payload["config"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path} has an invalid model config: {exc}") from None
    model = create_model(
        config.arch,
        num_classes=config.num_classes,
        head=config.head,
        width=config.width,
        class_names=config.class_names,
        mean=config.mean,
        std=config.std,
    )
    try:
        model.load_state_dict(payload["state_dict"])
    except (RuntimeError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0][:200]
        raise CheckpointError(f"{path}: weights do not match its config ({first})") from None
    model.provenance = payload.get("provenance", {})  # type: ignore[attr-defined]
    return model.to(map_location).eval()
