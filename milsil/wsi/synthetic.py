"""Synthetic whole slides for tests, demos and benchmarks."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from milsil.wsi.tiff import write_pyramidal_tiff


def synthetic_slide(
    path: str | Path,
    width: int = 1024,
    height: int = 768,
    block: int = 256,
    malignant_blocks: float = 0.3,
    seed: int = 0,
    mpp: float = 0.5,
    compression: str | None = "zlib",
) -> tuple[Path, list[list[tuple[float, float]]]]:
    """A pyramidal TIFF of synthetic H&E (:mod:`milsil.data.synth`) on glass, and its tumour contours.

    Tissue is an ellipse filled with ``block``-sized synthetic images; a fraction of the
    blocks is malignant, and their squares (clipped to the tissue) are the tumour
    contours, returned as level-0 ``(x, y)`` rings. Deterministic by ``seed``.
    ``compression``: the tiles' (tifffile's names; ``None`` = raw, which every TIFF reader
    decodes, for comparing readers).
    """
    from shapely.geometry import Point, box
    from shapely.ops import unary_union

    from milsil.data.synth import patient_style, synth_image

    rng = np.random.default_rng(seed)
    style = patient_style(rng)
    canvas = np.full((height, width, 3), 242, dtype=np.uint8)
    cx, cy = width / 2, height / 2
    yy, xx = np.mgrid[0:height, 0:width]
    ax, ay = width * 0.42, height * 0.40
    inside = ((xx + 0.5 - cx) / ax) ** 2 + ((yy + 0.5 - cy) / ay) ** 2 <= 1.0
    ellipse = Point(cx, cy).buffer(1.0, quad_segs=64)
    from shapely import affinity

    ellipse = affinity.scale(ellipse, ax, ay)
    tumour_boxes = []
    for by in range(0, height, block):
        for bx in range(0, width, block):
            bh, bw = min(block, height - by), min(block, width - bx)
            if not inside[by : by + bh, bx : bx + bw].any():
                continue
            malignant = bool(rng.random() < malignant_blocks)
            img, _ = synth_image(rng, (max(bh, 16), max(bw, 16)), malignant, style=style)
            sel = inside[by : by + bh, bx : bx + bw]
            canvas[by : by + bh, bx : bx + bw][sel] = img[:bh, :bw][sel]
            if malignant:
                tumour_boxes.append(box(bx, by, bx + bw, by + bh))
    rings: list[list[tuple[float, float]]] = []
    if tumour_boxes:
        tumour = unary_union(tumour_boxes).intersection(ellipse)
        for part in getattr(tumour, "geoms", [tumour]):
            if part.geom_type == "Polygon" and part.area > 1:
                rings.append([(float(x), float(y)) for x, y in part.exterior.coords])
    out = write_pyramidal_tiff(path, canvas, mpp=mpp, compression=compression)
    return out, rings
