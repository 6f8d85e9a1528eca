"""Slide messages (AnnotateSlide, SlideHeatmap): the ``SlideConfig`` of a slide the server
reads itself; the client's half of the server's :mod:`milsil_server.slides`."""

from __future__ import annotations

import json

from milsil.v1 import inference_service_pb2


def slide_config(
    model: str,
    path: str,
    stride: int,
    downsample: float,
    tissue_only: bool,
    tile_size: int,
    class_name: str,
    write_tiff: bool,
    tiff_path: str,
    roi: str | dict | None,
    outline: inference_service_pb2.OutlineSettings | None = None,
    pixel_size_um: float = 0.0,
) -> inference_service_pb2.SlideConfig:
    """``roi``: a GeoJSON Polygon/MultiPolygon (dict or text, level-0 px), or None;
    ``outline``: the clean-up (None: the server's defaults); ``pixel_size_um``: 0 = the
    slide's."""
    config = inference_service_pb2.SlideConfig(
        model=model,
        path=str(path),
        stride=stride,
        downsample=downsample,
        tissue_only=tissue_only,
        tile_size=tile_size,
        class_name=class_name,
        write_tiff=write_tiff,
        tiff_path=tiff_path,
        outline=outline,
        pixel_size_um=pixel_size_um,
    )
    if roi:
        config.roi = roi if isinstance(roi, str) else json.dumps(roi)
    return config
