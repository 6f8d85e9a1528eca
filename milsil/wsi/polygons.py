"""A whole-slide probability map as QuPath annotations."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from milsil.errors import MilsilError
from milsil.wsi.heatmap import SlideHeatmap
from milsil.wsi.outlines import OutlineSettings
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
    outline: OutlineSettings | None = None,
    pixel_size_um: float | None = None,
) -> dict[str, Any]:
    """QuPath GeoJSON FeatureCollection of ``probability >= threshold`` (level-0 px).

    The map is read ``block`` rows at a time and outlined by
    :class:`milsil.wsi.geojson.OutlineStream` (bounded memory; objects that cross block
    borders are joined, so the result does not depend on ``block``, and equals
    ``heatmap_to_geojson`` of the whole map). Samples never computed (NaN) are outside.
    Each object has ``area`` (level-0 px^2), ``mean_probability`` and ``max_probability``.
    ``roi`` (a shapely geometry, level-0 px): outlines are clipped to it, and rows that miss
    it are not read; the statistics are those of each whole outline. ``outline``: the
    clean-up (:mod:`milsil.wsi.outlines`; None: none), in µm when ``pixel_size_um``
    (level-0) is given, else level-0 px; the collection's ``outline_settings`` says which.
    Bands hold back the rows its smoothing, merging and hole filling need, so the result
    still does not depend on ``block``.
    """
    from milsil.wsi import geojson as gj

    if not 0 <= class_index < heat.num_classes:
        raise MilsilError(f"class index must be in 0..{heat.num_classes - 1}, got {class_index}")
    threshold = check_threshold(threshold)
    if not isinstance(block, int) or block < 1:
        raise MilsilError(f"block must be a positive integer, got {block!r}")
    name = classification or heat.class_names[class_index]
    ds = heat.downsample
    rw, rh = heat.region_size
    outlines = gj.OutlineStream(
        heat.rows,
        heat.cols,
        threshold,
        downsample=ds,
        stride=heat.stride,
        region_size=(rw * ds, rh * ds),
        classification=name,
        min_area=min_area,
        simplify_tolerance=simplify_tolerance,
        clip=roi,
        outline=outline,
        pixel_size_um=pixel_size_um,
    )
    y_edges = gj.cell_edges(heat.rows, heat.stride, rh) * ds
    band = max(1, min(block, (64 * 2**20) // max(1, heat.cols * 8 * 4)))  # ~64 MB a band
    for r0 in range(0, heat.rows, band):
        r1 = min(r0 + band, heat.rows)
        if roi is not None and (y_edges[r1] <= roi.bounds[1] or y_edges[r0] >= roi.bounds[3]):
            prob = np.full((r1 - r0, heat.cols), np.nan, dtype=np.float32)  # not needed
        else:
            prob = heat.probability_block(class_index, r0, r1, 0, heat.cols)
        outlines.add(prob, {"probability": prob})
    collection, _ = outlines.finish()
    # Plain dicts and lists (the geojson package's types do not survive copying).
    return {
        "type": "FeatureCollection",
        "features": json.loads(json.dumps(collection["features"])),
        "outline_settings": collection["outline_settings"],
    }
