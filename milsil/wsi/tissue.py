"""Tissue detection and the tile grid of a slide.

:func:`tissue_mask` finds tissue on a low-resolution level (saturation, Otsu); tiles and
patches are taken from tissue only, because most of a slide is glass. :func:`tile_grid`
and :func:`iter_tiles` walk a slide at level 0 or any downsample.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from milsil.errors import MilsilError
from milsil.wsi.reader import Slide
from milsil.wsi.settings import check_downsample


@dataclass
class TissueMask:
    """Boolean tissue mask of the whole slide at ``downsample`` (level-0 px per mask px)."""

    mask: np.ndarray
    downsample: float
    threshold: float

    def fraction(self, x: float, y: float, width: float, height: float) -> float:
        """Tissue fraction of the level-0 box ``[x, x+width) x [y, y+height)``."""
        ds = self.downsample
        c0, r0 = int(math.floor(x / ds)), int(math.floor(y / ds))
        c1, r1 = int(math.ceil((x + width) / ds)), int(math.ceil((y + height) / ds))
        h, w = self.mask.shape
        c0, r0, c1, r1 = max(c0, 0), max(r0, 0), min(c1, w), min(r1, h)
        if c1 <= c0 or r1 <= r0:
            return 0.0
        integral = self._integral()
        total = integral[r1, c1] - integral[r0, c1] - integral[r1, c0] + integral[r0, c0]
        return float(total) / float((r1 - r0) * (c1 - c0))

    def _integral(self) -> np.ndarray:
        cached = getattr(self, "_cache", None)
        if cached is None:
            cached = np.zeros((self.mask.shape[0] + 1, self.mask.shape[1] + 1), np.int64)
            cached[1:, 1:] = self.mask.astype(np.int64).cumsum(0).cumsum(1)
            self._cache = cached
        return cached

    def area_level0(self) -> float:
        """Tissue area in level-0 pixels."""
        return float(self.mask.sum()) * self.downsample**2


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of values in [0, 1] (maximises between-class variance)."""
    hist, edges = np.histogram(np.clip(values, 0, 1), bins=bins, range=(0.0, 1.0))
    hist = hist.astype(np.float64)
    centers = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centers)
    mu0 = m0 / np.maximum(w0, 1e-12)
    mu1 = (m0[-1] - m0) / np.maximum(w1, 1e-12)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(edges[int(np.argmax(between)) + 1])


def tissue_mask(
    slide: Slide,
    max_side: int = 1024,
    min_saturation: float = 0.05,
    max_saturation: float = 0.15,
    min_area_um2: float = 2500.0,
) -> TissueMask:
    """Tissue on a low-resolution image of the whole slide.

    H&E tissue is coloured, glass is grey-white: the mask is saturation above Otsu's
    threshold, clamped to ``[min_saturation, max_saturation]`` so an all-tissue or
    all-glass slide is not split in two; very dark pixels (pen, folds, scanner black)
    are left out; small specks are removed and holes filled.
    """
    from scipy import ndimage

    w0, h0 = slide.dimensions
    ds = max(1.0, max(w0, h0) / float(max_side))
    rgb = slide.thumbnail(ds).astype(np.float32) / 255.0
    mx, mn = rgb.max(axis=2), rgb.min(axis=2)
    saturation = (mx - mn) / np.maximum(mx, 1e-6)
    threshold = float(np.clip(otsu_threshold(saturation), min_saturation, max_saturation))
    mask = (saturation >= threshold) & (mx > 0.15)
    mask = ndimage.binary_opening(mask, iterations=1) if min(mask.shape) > 8 else mask
    mask = ndimage.binary_closing(mask, iterations=2, border_value=0) | mask
    mask = ndimage.binary_fill_holes(mask)
    mpp = slide.mpp[0] if slide.mpp else 0.5
    min_pixels = min_area_um2 / (mpp * ds) ** 2
    labels, count = ndimage.label(mask)
    if count:
        sizes = ndimage.sum(mask, labels, index=np.arange(1, count + 1))
        keep = np.zeros(count + 1, dtype=bool)
        keep[1:] = sizes >= min_pixels
        mask = keep[labels]
    return TissueMask(mask=mask, downsample=ds, threshold=threshold)


# --------------------------------------------------------------------------- tiles


@dataclass(frozen=True)
class Tile:
    """One tile: output pixels ``[px, px+width) x [py, py+height)`` at ``downsample``.

    ``x, y`` are its level-0 top-left; ``row, col`` its grid position.
    """

    row: int
    col: int
    px: int
    py: int
    width: int
    height: int
    downsample: float
    tissue: float

    @property
    def x(self) -> int:
        return int(round(self.px * self.downsample))

    @property
    def y(self) -> int:
        return int(round(self.py * self.downsample))


def tile_grid(
    slide: Slide,
    tile_size: int = 512,
    downsample: float = 1.0,
    tissue: TissueMask | None = None,
    min_tissue: float = 0.0,
) -> list[Tile]:
    """All tiles of the slide at ``downsample`` (row-major); with ``tissue``, only tiles whose
    tissue fraction is above ``min_tissue``."""
    ds = check_downsample(downsample)
    if not isinstance(tile_size, (int, np.integer)) or tile_size < 1:
        raise MilsilError(f"tile size must be a positive integer, got {tile_size!r}")
    rw, rh = slide.region_size(ds)
    tiles = []
    for row, py in enumerate(range(0, rh, tile_size)):
        for col, px in enumerate(range(0, rw, tile_size)):
            tw, th = min(tile_size, rw - px), min(tile_size, rh - py)
            frac = 1.0 if tissue is None else tissue.fraction(px * ds, py * ds, tw * ds, th * ds)
            if tissue is not None and frac <= min_tissue:
                continue
            tiles.append(Tile(row, col, px, py, tw, th, ds, frac))
    return tiles


def iter_tiles(
    slide: Slide,
    tile_size: int = 512,
    downsample: float = 1.0,
    tissue: TissueMask | None | bool = True,
    min_tissue: float = 0.0,
) -> Iterator[tuple[Tile, np.ndarray]]:
    """``(tile, rgb uint8 [h, w, 3])`` over the slide, tissue tiles only by default.

    ``tissue=True`` detects tissue with :func:`tissue_mask`; ``False``/``None`` yields every tile.
    """
    if tissue is True:
        tissue = tissue_mask(slide)
    mask = tissue if isinstance(tissue, TissueMask) else None
    for t in tile_grid(slide, tile_size, downsample, mask, min_tissue):
        yield t, slide.read(t.x, t.y, t.width, t.height, t.downsample)
