"""Whole slide images: reading, tissue, tiles, contours, slide heatmaps and their exports.

Everything here speaks level-0 (full resolution) pixel coordinates, top-left origin, y
down, as QuPath and OpenSlide do; a ``downsample`` travels with every region. One module
per job:

* :mod:`~milsil.wsi.settings`: :class:`SlideSettings`, the one home of slide defaults
  (stride, tile, threshold, ...) and of the rules their values follow.
* :mod:`~milsil.wsi.reader`: :class:`Slide` / :func:`open_slide` over OpenSlide; a corrupt
  or unsupported file is one :class:`~milsil.errors.MilsilError` line.
* :mod:`~milsil.wsi.tissue`: :func:`tissue_mask` (saturation, Otsu) and the tile grid.
* :mod:`~milsil.wsi.contours`: tumour contours (QuPath GeoJSON, CAMELYON16/ASAP XML) and
  CAMELYON16-style patch sampling.
* :mod:`~milsil.wsi.heatmap`: :func:`slide_heatmap`, the resumable, seamless logit heatmap
  of a whole slide (over :mod:`milsil.inference`), kept on disk as a :class:`SlideHeatmap`.
* :mod:`~milsil.wsi.polygons`, :mod:`~milsil.wsi.geojson`: the map as QuPath annotations;
  :mod:`~milsil.wsi.tiff`: pyramidal TIFFs (probability maps, synthetic slides).
* :mod:`~milsil.wsi.annotate`: :func:`annotate_slide`, all of it in one call;
  :mod:`~milsil.wsi.batch`: a folder of slides, resumable and torchrun-sharded.
* :mod:`~milsil.wsi.synthetic`: synthetic slides for tests, demos and benchmarks.

The names below are importable from ``milsil.wsi`` directly; each module is imported on
first use, so ``import milsil.wsi`` stays light (no torch, no OpenSlide).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "settings": ("SlideSettings", "DEFAULT_STRIDE", "DEFAULT_TILE"),
    "reader": ("Slide", "open_slide", "SLIDE_SUFFIXES"),
    "tissue": ("TissueMask", "tissue_mask", "Tile", "tile_grid", "iter_tiles"),
    "contours": (
        "read_contours",
        "write_asap_xml",
        "find_contours",
        "rasterize",
        "PatchSample",
        "sample_patches",
        "CAMELYON_PATCH",
    ),
    "heatmap": ("SlideHeatmap", "SlideProgress", "Timings", "slide_heatmap"),
    "polygons": ("heatmap_polygons",),
    "outlines": ("OutlineSettings", "ResolvedOutline"),
    "tiff": ("write_probability_tiff", "write_pyramidal_tiff"),
    "annotate": ("AnnotateResult", "annotate_slide"),
    "synthetic": ("synthetic_slide",),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'milsil.wsi' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"milsil.wsi.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
