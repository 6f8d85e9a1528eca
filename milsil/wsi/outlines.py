"""One outline clean-up for every path that turns a probability map into outlines.

The paper's maps are per pixel and speckled by design (one nucleus at a time): right for
the heatmap and the per-cell scores, wrong for region outlines if nothing cleans them. An
outline here is the result of, in this order:

1. optional Gaussian smoothing of the map (``smooth_sigma``; NaN samples, never computed,
   are left out of the weighted mean), for the outline only: measurements stay exact;
2. the threshold;
3. optional merging of objects closer than ``merge_distance`` (a morphological closing
   with a disk of radius ``merge_distance / 2``);
4. filling of holes smaller than ``min_hole_area`` (background not reaching the map's
   border);
5. 4-connected components, each dropped if its final outline is smaller than
   ``min_area`` (decided on the whole component, joined across bands);
6. polygon simplification by ``simplify`` of one output pixel (below one, so the outline
   stays within a pixel of the mask).

Steps 1-4 look at neighbouring rows, so a map that arrives band by band is filtered by
:class:`MaskBands`, which holds back the last ``halo`` rows until the rows below them have
arrived: the mask it emits, band by band, equals the whole map's. Measurements (area,
mean/max of each measurement map) are taken over the final mask, holes filled included.

Units: areas in µm² and distances in µm when the pixel size is known (slide metadata,
QuPath's calibration), else level-0 pixels; :meth:`OutlineSettings.resolve` converts and
records which, and the outputs carry that record (``outline_settings`` in the GeoJSON).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from milsil.errors import MilsilError

# Defaults chosen by bench/outline_bench.py (README "Outline clean-up"): of the settings
# that cut the fragments of a held-out malignant image by >= 10x at object recall and
# malignant nuclei covered within 2 points of the raw outlines, the best Dice: 822 -> 2.9
# objects per image, recall 1.000 -> 1.000, nuclei covered 0.989 -> 0.978, Dice 0.126 ->
# 0.365. Smoothing, hole filling and merging did not improve on it there (they stay
# available, off by default).
DEFAULT_MIN_AREA = 200.0
DEFAULT_MIN_HOLE_AREA = 0.0
DEFAULT_SMOOTH_SIGMA = 0.0
DEFAULT_MERGE_DISTANCE = 0.0
DEFAULT_SIMPLIFY = 0.5
GAUSS_TRUNCATE = 4.0  # scipy's default: the kernel reaches 4 sigma
MAX_HALO_ROWS = 4096  # rows a band filter may hold back (memory: halo x columns x maps)

# Allowed ranges (upper bounds keep a band's held-back rows bounded).
_RANGES = {
    "min_area": (0.0, 1e9, "µm² (level-0 px² without a pixel size)"),
    "min_hole_area": (0.0, 1e9, "µm² (level-0 px² without a pixel size)"),
    "smooth_sigma": (0.0, 1000.0, "µm (level-0 px without a pixel size)"),
    "merge_distance": (0.0, 10000.0, "µm (level-0 px without a pixel size)"),
}


def _check(name: str, value: Any, low: float, high: float, unit: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise MilsilError(f"{name} must be a number in [{low:g}, {high:g}] {unit}, got {value!r}")
    number = float(value)
    if not math.isfinite(number) or not low <= number <= high:
        raise MilsilError(f"{name} must be a number in [{low:g}, {high:g}] {unit}, got {value!r}")
    return number


def check_pixel_size(value: Any) -> float | None:
    """A level-0 pixel size in µm (> 0, at most 1000), or None (0 and None: unknown)."""
    if value is None or (not isinstance(value, bool) and value == 0):
        return None
    return _check("pixel_size_um", value, 1e-6, 1000.0, "µm per level-0 pixel (0: unknown)")


@dataclass(frozen=True)
class OutlineSettings:
    """How a probability map becomes outlines (see the module docstring for the steps).

    * ``min_area``: objects smaller than this are dropped (µm², or level-0 px² when the
      pixel size is unknown).
    * ``min_hole_area``: holes smaller than this are filled (same units).
    * ``smooth_sigma``: Gaussian σ applied to the map before thresholding, outlines only
      (µm, or level-0 px); 0 = none.
    * ``merge_distance``: objects closer than this are joined (µm, or level-0 px); 0 = none.
    * ``simplify``: polygon simplification tolerance as a fraction of one output pixel
      (``stride x downsample`` level-0 px), in [0, 1): below a pixel the outline keeps
      the mask's shape and drops the staircase vertices.
    """

    min_area: float = DEFAULT_MIN_AREA
    min_hole_area: float = DEFAULT_MIN_HOLE_AREA
    smooth_sigma: float = DEFAULT_SMOOTH_SIGMA
    merge_distance: float = DEFAULT_MERGE_DISTANCE
    simplify: float = DEFAULT_SIMPLIFY

    def __post_init__(self) -> None:
        for name, (low, high, unit) in _RANGES.items():
            object.__setattr__(self, name, _check(name, getattr(self, name), low, high, unit))
        simplify = self.simplify
        if (
            isinstance(simplify, bool)
            or not isinstance(simplify, (int, float, np.integer, np.floating))
            or not (0.0 <= float(simplify) < 1.0)
        ):
            raise MilsilError(
                f"simplify must be a number in [0, 1) (a fraction of one output pixel), "
                f"got {simplify!r}"
            )
        object.__setattr__(self, "simplify", float(simplify))

    @classmethod
    def raw(cls) -> OutlineSettings:
        """No clean-up at all: every thresholded component, unsimplified (the old outlines)."""
        return cls(0.0, 0.0, 0.0, 0.0, 0.0)

    @classmethod
    def with_defaults(cls, **values: Any) -> OutlineSettings:
        """Settings where 0 or None means "the default" (the proto's convention) and a
        negative value means "off"."""
        defaults = cls()
        out = {}
        for name, value in values.items():
            if name not in _RANGES and name != "simplify":
                raise MilsilError(
                    f"unknown outline setting {name}; allowed: {', '.join([*_RANGES, 'simplify'])}"
                )
            if value is None or (not isinstance(value, bool) and value == 0):
                value = getattr(defaults, name)
            elif isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
                value = 0.0
            out[name] = value
        return cls(**{**asdict(defaults), **out})

    def resolve(self, pixel_size_um: float | None) -> ResolvedOutline:
        """These settings in level-0 pixels: µm converted when ``pixel_size_um`` is known
        (µm per level-0 pixel), taken as pixels otherwise; the result says which."""
        mpp = check_pixel_size(pixel_size_um)
        scale = 1.0 if mpp is None else 1.0 / mpp
        return ResolvedOutline(
            min_area=self.min_area * scale * scale,
            min_hole_area=self.min_hole_area * scale * scale,
            smooth_sigma=self.smooth_sigma * scale,
            merge_distance=self.merge_distance * scale,
            simplify=self.simplify,
            units="um" if mpp is not None else "px",
            pixel_size_um=mpp,
            requested=asdict(self),
        )


@dataclass(frozen=True)
class ResolvedOutline:
    """Outline settings in level-0 pixels (px² for areas), with the units they were given in
    (``"um"``: converted with ``pixel_size_um``; ``"px"``: taken as pixels)."""

    min_area: float
    min_hole_area: float
    smooth_sigma: float
    merge_distance: float
    simplify: float
    units: str
    pixel_size_um: float | None
    requested: dict[str, float]

    def describe(self) -> dict[str, Any]:
        """What the output records: the settings as given, their units, the pixel size."""
        return {
            **self.requested,
            "units": self.units,
            "pixel_size_um": self.pixel_size_um,
        }


def disk(radius: int) -> np.ndarray:
    """A disk footprint ``(2r+1)²``: offsets with ``i² + j² <= r²``."""
    r = np.arange(-radius, radius + 1)
    return (r[:, None] ** 2 + r[None, :] ** 2) <= radius * radius


class MaskBands:
    """The mask of steps 1-4 for a map that arrives band by band, equal to the whole map's.

    ``cell``: the side of one sample in level-0 px (``stride x downsample``). Each step
    reads rows around it: smoothing ``ceil(4σ)``, merging twice the disk radius, hole
    filling as many rows as the largest hole to fill has samples (a hole of ``n`` samples
    spans at most ``n`` rows). :meth:`push` keeps the rows still needed as context and
    returns the ``(mask, maps)`` bands that are final; it holds back at most ``halo`` rows.
    """

    def __init__(
        self, rows: int, cols: int, threshold: float, outline: ResolvedOutline, cell: float
    ) -> None:
        self.rows, self.cols, self.threshold = rows, cols, threshold
        self.sigma = outline.smooth_sigma / cell
        self.radius = int(round(outline.merge_distance / (2 * cell)))
        if outline.merge_distance > 0:
            self.radius = max(1, self.radius)
        self.hole = outline.min_hole_area / (cell * cell)  # samples
        smooth_rows = int(GAUSS_TRUNCATE * self.sigma + 0.5) if self.sigma > 0 else 0
        hole_rows = int(math.ceil(self.hole)) if self.hole > 0 else 0
        self.halo = smooth_rows + 2 * self.radius + hole_rows
        if self.halo > MAX_HALO_ROWS:
            raise MilsilError(
                f"the outline settings need {self.halo} rows of context (smooth_sigma, "
                f"merge_distance, min_hole_area at this sampling); at most {MAX_HALO_ROWS}: "
                "lower them or sample more coarsely (stride, downsample)"
            )
        self.values: np.ndarray | None = None  # rows [start, received) of the map
        self.maps: dict[str, np.ndarray] = {}
        self.start = self.received = self.emitted = 0

    def push(
        self, values: np.ndarray, maps: Mapping[str, np.ndarray]
    ) -> list[tuple[np.ndarray, dict[str, np.ndarray]]]:
        """Add the next band; the final ``(mask, maps)`` bands now known (maybe none)."""
        if self.halo == 0:  # nothing looks at other rows: threshold at once
            self.received += values.shape[0]
            return [(self._mask(values, True, True), dict(maps))]
        if self.values is None:
            self.values, self.maps = values, dict(maps)
        else:
            self.values = np.concatenate([self.values, values])
            self.maps = {k: np.concatenate([self.maps[k], v]) for k, v in maps.items()}
        self.received += values.shape[0]
        last = self.received == self.rows
        ready = self.rows if last else self.received - self.halo
        if ready <= self.emitted:
            return []
        mask = self._mask(self.values, self.start == 0, last)
        a, b = self.emitted - self.start, ready - self.start
        out = [(mask[a:b], {k: v[a:b] for k, v in self.maps.items()})]
        self.emitted = ready
        keep = max(self.start, ready - self.halo)
        self.values = self.values[keep - self.start :]
        self.maps = {k: v[keep - self.start :] for k, v in self.maps.items()}
        self.start = keep
        return out

    def _mask(self, values: np.ndarray, top: bool, bottom: bool) -> np.ndarray:
        """Steps 1-4 on a window of rows; ``top``/``bottom``: it reaches the map's border."""
        from scipy import ndimage

        valid = ~np.isnan(values)
        if self.sigma > 0:
            weight = ndimage.gaussian_filter(
                valid.astype(np.float64), self.sigma, mode="nearest", truncate=GAUSS_TRUNCATE
            )
            total = ndimage.gaussian_filter(
                np.where(valid, values, 0.0), self.sigma, mode="nearest", truncate=GAUSS_TRUNCATE
            )
            with np.errstate(invalid="ignore", divide="ignore"):
                smooth = total / weight
            mask = valid & (np.nan_to_num(smooth, nan=-np.inf) >= self.threshold)
        else:
            mask = np.nan_to_num(values, nan=-np.inf) >= self.threshold
        if self.radius > 0:
            foot = disk(self.radius)
            mask = ndimage.binary_dilation(mask, foot, border_value=0)
            mask = ndimage.binary_erosion(mask, foot, border_value=1)
        if self.hole > 0:
            labels, count = ndimage.label(~mask, structure=np.ones((3, 3), bool))
            sizes = np.bincount(labels.ravel(), minlength=count + 1)
            small = sizes < self.hole
            edge = [labels[:, 0], labels[:, -1]]
            if top:
                edge.append(labels[0])
            if bottom:
                edge.append(labels[-1])
            small[np.concatenate(edge)] = False
            small[0] = False
            mask = mask | (small[labels] & valid)
        return mask
