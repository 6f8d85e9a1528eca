"""Per-object measurements on slides and image files: cells scored by the logit heatmap.

The semantics are :mod:`milsil.inference.objects`'s (pixel centres inside, the centroid's
pixel for sub-pixel objects, mean / max logit, softmax of the mean). Here the pixels come
from a file: only the region the objects cover (plus the model's context, where the image
has it) is read, in tiles, in row order, and computed band by band through the tiled
engine, so memory is bounded by the region's width whatever the number of objects.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from milsil.errors import MilsilError
from milsil.inference.objects import (
    ObjectAccumulator,
    ObjectMeasurements,
    object_bounds,
    object_list,
)
from milsil.inference.tiling import context_pixels
from milsil.wsi.reader import SLIDE_SUFFIXES, Slide, open_slide
from milsil.wsi.settings import check_downsample

PIECE = 1024
"""Side, in pixels at the downsample, of the tiles a region is read in."""


class ImageFile:
    """A plain image (PNG, JPEG, ...) read like a :class:`~milsil.wsi.reader.Slide`: one
    level, ``read`` at any downsample (the whole image shrunk to ``size // downsample`` by
    :func:`milsil.data.shrink`, area averaging: the pixels a slide's pyramid would hold)."""

    def __init__(self, path: str | Path) -> None:
        from milsil.data import load_rgb

        self.path = Path(path)
        self.pixels = load_rgb(self.path)
        self.dimensions = (int(self.pixels.shape[1]), int(self.pixels.shape[0]))
        self._cache: tuple[float, np.ndarray] | None = None

    def __enter__(self) -> ImageFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.pixels = np.zeros((0, 0, 3), np.uint8)

    def read(self, x: int, y: int, width: int, height: int, downsample: float = 1.0) -> np.ndarray:
        """RGB ``uint8 [height, width, 3]`` at ``downsample`` from level-0 ``(x, y)``; the
        image is resized once per downsample (so pieces of it join exactly), and pixels
        outside it are white."""
        ds = check_downsample(downsample)
        scaled = self._scaled(ds)
        h, w = scaled.shape[:2]
        px, py = round(x / ds), round(y / ds)
        out = np.full((height, width, 3), 255, np.uint8)
        sx0, sy0 = max(px, 0), max(py, 0)
        sx1, sy1 = min(px + width, w), min(py + height, h)
        if sx0 < sx1 and sy0 < sy1:
            out[sy0 - py : sy1 - py, sx0 - px : sx1 - px] = scaled[sy0:sy1, sx0:sx1]
        return out

    def _scaled(self, ds: float) -> np.ndarray:
        if ds == 1.0:
            return self.pixels
        if self._cache is None or self._cache[0] != ds:
            from milsil.data import shrink

            w0, h0 = self.dimensions
            self._cache = (
                ds,
                shrink(self.pixels, max(1, int(w0 // ds)), max(1, int(h0 // ds)), ds),
            )
        return self._cache[1]


def open_image(path: str | Path) -> Slide | ImageFile:
    """A whole slide (any format OpenSlide reads) or a plain image file."""
    if Path(path).suffix.lower() in SLIDE_SUFFIXES:
        return open_slide(path)
    return ImageFile(path)


@dataclass(frozen=True)
class PixelRegion:
    """A level-0 rectangle read at ``downsample``: ``width x height`` pixels at that scale."""

    x: float
    y: float
    width: int
    height: int
    downsample: float

    @classmethod
    def covering(
        cls, bounds: tuple[float, float, float, float], downsample: float, image_size: tuple
    ) -> PixelRegion:
        """The pixels (at ``downsample``, on the image's pixel grid) covering level-0
        ``bounds``, clipped to an image of level-0 ``image_size``."""
        ds = check_downsample(downsample)
        w0, h0 = image_size
        x0, y0 = max(0, math.floor(bounds[0] / ds)), max(0, math.floor(bounds[1] / ds))
        x1 = min(math.ceil(bounds[2] / ds) + 1, int(w0 // ds))
        y1 = min(math.ceil(bounds[3] / ds) + 1, int(h0 // ds))
        if x1 <= x0 or y1 <= y0:
            raise MilsilError(
                f"the objects (level-0 box {tuple(round(b, 1) for b in bounds)}) lie outside "
                f"the image ({w0}x{h0} level-0 pixels)"
            )
        return cls(x0 * ds, y0 * ds, x1 - x0, y1 - y0, ds)


def region_pieces(
    image: Slide | ImageFile, region: PixelRegion, context: int, piece: int = PIECE
) -> Iterator[tuple[int, int, np.ndarray]]:
    """The pixels of ``region`` and up to ``context`` pixels around it that lie inside the
    image, in tiles in row order: ``(x, y, uint8 [h, w, 3])``, ``(x, y)`` in region pixels.
    (Context beyond the image is left to the tiled engine, which mirrors it.)"""
    ds = region.downsample
    w0, h0 = image.dimensions
    lo_x = max(-context, math.ceil(-region.x / ds - 1e-9))
    lo_y = max(-context, math.ceil(-region.y / ds - 1e-9))
    hi_x = min(region.width + context, math.floor((w0 - region.x) / ds + 1e-9))
    hi_y = min(region.height + context, math.floor((h0 - region.y) / ds + 1e-9))
    for ty in range(lo_y, hi_y, piece):
        th = min(piece, hi_y - ty)
        for tx in range(lo_x, hi_x, piece):
            tw = min(piece, hi_x - tx)
            pixels = image.read(round(region.x + tx * ds), round(region.y + ty * ds), tw, th, ds)
            yield tx, ty, pixels


def measure_image_file_objects(
    model: Any,
    image: Slide | ImageFile,
    objects: Any,
    downsample: float = 1.0,
    ids: Sequence[Any] | None = None,
    device: Any = None,
    progress: Callable[[int, int], None] | None = None,
) -> ObjectMeasurements:
    """Measure polygon-like ``objects`` (level-0 coordinates) on ``image`` read at
    ``downsample``: only the region covering them is read and computed, band by band.
    ``progress(rows_done, rows)`` is called after each band."""
    from milsil.inference.heatmap import iter_region_bands

    objects = object_list(objects)
    region = PixelRegion.covering(object_bounds(objects), downsample, image.dimensions)
    acc = ObjectAccumulator(
        objects,
        region.height,
        region.width,
        int(model.config.num_classes),
        ids,
        origin=(region.x, region.y),
        downsample=region.downsample,
    )
    pieces = region_pieces(image, region, context_pixels(model))
    for row0, logits in iter_region_bands(model, region.width, region.height, pieces, 1, device):
        acc.add_band(row0, logits)
        if progress is not None:
            progress(row0 + logits.shape[1], region.height)
    return acc.result()
