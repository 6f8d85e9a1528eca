"""One home for whole-slide settings: their defaults, and the rules a value must follow.

The ``annotate-slide`` and ``batch`` commands, the server's AnnotateSlide/SlideHeatmap
RPCs and the library all build a :class:`SlideSettings`; none of them types a default
of its own. A bad value raises :class:`MilsilError` naming the setting and what is allowed,
so every face of milsil refuses it with the same sentence.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from milsil.errors import MilsilError
from milsil.wsi.outlines import OutlineSettings, check_pixel_size

# Defaults every caller shares: stride 8 is the paper's preview grid (one sample per
# BagNet output cell); 1024-pixel tiles bound what is read at once.
DEFAULT_STRIDE = 8
DEFAULT_TILE = 1024
# Tiles read ahead of the compute, one reader thread each: as many as the cores (reading is
# OpenSlide decoding, mostly outside the GIL), at most 8 (beyond that the compute is the
# bottleneck on every machine measured).
DEFAULT_READERS = max(1, min(8, os.cpu_count() or 1))


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool):
        raise MilsilError(f"{name} must be a number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise MilsilError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise MilsilError(f"{name} must be a finite number, got {value!r}")
    return number


def _integer(name: str, value: Any, low: int, rule: str) -> int:
    if isinstance(value, bool) or not float(_number(name, value)).is_integer():
        raise MilsilError(f"{name} must be an integer {rule}, got {value!r}")
    if int(value) < low:
        raise MilsilError(f"{name} must be an integer {rule}, got {value!r}")
    return int(value)


def _finite_or_none(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def check_downsample(value: Any) -> float:
    """A downsample (level-0 pixels per pixel read) as a float: a finite number >= 1.

    The one rule for every downsample: settings, :meth:`milsil.wsi.reader.Slide.read`, tiles.
    """
    ds = _finite_or_none(value)
    if ds is None or ds < 1.0:
        raise MilsilError(f"downsample must be a number >= 1 (1 = level 0), got {value!r}")
    return ds


def check_threshold(value: Any) -> float:
    """A probability threshold as a float in [0, 1] (settings and outlines alike)."""
    threshold = _finite_or_none(value)
    if threshold is None or not 0.0 <= threshold <= 1.0:
        raise MilsilError(f"threshold must be a probability in [0, 1], got {value!r}")
    return threshold


# Settings that change how fast a slide is done, never what comes out.
SPEED_ONLY = ("readers",)


def check_readers(value: Any) -> int:
    """A reader count as an int: 0 (sequential) or more reader threads."""
    return _integer("readers", value, 0, ">= 0 (0 = read on the computing thread)")


@dataclass(frozen=True)
class SlideSettings:
    """How a whole slide is turned into a heatmap and outlines.

    * ``stride``: heatmap samples every ``stride`` pixels (1 = every pixel).
    * ``downsample``: the slide is read at this downsample (1 = level 0).
    * ``tile``: output pixels read at once (rounded down to a multiple of ``stride``).
    * ``threshold``: the class probability outlined as an annotation.
    * ``class_name``: the class outlined (None: malignant, else the last class).
    * ``tissue_only``: compute tissue tiles only (glass is skipped).
    * ``min_area``: outlines smaller than this (level-0 px^2) are dropped.
    * ``simplify_tolerance``: outlines are simplified by this (level-0 px).
    * ``bf16``: bfloat16 autocast.
    * ``precision``: the float32 mode on CUDA (:mod:`milsil.inference.precision`):
      ``exact`` (TF32 off, the default) or ``tf32`` (the fast mode).
    * ``outline``: the outline clean-up (:class:`milsil.wsi.outlines.OutlineSettings`:
      minimum object and hole areas, smoothing, merging, simplification), in µm when the
      pixel size is known, else level-0 px; default the measured ``OutlineSettings()``
      (README, "Outline clean-up"); ``min_area`` / ``simplify_tolerance`` above still
      apply in level-0 px (the larger wins).
    * ``pixel_size_um``: level-0 µm per pixel for the outline settings (QuPath's
      calibration); None: the slide's metadata, if any.
    * ``readers``: reader threads prefetching tiles ahead of the compute (0 = read and
      write on the computing thread, the sequential pipeline). Never changes the result.
    """

    stride: int = DEFAULT_STRIDE
    downsample: float = 1.0
    tile: int = DEFAULT_TILE
    threshold: float = 0.5
    class_name: str | None = None
    tissue_only: bool = True
    min_area: float = 0.0
    simplify_tolerance: float = 0.0
    bf16: bool = False
    precision: str = "exact"
    outline: OutlineSettings = field(default_factory=OutlineSettings)
    pixel_size_um: float | None = None
    readers: int = DEFAULT_READERS

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: normalise the values once, here
        stride = _integer("stride", self.stride, 1, "of at least 1 (1 = every pixel)")
        set_(self, "stride", stride)
        set_(self, "downsample", check_downsample(self.downsample))
        tile = _integer("tile", self.tile, stride, f">= the stride ({stride})")
        set_(self, "tile", tile // stride * stride)
        set_(self, "threshold", check_threshold(self.threshold))
        for name in ("min_area", "simplify_tolerance"):
            value = _number(name, getattr(self, name))
            if value < 0:
                raise MilsilError(f"{name} must be >= 0, got {getattr(self, name)!r}")
            set_(self, name, value)
        if self.class_name is not None and not isinstance(self.class_name, str):
            raise MilsilError(f"class_name must be a class name or None, got {self.class_name!r}")
        set_(self, "class_name", self.class_name or None)
        set_(self, "tissue_only", bool(self.tissue_only))
        set_(self, "bf16", bool(self.bf16))
        from milsil.inference.precision import check_precision

        set_(self, "precision", check_precision(self.precision))
        set_(self, "outline", outline_settings(self.outline))
        set_(self, "pixel_size_um", check_pixel_size(self.pixel_size_um))
        set_(self, "readers", check_readers(self.readers))

    def outline_pixel_size(self, slide_mpp: Any) -> float | None:
        """The pixel size the outline settings use: this one, else the slide's (its
        ``mpp``, ``(x, y)`` µm; their mean), else None (settings in pixels)."""
        if self.pixel_size_um is not None:
            return self.pixel_size_um
        if slide_mpp:
            return check_pixel_size(sum(slide_mpp) / len(slide_mpp))
        return None

    def replace(self, **changes: Any) -> SlideSettings:
        """A copy with ``changes`` applied (and validated)."""
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def result_params(self) -> dict[str, Any]:
        """The settings that decide the result: :meth:`to_dict` without :data:`SPEED_ONLY`,
        so a finished slide counts as done whatever reader count reruns it."""
        return {k: v for k, v in asdict(self).items() if k not in SPEED_ONLY}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SlideSettings:
        """Settings from a dict; an unknown key is refused with the list of known ones."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise MilsilError(
                f"unknown slide setting(s) {', '.join(unknown)}; allowed: {', '.join(sorted(known))}"
            )
        return cls(**values)


def outline_settings(value: Any) -> OutlineSettings:
    """:class:`OutlineSettings` from itself or a dict of its fields (unknown keys named)."""
    if isinstance(value, OutlineSettings):
        return value
    if isinstance(value, dict):
        known = {f.name for f in fields(OutlineSettings)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise MilsilError(
                f"unknown outline setting(s) {', '.join(unknown)}; allowed: "
                f"{', '.join(sorted(known))}"
            )
        return OutlineSettings(**value)
    raise MilsilError(f"outline must be outline settings or a dict of them, got {value!r}")
