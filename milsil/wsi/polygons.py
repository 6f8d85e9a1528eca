"""A whole-slide probability map as QuPath annotations."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

from milsil.errors import MilsilError
from milsil.wsi.heatmap import SlideHeatmap
from milsil.wsi.settings import check_threshold


def heatmap_polygons(
    heat: SlideHeatmap,
    class_index: int,
    threshold: float = 0.5,
    min_area: float = 0.0,
    simplify_tolerance: float = 0.0,
    block: int = 4096,
    classification: str | None = None,
    roi: Any = None,
) -> dict[str, Any]:
    """QuPath GeoJSON FeatureCollection of ``probability >= threshold`` (level-0 px).

    ``roi`` (a shapely geometry, level-0 px): outlines are clipped to it, and blocks that
    miss it are not read; the statistics are those of each whole outline.

    The map is polygonized ``block`` samples at a time with :mod:`milsil.wsi.geojson`
    (bounded memory); pieces that meet at block borders are merged, so the result does
    not depend on ``block``. Each object has ``area`` (level-0 px^2),
    ``mean_probability`` and ``max_probability``.
    """
    import shapely
    from shapely.strtree import STRtree

    from milsil.wsi import geojson as gj

    if not 0 <= class_index < heat.num_classes:
        raise MilsilError(f"class index must be in 0..{heat.num_classes - 1}, got {class_index}")
    threshold = check_threshold(threshold)
    name = classification or heat.class_names[class_index]
    ds, stride = heat.downsample, heat.stride
    rw, rh = heat.region_size
    x_edges = gj.cell_edges(heat.cols, stride, rw) * ds
    y_edges = gj.cell_edges(heat.rows, stride, rh) * ds
    pieces: list[Any] = []  # (geometry, sum, count, max, touches_border)
    stats: list[tuple[float, int, float]] = []
    border: list[bool] = []
    for r0 in range(0, heat.rows, block):
        for c0 in range(0, heat.cols, block):
            r1, c1 = min(r0 + block, heat.rows), min(c0 + block, heat.cols)
            if roi is not None and not roi.intersects(
                shapely.box(x_edges[c0], y_edges[r0], x_edges[c1], y_edges[r1])
            ):
                continue
            prob = heat.probability_block(class_index, r0, r1, c0, c1)
            mask = np.nan_to_num(prob, nan=-1.0) >= threshold
            if not mask.any():
                continue
            labels, count = gj.mask_components(mask)
            from scipy import ndimage

            for k, sl in enumerate(ndimage.find_objects(labels), start=1):
                if sl is None:
                    continue
                comp = labels[sl] == k
                geom = gj.component_polygon(comp)
                ry, rx = sl[0].start + r0, sl[1].start + c0

                def to_level0(xy: np.ndarray, rx: int = rx, ry: int = ry) -> np.ndarray:
                    out = np.empty_like(xy)
                    out[:, 0] = np.interp(xy[:, 0] + rx, np.arange(heat.cols + 1), x_edges)
                    out[:, 1] = np.interp(xy[:, 1] + ry, np.arange(heat.rows + 1), y_edges)
                    return out

                pieces.append(shapely.transform(geom, to_level0))
                vals = prob[sl][comp]
                stats.append((float(vals.sum()), int(vals.size), float(vals.max())))
                touches = (
                    (sl[0].start == 0 and r0 > 0)
                    or (sl[1].start == 0 and c0 > 0)
                    or (sl[0].stop == r1 - r0 and r1 < heat.rows)
                    or (sl[1].stop == c1 - c0 and c1 < heat.cols)
                )
                border.append(bool(touches))
    # Merge pieces cut by block borders; the others are whole objects already.
    objects: list[tuple[Any, float, int, float]] = [
        (g, *s) for g, s, b in zip(pieces, stats, border, strict=True) if not b
    ]
    cut = [i for i, b in enumerate(border) if b]
    if cut:
        merged = shapely.union_all([pieces[i] for i in cut])
        parts = list(shapely.get_parts(merged))
        tree = STRtree(parts)
        acc = [[0.0, 0, -math.inf] for _ in parts]
        for i in cut:
            point = pieces[i].representative_point()
            hits = tree.query(point, predicate="intersects")
            j = int(hits[0]) if len(hits) else int(tree.nearest(point))
            acc[j][0] += stats[i][0]
            acc[j][1] += stats[i][1]
            acc[j][2] = max(acc[j][2], stats[i][2])
        objects.extend((p, a[0], a[1], a[2]) for p, a in zip(parts, acc, strict=True))
    objects.sort(key=lambda o: (o[0].bounds[1], o[0].bounds[0]))
    features = []
    color = gj.default_color(name)
    for geom, total, count, peak in objects:
        if roi is not None:
            geom = geom.intersection(roi)
            if geom.is_empty:
                continue
        clean = gj.clean_geometry(geom, simplify_tolerance)
        if clean is None or clean.area < max(min_area, gj.PRECISION**2):
            continue
        measurements = {
            "area": float(clean.area),
            "mean_probability": total / max(count, 1),
            "max_probability": peak,
        }
        features.append(gj.make_feature(clean, name, color, measurements))
    # Plain dicts and lists (the geojson package's types do not survive copying).
    return {"type": "FeatureCollection", "features": json.loads(json.dumps(features))}
