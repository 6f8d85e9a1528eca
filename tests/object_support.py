"""Objects and the reference measurement for the MeasureObjects tests: the semantics
computed independently of milsil (the whole image's stride-1 heatmap, shapely's
point-in-polygon for pixel centres, the centroid's pixel for objects holding none)."""

from __future__ import annotations

import math

import numpy as np
import shapely
from shapely import affinity
from shapely.geometry import MultiPolygon, Point, Polygon


def image(h: int = 120, w: int = 150, seed: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = rng.integers(60, 230, (h, w, 3), dtype=np.uint8)
    img[30:70, 40:90] //= 3  # a dark block: logits vary across the image
    return img


def shapes() -> list:
    """Objects in level-0 pixels of the 150x120 image (vertices kept off pixel centres)."""
    d = 0.0137
    return [
        Point(60.3, 45.7).buffer(7.2, quad_segs=32),  # a nucleus-sized circle
        Point(3.1, 4.2).buffer(5.0, quad_segs=16),  # at the image corner (mirrored context)
        Polygon(
            [(80 + d, 60 + d), (120 + d, 62 + d), (118 + d, 100 + d), (84 + d, 96 + d)],
            [[(92 + d, 70 + d), (104 + d, 71 + d), (102 + d, 84 + d), (94 + d, 82 + d)]],
        ),  # polygon with a hole
        Point(30.2, 90.3).buffer(0.3),  # sub-pixel: holds no pixel centre
        MultiPolygon([Point(20.2, 30.6).buffer(3.1), Point(140.3, 110.4).buffer(4.6)]),
        affinity.rotate(Polygon([(50.3, 100.2), (70.1, 100.4), (70.2, 104.1)]), 20),
    ]


def expected(heat: np.ndarray, geom, downsample: float) -> tuple[np.ndarray, np.ndarray, int]:
    """Mean/max logits over the pixels (at ``downsample``) whose centre lies inside."""
    _, h, w = heat.shape
    xs, ys = np.meshgrid((np.arange(w) + 0.5) * downsample, (np.arange(h) + 0.5) * downsample)
    inside = shapely.contains_xy(geom, xs, ys)
    if inside.any():
        return heat[:, inside].mean(1), heat[:, inside].max(1), int(inside.sum())
    c = geom.centroid
    v = heat[:, int(math.floor(c.y / downsample)), int(math.floor(c.x / downsample))]
    return v, v, 0
