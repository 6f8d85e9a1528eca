"""Region messages (Heatmap, Annotate, MeasureObjects' pixels): an image, cut into tiles
in row order, streamed after the call's first message.

The client's half of the server's :mod:`milsil_server.regions` (the server's
``--max-memory`` is why tiles come in row order: it computes band by band).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from milsil.client.messages import image_tiles
from milsil.errors import MilsilError
from milsil.v1 import common_pb2, inference_service_pb2

THRESHOLD_ON = {
    "probability": inference_service_pb2.AnnotateConfig.PROBABILITY,
    "logit": inference_service_pb2.AnnotateConfig.LOGIT,
}


def interior_region(
    image: np.ndarray, x: float, y: float, downsample: float, margin: int
) -> common_pb2.Region:
    """The level-0 region of ``image`` without its ``margin`` context pixels on each side."""
    h, w = image.shape[0] - 2 * margin, image.shape[1] - 2 * margin
    return common_pb2.Region(
        x=x, y=y, width=w * downsample, height=h * downsample, downsample=downsample
    )


def region_requests(
    first_fields: dict[str, Any],
    image: np.ndarray,
    x: float,
    y: float,
    downsample: float,
    margin: int,
    tile_size: int,
    encoding: str,
    request_cls: type,
    tiles_per_message: int = 4,
) -> Iterator[Any]:
    """``request_cls`` messages carrying ``image``'s tiles, ``tiles_per_message`` at a time;
    the first one also carries ``first_fields`` (e.g. the config). The interior's top-left
    pixel is level-0 ``(x, y)``; ``margin`` pixels of context lie around it."""
    ox, oy = x - margin * downsample, y - margin * downsample
    if ox < 0 or oy < 0:
        raise MilsilError(
            "margin reaches left of/above level-0 (0, 0): lower margin or move the region"
        )
    batch: list[common_pb2.Tile] = []
    first = True
    for tile in image_tiles(image, tile_size, encoding, ox, oy, downsample):
        batch.append(tile)
        if len(batch) == tiles_per_message:
            yield request_cls(**(first_fields if first else {}), tiles=batch)
            batch, first = [], False
    if batch or first:
        yield request_cls(**(first_fields if first else {}), tiles=batch)


def threshold_on(name: str) -> int:
    """``AnnotateConfig.threshold_on`` from ``"probability"`` or ``"logit"``."""
    if name not in THRESHOLD_ON:
        raise MilsilError(f"threshold_on must be 'probability' or 'logit', got {name!r}")
    return THRESHOLD_ON[name]
