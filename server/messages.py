"""The message codec every RPC family shares (the server's half of ``milsil.client.messages``).

``Tile`` messages become :class:`~.tiles.TileData` or decoded pixels; value types,
timestamps, page tokens, queue places and the heatmap header become messages. Contract
facts are read from the contract (value types from ``ValueType``). Each family's own
messages live beside its RPCs (:mod:`.bags`, :mod:`.regions`, :mod:`.objects`,
:mod:`.slides`, :mod:`.model_service`, :mod:`.training_service`); a bad field raises
:class:`MilsilError` (INVALID_ARGUMENT) naming the field.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np
from google.protobuf import timestamp_pb2

from milsil.errors import MilsilError
from milsil.inference.familiarity import FamiliarityScore
from milsil.inference.tiling import context_for_receptive_field
from milsil.v1 import common_pb2, inference_service_pb2
from milsil.wsi.outlines import OutlineSettings, check_pixel_size

from .resources import Limits
from .slots import QueueStatus
from .tiles import TileData, decode_tile

log = logging.getLogger("milsil.server")

# ------------------------------------------------------------------ contract facts

_VALUE_PREFIX = "VALUE_TYPE_"
VALUE_TYPES_ALLOWED = ", ".join(
    sorted(
        name.removeprefix(_VALUE_PREFIX)
        for name in common_pb2.ValueType.keys()
        if common_pb2.ValueType.Value(name) != common_pb2.VALUE_TYPE_UNSPECIFIED
    )
)


def value_type(value: int, field: str) -> tuple[int, np.dtype]:
    """A ``ValueType`` (unspecified: FLOAT32, as the contract says) and its numpy dtype.

    The dtype is read from the enum name (``VALUE_TYPE_FLOAT16`` -> little-endian float16).
    """
    chosen = value or common_pb2.VALUE_TYPE_FLOAT32
    try:
        name = common_pb2.ValueType.Name(chosen)
    except ValueError:
        raise MilsilError(f"{field} {value} is unknown; allowed: {VALUE_TYPES_ALLOWED}") from None
    return chosen, np.dtype(name.removeprefix(_VALUE_PREFIX).lower()).newbyteorder("<")


def context_pixels(receptive_field: int | None) -> int:
    """``Model.context_pixels``: the tiled engine's context, 0 without a receptive field."""
    return context_for_receptive_field(receptive_field) if receptive_field else 0


def timestamp(seconds: float | None) -> timestamp_pb2.Timestamp | None:
    if seconds is None:
        return None
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def page_token(offset: int, limit: int, more: bool) -> str:
    return str(offset + limit) if more else ""


# ------------------------------------------------------------------ outline settings


def outline_request(
    message: inference_service_pb2.OutlineSettings, pixel_size_um: float, prefix: str
) -> tuple[OutlineSettings, float | None]:
    """An ``OutlineSettings`` message and a ``pixel_size_um`` field (Annotate's and
    AnnotateSlide's alike) as the library's settings and pixel size (None: unknown).

    The contract's convention: 0 means the library's default, a negative value "off"
    (:meth:`OutlineSettings.with_defaults`). A bad value names its request field, e.g.
    ``config.outline.min_area``.
    """
    values = {f.name: getattr(message, f.name) for f in message.DESCRIPTOR.fields}
    try:
        outline = OutlineSettings.with_defaults(**values)
    except MilsilError as exc:
        raise MilsilError(f"{prefix}.outline.{exc}") from None
    try:
        return outline, check_pixel_size(pixel_size_um)
    except MilsilError as exc:
        raise MilsilError(f"{prefix}.{exc}") from None


# ------------------------------------------------------------------ tiles


def _encoding(tile: common_pb2.Tile, where: str) -> str:
    """The tile's encoding by name (RAW_RGB8, PNG, JPEG); an unknown number is refused."""
    try:
        return common_pb2.Tile.Encoding.Name(tile.encoding)
    except ValueError:
        raise MilsilError(
            f"{where}.encoding {tile.encoding} is unknown; allowed: RAW_RGB8, PNG, JPEG"
        ) from None


def decode(tile: common_pb2.Tile, where: str, limits: Limits) -> np.ndarray:
    """A ``Tile`` as uint8 ``H x W x 3``."""
    encoding = _encoding(tile, where)
    return decode_tile(encoding, tile.data, tile.width, tile.height, where, limits)


def tile_data(tile: common_pb2.Tile, where: str) -> TileData:
    """A region's ``Tile`` as plain values (not decoded: its header is checked first)."""
    return TileData(
        _encoding(tile, where),
        tile.data,
        tile.width,
        tile.height,
        tile.x,
        tile.y,
        tile.downsample,
    )


