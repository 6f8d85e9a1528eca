"""The stain-normalization target a model carries (checkpoint payload key
``"stain_normalization"``, plain values).

Only the values and their validation live here, in the models layer, so that
:mod:`milsil.models.checkpoint` can check a checkpoint's target when it loads it (a bad one
is refused at load with one line, not at the first heatmap). Fitting a target and applying
it to pixels (torchstain) is :mod:`milsil.data.stain`, one layer up.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from milsil.errors import CheckpointError, MilsilError

STAIN_KEY = "stain_normalization"  # checkpoint payload key
STAIN_METHODS = ("macenko", "reinhard")
STAIN_CHOICES = ("none", *STAIN_METHODS)  # what --stain-normalize accepts


def check_stain_method(value: Any, name: str = "stain_normalize") -> str:
    """``value`` as one of :data:`STAIN_CHOICES`, or a one-line MilsilError naming them."""
    if not isinstance(value, str) or value not in STAIN_CHOICES:
        raise MilsilError(f"{name} must be one of {', '.join(STAIN_CHOICES)}; got {value!r}")
    return value


def _numbers(raw: Any, shape: tuple[int, ...], what: str) -> tuple:
    """Finite floats of ``shape`` (nested tuples) from plain lists, else ValueError."""
    if len(shape) == 1:
        if not isinstance(raw, (list, tuple)) or len(raw) != shape[0]:
            raise ValueError(f"{what} must be {shape[0]} numbers")
        out = []
        for v in raw:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"{what} must be finite numbers, got {v!r}")
            out.append(float(v))
        return tuple(out)
    if not isinstance(raw, (list, tuple)) or len(raw) != shape[0]:
        raise ValueError(f"{what} must have {shape[0]} rows")
    return tuple(_numbers(row, shape[1:], what) for row in raw)


@dataclass(frozen=True)
class StainTarget:
    """What normalized pixels should look like, fitted on the training images.

    ``macenko``: ``stain_vectors`` (3 x 2: the optical-density vectors of haematoxylin and
    eosin, columns of torchstain's ``HERef``) and ``max_concentrations`` (their 99th
    percentile concentrations, torchstain's ``maxCRef``). ``reinhard``: ``lab_means`` and
    ``lab_stds`` (L, a, b as torchstain's Reinhard normalizer measures them). ``images``:
    how many training images the target was fitted on; ``rule``: how (for provenance).
    """

    method: str
    stain_vectors: tuple[tuple[float, float], ...] | None = None
    max_concentrations: tuple[float, float] | None = None
    lab_means: tuple[float, float, float] | None = None
    lab_stds: tuple[float, float, float] | None = None
    images: int = 0
    rule: str = ""

    def to_payload(self) -> dict[str, Any]:
        """Plain values for the checkpoint (``torch.load(weights_only=True)`` reads them)."""
        out: dict[str, Any] = {"method": self.method, "images": self.images, "rule": self.rule}
        if self.method == "macenko":
            out["stain_vectors"] = [list(row) for row in self.stain_vectors or ()]
            out["max_concentrations"] = list(self.max_concentrations or ())
        else:
            out["lab_means"] = list(self.lab_means or ())
            out["lab_stds"] = list(self.lab_stds or ())
        return out

    @classmethod
    def from_payload(cls, raw: Any, name: str) -> StainTarget:
        """The target a checkpoint's payload holds; CheckpointError (one line) when bad."""
        try:
            if not isinstance(raw, dict):
                raise ValueError("not a mapping")
            method = raw.get("method")
            if method not in STAIN_METHODS:
                raise ValueError(
                    f"method must be one of {', '.join(STAIN_METHODS)}, got {method!r}"
                )
            images = raw.get("images", 0)
            if isinstance(images, bool) or not isinstance(images, int) or images < 0:
                raise ValueError(f"images must be a count, got {images!r}")
            common = {"method": method, "images": images, "rule": str(raw.get("rule", ""))}
            if method == "macenko":
                vectors = _numbers(raw.get("stain_vectors"), (3, 2), "stain_vectors")
                maxima = _numbers(raw.get("max_concentrations"), (2,), "max_concentrations")
                if min(maxima) <= 0:
                    raise ValueError("max_concentrations must be positive")
                return cls(stain_vectors=vectors, max_concentrations=maxima, **common)
            means = _numbers(raw.get("lab_means"), (3,), "lab_means")
            stds = _numbers(raw.get("lab_stds"), (3,), "lab_stds")
            if min(stds) <= 0:
                raise ValueError("lab_stds must be positive")
            return cls(lab_means=means, lab_stds=stds, **common)
        except ValueError as exc:
            raise CheckpointError(f"{name} has an invalid {STAIN_KEY}: {exc}") from None


def model_stain(model: Any) -> StainTarget | None:
    """The target ``model`` carries; None: it runs on the pixels as they are."""
    return model.__dict__.get("_stain_target")


def set_model_stain(model: Any, target: StainTarget | None) -> None:
    """Attach (or, with None, remove) the model's stain-normalization target."""
    if target is None:
        model.__dict__.pop("_stain_target", None)
    elif not isinstance(target, StainTarget):
        raise MilsilError(f"a stain target must be a StainTarget, got {type(target).__name__}")
    else:
        model.__dict__["_stain_target"] = target
