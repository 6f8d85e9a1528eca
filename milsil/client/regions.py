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


# Pixel bytes per streamed message: on this project's 2-core VM a region's RAW tiles went in
# fastest in messages of about 1.5 MB (bench/grpc_bench.py, README "Receiving while
# computing"): two 512 px tiles, 450 MB/s, against 350 MB/s for four (3 MB) and 280 MB/s
# for single 256 px tiles (0.2 MB).
MESSAGE_BYTES = 3 * 2**19


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
    tiles_per_message: int | None = None,
    message_bytes: int = MESSAGE_BYTES,
) -> Iterator[Any]:
    """``request_cls`` messages carrying ``image``'s tiles: as many as fit in about
    ``message_bytes`` of pixel data (at least one; at most ``tiles_per_message`` when given);
    the first one also carries ``first_fields`` (e.g. the config). The interior's top-left
    pixel is level-0 ``(x, y)``; ``margin`` pixels of context lie around it."""
    ox, oy = x - margin * downsample, y - margin * downsample
    if ox < 0 or oy < 0:
        raise MilsilError(
            "margin reaches left of/above level-0 (0, 0): lower margin or move the region"
        )
    batch: list[common_pb2.Tile] = []
    size = 0
    first = True
    for tile in image_tiles(image, tile_size, encoding, ox, oy, downsample):
        full = tiles_per_message is not None and len(batch) == tiles_per_message
        if batch and (full or size + len(tile.data) > message_bytes):
            yield request_cls(**(first_fields if first else {}), tiles=batch)
            batch, size, first = [], 0, False
        batch.append(tile)
        size += len(tile.data)
    if batch or first:
        yield request_cls(**(first_fields if first else {}), tiles=batch)


def threshold_on(name: str) -> int:
    """``AnnotateConfig.threshold_on`` from ``"probability"`` or ``"logit"``."""
    if name not in THRESHOLD_ON:
        raise MilsilError(f"threshold_on must be 'probability' or 'logit', got {name!r}")
    return THRESHOLD_ON[name]