def region_tiles(
    first: Iterable[common_pb2.Tile], messages: Iterable[Any], start: int = 0
) -> Iterator[TileData]:
    """The tiles of a Heatmap/Annotate stream: the first message's, then every later
    message's (which must not repeat the config)."""
    n = start
    for tile in first:
        yield tile_data(tile, f"tiles[{n}]")
        n += 1
    for message in messages:
        if message.HasField("config"):
            raise MilsilError("config may only be sent in the first message")
        for tile in message.tiles:
            yield tile_data(tile, f"tiles[{n}]")
            n += 1


# ------------------------------------------------------------------ shared responses


def queue_status(status: QueueStatus) -> inference_service_pb2.QueueStatus:
    """The request's place in the compute queue."""
    return inference_service_pb2.QueueStatus(position=status.position, waiting=status.waiting)


def heatmap_header(
    model_id: str,
    model: Any,
    rows: int,
    cols: int,
    stride: int,
    downsample: float,
    origin: tuple[float, float],
    value_type: int,
) -> inference_service_pb2.HeatmapHeader:
    """``origin``: level-0 (x, y) of the region's top-left corner."""
    return inference_service_pb2.HeatmapHeader(
        model=f"models/{model_id}",
        class_names=model.class_names,
        rows=rows,
        cols=cols,
        stride=stride,
        step=stride * downsample,
        origin_x=origin[0] + 0.5 * downsample,
        origin_y=origin[1] + 0.5 * downsample,
        value_type=value_type,
        receptive_field=int(model.receptive_field),
        context_pixels=context_pixels(model.receptive_field),
    )


def heatmap_tile(
    index: int,
    row: int,
    col: int,
    logits: np.ndarray,
    dtype: np.dtype,
    probabilities: np.ndarray | None,
    judged: FamiliarityScore | None = None,
) -> inference_service_pb2.HeatmapTile:
    """Map samples ``[C, rows, cols]`` whose top-left is ``(row, col)``, as ``dtype``
    (Heatmap: one per request tile; SlideHeatmap: one per block), with the familiarity of
    those samples (``judged``)."""
    tile = inference_service_pb2.HeatmapTile(
        familiarity=familiarity(judged),
        tile_index=index,
        row=row,
        col=col,
        rows=logits.shape[1],
        cols=logits.shape[2],
        num_classes=logits.shape[0],
        logits=logits.astype(dtype).tobytes(),
    )
    if probabilities is not None:
        tile.probabilities = probabilities.astype(dtype).tobytes()
    return tile


# ------------------------------------------------------------------ familiarity (issue 20)

# The measurement a QuPath object gets: the familiarity score of the region (Annotate) or
# slide tile (AnnotateSlide) it was drawn from; the QuPath scripts write the same name.
OOD_MEASUREMENT = "milsil OOD score"
# The feature property with the whole judgement (AnnotateSlide: each feature's slide tile).
FAMILIARITY_PROPERTY = "milsil_familiarity"


def familiarity(score: FamiliarityScore | None) -> common_pb2.Familiarity:
    """A ``Familiarity`` message; ``None`` (a model without training statistics, or no
    sample to judge) is ``available = false`` with every other field 0, as the contract
    says."""
    if score is None:
        return common_pb2.Familiarity()
    return common_pb2.Familiarity(
        available=True,
        score=score.score,
        threshold=score.threshold,
        unlike_training=score.unlike_training,
    )


def region_words(spec: Any) -> str:
    """A request's region (a ``RegionSpec``) as the log names it:
    ``region level-0 (x, y) w x h`` (level-0 pixels)."""
    return (
        f"region level-0 ({spec.x:g}, {spec.y:g}) "
        f"{spec.width * spec.downsample:g} x {spec.height * spec.downsample:g}"
    )


def warn_unlike(what: str, score: FamiliarityScore | None) -> None:
    """The server's one log line for an answer whose input was unlike the training data
    (``what`` names the call and its region or slide; the library's wording, as the CLI's),
    so an operator sees what users were warned about; nothing for a familiar input or a
    model without statistics."""
    line = score.warning(what) if score is not None else None
    if line:
        log.warning(line)


def mark_feature(
    feature: Mapping[str, Any], score: FamiliarityScore | None, with_property: bool
) -> None:
    """Add a QuPath GeoJSON feature's familiarity: the measurement :data:`OOD_MEASUREMENT`
    (``properties.measurements`` stays a name -> number map, as QuPath reads it) and, with
    ``with_property``, :data:`FAMILIARITY_PROPERTY` ``{score, threshold, unlike_training}``.
    Nothing for ``None``: an old model's features are unchanged."""
    if score is None or not math.isfinite(score.score):
        return
    props = feature["properties"]
    props.setdefault("measurements", {})[OOD_MEASUREMENT] = float(score.score)
    if with_property:
        props[FAMILIARITY_PROPERTY] = {
            "score": float(score.score),
            "threshold": float(score.threshold),
            "unlike_training": bool(score.unlike_training),
        }
