"""Checkpoints: config + weights + provenance (+ the familiarity reference,\n:mod:`milsil.models.familiarity`), written atomically, read with weights_only."""

from __future__ import annotations

from copy import deepcopy
from pathlib import Path
from typing import Any

import torch

from milsil.atomic import atomic_write
from milsil.errors import CheckpointError, MilsilError, NotFoundError, compact
from milsil.models.familiarity import (
    FAMILIARITY_KEY,
    model_familiarity,
    payload_familiarity,
    set_model_familiarity,
)
from milsil.models.mil import ConfiguredModel, ModelConfig
from milsil.models.stain import STAIN_KEY, StainTarget, model_stain, set_model_stain

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
    atomic_torch_save(checkpoint_payload(model, provenance, training_state), path)
    return Path(path)


def checkpoint_payload(
    model: ConfiguredModel,
    provenance: dict[str, Any] | None = None,
    training_state: dict[str, Any] | None = None,
    copy: bool = False,
) -> dict[str, Any]:
    """What :func:`save_checkpoint` writes. With ``copy`` every tensor is a copy of its own
    (weights on the CPU), so the payload can be written while training goes on changing
    the model and optimizer in place."""
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "config": model.config.to_dict(),
        "state_dict": {k: v.detach().to("cpu", copy=copy) for k, v in model.state_dict().items()},
        "provenance": provenance or {},
    }
    stain = model_stain(model)
    if stain is not None:
        payload[STAIN_KEY] = stain.to_payload()
    if training_state is not None:
        payload["training_state"] = deepcopy(training_state) if copy else training_state
    reference = model_familiarity(model)
    if reference is not None:  # older readers ignore the key; older files lack it
        payload[FAMILIARITY_KEY] = reference.to_payload()
    return payload


def read_checkpoint(path: str | Path, label: str | None = None) -> dict[str, Any]:
    """Read and validate a checkpoint's payload (tensors on CPU), without building a model.

    ``label`` names the file in messages instead of its path (a server names an upload by
    the request field, never by the temporary file it was written to).
    """
    path = Path(path)
    name = label or str(path)
    if not path.is_file():
        raise NotFoundError(f"checkpoint not found: {name}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        if label:
            first = first.replace(str(path), label)
        raise CheckpointError(
            f"{name} is not a readable milsil checkpoint (corrupt, truncated or foreign file): {first}"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{name} is not a milsil checkpoint (no '{CHECKPOINT_FORMAT}' marker); "
            "write checkpoints with milsil.models.save_checkpoint"
        )
    if payload.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{name} has checkpoint version {compact(payload.get('version'))}; "
            f"this milsil reads version {CHECKPOINT_VERSION}"
        )
    return payload


def checkpoint_config(payload: dict[str, Any], name: str) -> ModelConfig:
    """A payload's model config, validated (architecture, head, class count, width bounds)."""
    from milsil.models.registry import make_config

    raw = payload.get("config")
    try:
        if not isinstance(raw, dict):
            raise TypeError("not a mapping")
        config = ModelConfig.from_dict(raw)
        # make_config checks the bounds before anything is built.
        return make_config(
            config.arch,
            config.num_classes,
            config.head,
            config.width,
            config.class_names,
            config.mean,
            config.std,
        )
    except MilsilError as exc:
        raise CheckpointError(f"{name} has an invalid model config: {exc}") from None
    except (KeyError, TypeError, ValueError, OverflowError) as exc:
        detail = f"missing {exc}" if isinstance(exc, KeyError) else str(exc)[:200]
        raise CheckpointError(f"{name} has an invalid model config: {detail}") from None


def check_weights(config: ModelConfig, state: Any, name: str) -> None:
    """Every tensor of ``state`` has the name and shape ``config``'s model expects.

    The model is built on the meta device (no memory), so a checkpoint that claims a huge
    model but holds small tensors is refused before anything is allocated.
    """
    from milsil.models.registry import create_model

    if not isinstance(state, dict):
        raise CheckpointError(f"{name} holds no state_dict of tensors")
    with torch.device("meta"):
        skeleton = create_model(
            config.arch,
            num_classes=config.num_classes,
            head=config.head,
            width=config.width,
            class_names=config.class_names,
            mean=config.mean,
            std=config.std,
        )
    expected = skeleton.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [str(k)[:80] for k in state if k not in expected]
    wrong = [
        f"{k} {tuple(getattr(state[k], 'shape', ()))} (expected {tuple(v.shape)})"
        for k, v in expected.items()
        if k in state
        and (not isinstance(state[k], torch.Tensor) or tuple(state[k].shape) != tuple(v.shape))
    ]
    if missing or unexpected or wrong:
        parts = [
            f"{len(items)} {what} (e.g. {', '.join(items[:2])})"
            for what, items in (
                ("missing", missing),
                ("unexpected", unexpected),
                ("mis-shaped", wrong),
            )
            if items
        ]
        raise CheckpointError(
            f"{name}: weights do not match its config ({config.arch}, width {config.width}, "
            f"{config.num_classes} classes): {'; '.join(parts)}"
        )


def load_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu", label: str | None = None
) -> ConfiguredModel:
    """Rebuild the model a checkpoint describes, in eval mode, with its weights.

    The config and every tensor's shape are checked before the model is allocated.
    """
    from milsil.models.registry import create_model

    name = label or str(path)
    payload = read_checkpoint(path, label)
    config = checkpoint_config(payload, name)
    check_weights(config, payload.get("state_dict"), name)
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
        raise CheckpointError(f"{name}: weights do not match its config ({first})") from None
    model.provenance = payload.get("provenance", {})  # type: ignore[attr-defined]
    set_model_familiarity(model, payload_familiarity(payload, name))  # None: an older file
    if payload.get(STAIN_KEY) is not None:  # absent: trained without stain normalization
        set_model_stain(model, StainTarget.from_payload(payload[STAIN_KEY], name))
    return model.to(map_location).eval()
