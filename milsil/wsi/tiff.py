"""Pyramidal tiled TIFFs: synthetic slides and probability maps that QuPath and OpenSlide open.

Levels are successive pages, each half the size of the one before, with the pixel size
written as a TIFF resolution so a map lies at the slide's scale.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from milsil.wsi.heatmap import SlideHeatmap


def write_pyramidal_tiff(
    path: str | Path,
    rgb: np.ndarray,
    mpp: float | None = 0.5,
    tile: int = 256,
    min_level_side: int = 64,
    compression: str | None = "zlib",
) -> Path:
    """A tiled pyramidal RGB TIFF (levels as successive pages) that OpenSlide opens as a
    generic tiled TIFF. ``rgb``: ``uint8 [H, W, 3]`` (or ``[H, W]``) level 0; each level the
    2x2 area average of the one before (:func:`milsil.data.shrink`), as scanners build them."""

    from milsil.data import shrink

    path = Path(path)
    levels = [np.ascontiguousarray(rgb)]
    while min(levels[-1].shape[:2]) // 2 >= min_level_side:
        prev = levels[-1]
        levels.append(shrink(prev, prev.shape[1] // 2, prev.shape[0] // 2, 2))
    _write_levels(path, levels, mpp, tile, compression)
    return path


def _write_levels(
    path: Path, levels: Sequence[np.ndarray], mpp: float | None, tile: int, compression: str | None
) -> None:
    import tifffile

    tmp = path.with_name(path.name + ".part")
    big = sum(lv.nbytes for lv in levels) > 2**31
    with tifffile.TiffWriter(tmp, bigtiff=big) as tif:
        for k, lv in enumerate(levels):
            kwargs: dict[str, Any] = {}
            if mpp:
                res = 1e4 / (mpp * 2**k)  # pixels per centimetre
                kwargs.update(resolution=(res, res), resolutionunit="CENTIMETER")
            tif.write(
                lv,
                tile=(tile, tile),
                photometric="rgb" if lv.ndim == 3 else "minisblack",
                compression=compression,
                subfiletype=1 if k else 0,
                metadata=None,
                **kwargs,
            )
    os.replace(tmp, path)


def write_probability_tiff(
    heat: SlideHeatmap, path: str | Path, class_index: int, tile: int = 256
) -> Path:
    """The class probability as a pyramidal tiled 8-bit TIFF (0-255; 0 where not computed).

    One TIFF pixel is one heatmap sample: ``stride * downsample`` level-0 pixels, and the
    pixel size written is the slide's times that, so QuPath shows it at the slide's scale.
    Sample ``j`` is centred on level-0 pixel ``j*stride*downsample``: the TIFF sits half a
    cell (``(stride*downsample - 1)/2`` level-0 px) right/down of an exact overlay, less
    than one map pixel. Levels are built block by block through memory-mapped files.
    """
    from milsil.data import shrink

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="tiff-", dir=heat.work_dir))
    try:
        level0 = np.memmap(
            scratch / "l0.u8", dtype=np.uint8, mode="w+", shape=(heat.rows, heat.cols)
        )
        step = 2048
        for r0 in range(0, heat.rows, step):
            for c0 in range(0, heat.cols, step):
                r1, c1 = min(r0 + step, heat.rows), min(c0 + step, heat.cols)
                p = heat.probability_block(class_index, r0, r1, c0, c1)
                level0[r0:r1, c0:c1] = np.clip(np.nan_to_num(p, nan=0.0) * 255 + 0.5, 0, 255)
        level0.flush()
        levels = [level0]
        while min(levels[-1].shape) // 2 >= 64:
            prev = levels[-1]
            h, w = prev.shape[0] // 2, prev.shape[1] // 2
            nxt = np.memmap(scratch / f"l{len(levels)}.u8", dtype=np.uint8, mode="w+", shape=(h, w))
            for r0 in range(0, h, step):
                r1 = min(r0 + step, h)
                nxt[r0:r1] = shrink(np.asarray(prev[2 * r0 : 2 * r1]), w, r1 - r0, 2)
            nxt.flush()
            levels.append(nxt)
        mpp = None
        if heat.mpp:
            mpp = float(heat.mpp[0]) * heat.stride * heat.downsample
        _write_levels(path, levels, mpp, tile, "zlib")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return path
