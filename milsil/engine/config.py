"""What defines a training run: :class:`TrainConfig`, its validation, and the device it asks for.

A config is stored in every checkpoint and ``run.json``; resuming a run checks that the
new config matches the stored one except for :data:`RESUMABLE_CHANGES`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from milsil.engine import recipe
from milsil.engine.recipe import RECIPES
from milsil.errors import MilsilError
from milsil.models import HEADS, list_models
from milsil.models.stain import check_stain_method

# The smallest patch each architecture can take (BagNets: their receptive field; the
# strided ResNet/DenseNet stems need 32; the attention-MIL LeNet extractor 16).
MIN_PATCH = {"bagnet9": 9, "bagnet17": 17, "bagnet33": 33, "resnet50": 32, "densenet161": 32}
MIN_PATCH_DEFAULT = 16

# Settings that may change between a run and its resumption; anything else changes the
# experiment, so resuming with it would silently mix two experiments.
RESUMABLE_CHANGES = ("epochs", "device", "num_workers")


@dataclass
class TrainConfig:
    """Everything that defines a training run; stored in every checkpoint and run.json.

    Fields left at ``None`` (width, lr, lr_decay, weight_decay, pretrained,
    stem_bn_momentum) are filled by the ``recipe`` (:mod:`milsil.engine.recipe`): the
    ``default`` recipe learns from scratch on a CPU without network; ``paper`` is the
    paper's recipe where it is specific (ImageNet initialisation, Adam lr 1e-4 with decay),
    our readings named (width 64, decay x0.9; :data:`milsil.engine.recipe.PAPER_READINGS`).
    :meth:`explain` says what each became and why. ``pretrained``: ``"imagenet"``, a local
    weights file, or ``"none"``.
    """

    arch: str = "bagnet9"
    head: str = "milsil"
    width: int | None = None
    epochs: int = 10
    lr: float | None = None
    lr_decay: float | None = None
    batch_size: int = 8
    weight_decay: float | None = None
    patch_size: int = 64
    augment: bool = True
    color_jitter: float = 0.0
    seed: int = 0
    device: str = "auto"
    num_workers: int = 0
    amp: bool = True
    pretrained: str | None = None
    recipe: str = "default"
    stem_bn_momentum: float | None = None
    # Early stopping: stop once this many epochs in a row have not beaten the best
    # validation epoch (best.pt keeps that epoch); 0 = train all ``epochs``. Needs
    # validation records; a run converges instead of stopping at a fixed short length.
    patience: int = 0
    # Stain normalization (milsil.data.stain): "none", "macenko" or "reinhard"; the target
    # is fitted on the training bags and travels in the checkpoint.
    stain_normalize: str = "none"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Fill the recipe's choices, then raise MilsilError naming a bad field."""
        if self.recipe not in RECIPES:
            raise MilsilError(f"unknown recipe {self.recipe!r}; allowed: {', '.join(RECIPES)}")
        if self.arch not in list_models():
            raise MilsilError(f"unknown arch {self.arch!r}; allowed: {', '.join(list_models())}")
        if self.pretrained is not None:
            if not isinstance(self.pretrained, str) or not self.pretrained:
                raise MilsilError(
                    f"pretrained must be 'imagenet', 'none' or a local file path, got "
                    f"{self.pretrained!r}"
                )
            self.pretrained = str(self.pretrained)
        recipe.resolve(self)
        if self.head not in HEADS:
            raise MilsilError(f"unknown head {self.head!r}; allowed: {', '.join(HEADS)}")
        _check_int(self, "width", 4, 256)
        _check_int(self, "epochs", 1, 100_000)
        _check_float(self, "lr", 0.0, 10.0, low_open=True)
        _check_float(self, "lr_decay", 0.0, 1.0, low_open=True)
        _check_int(self, "batch_size", 1, 4096)
        _check_float(self, "weight_decay", 0.0, 1.0)
        _check_float(self, "color_jitter", 0.0, 1.0)
        _check_float(self, "stem_bn_momentum", 0.0, 1.0, low_open=True)
        _check_int(self, "patch_size", MIN_PATCH.get(self.arch, MIN_PATCH_DEFAULT), 4096)
        _check_int(self, "seed", 0, 2**63 - 1)
        _check_int(self, "num_workers", 0, 64)
        _check_int(self, "patience", 0, 100_000)
        check_stain_method(self.stain_normalize)
        for name in ("augment", "amp"):
            if not isinstance(getattr(self, name), bool):
                raise MilsilError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.pretrained == "imagenet":
            if self.arch not in recipe.IMAGENET_ARCHS:
                raise MilsilError(
                    f"{self.arch} has no published ImageNet weights (attention MIL is trained "
                    "from scratch, as in the paper); use pretrained 'none'"
                )
            if self.width != 64:
                raise MilsilError(
                    f"ImageNet weights exist for width 64 only (the published size), not "
                    f"width {self.width}"
                )
        if not isinstance(self.device, str) or not _device_syntax_ok(self.device):
            raise MilsilError(
                f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {self.device!r}"
            )

    @property
    def initialised(self) -> bool:
        """True when training starts from pretrained weights (ImageNet or a file)."""
        return recipe.initialised(self.pretrained)

    def explain(self) -> list[str]:
        """What the recipe chose for each open setting and why (one line each)."""
        return recipe.explain(self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Build from a mapping (JSON, gRPC request); unknown keys are an error, not ignored."""
        if not isinstance(d, dict):
            raise MilsilError(f"a training config must be a mapping, got {type(d).__name__}")
        allowed = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(d) - set(allowed))
        if unknown:
            raise MilsilError(
                f"unknown training setting(s) {unknown}; allowed: {', '.join(allowed)}"
            )
        return cls(**d)


def _check_int(cfg: TrainConfig, name: str, lo: int, hi: int) -> None:
    value = getattr(cfg, name)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise MilsilError(f"{name} must be an integer from {lo} to {hi}, got {value!r}")
    if not lo <= value <= hi:
        extra = f" (the smallest patch {cfg.arch} accepts)" if name == "patch_size" else ""
        raise MilsilError(f"{name} must be an integer from {lo}{extra} to {hi}, got {value!r}")
    setattr(cfg, name, int(value))


def _check_float(cfg: TrainConfig, name: str, lo: float, hi: float, low_open: bool = False) -> None:
    value = getattr(cfg, name)
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise MilsilError(f"{name} must be a number, got {value!r}")
    value = float(value)
    bad_low = value <= lo if low_open else value < lo
    if not math.isfinite(value) or bad_low or value > hi:
        bound = f"> {lo}" if low_open else f">= {lo}"
        raise MilsilError(f"{name} must be {bound} and <= {hi}, got {value!r}")
    setattr(cfg, name, value)


# Settings added after runs were first stored, and what runs stored before them did.
_BEFORE_RECIPES = {
    "recipe": "default",
    "stem_bn_momentum": 0.1,
    "patience": 0,
    "stain_normalize": "none",
}


def config_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``key: old -> new`` for every setting that differs, except :data:`RESUMABLE_CHANGES`."""
    old = {**_BEFORE_RECIPES, **old}
    if old.get("pretrained") is None:  # stored before recipes: None meant from scratch
        old["pretrained"] = "none"
    return [
        f"{k}: {old.get(k)!r} -> {new.get(k)!r}"
        for k in sorted(set(old) | set(new))
        if k not in RESUMABLE_CHANGES and old.get(k) != new.get(k)
    ]


def _device_syntax_ok(spec: str) -> bool:
    if spec in ("auto", "cpu", "cuda"):
        return True
    return spec.startswith("cuda:") and spec[5:].isdigit()


def resolve_device(spec: str) -> torch.device:
    """``auto`` -> CUDA when present, else CPU; asking for absent CUDA is an error."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not _device_syntax_ok(spec):
        raise MilsilError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {spec!r}")
    device = torch.device(spec)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise MilsilError(f"device {spec!r} requested but CUDA is not available here; use cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise MilsilError(
                f"device {spec!r}: only {torch.cuda.device_count()} CUDA device(s) present"
            )
    return device
