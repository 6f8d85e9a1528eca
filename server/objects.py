"""MeasureObjects: objects in, per-object measurements out, all of it.

Read top to bottom: the RPC, then its parts. The objects of a call (GeoJSON geometries
with ids, all before the first tile) are read, checked and charged to the call's memory
reservation as they arrive; the region's pixels come as streamed tiles or, for a slide
under ``--slide-root``, are read by the server in row order (:func:`slide_tiles`), and
either way are computed band by band by :class:`~.region_stream.RegionStream`, each band
feeding the library's :class:`milsil.inference.objects.ObjectAccumulator` and, from the
same pass, its ``FamiliarityAccumulator``: the header and every measurement carry the
region's familiarity.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from milsil.errors import MilsilError, compact
from milsil.inference.familiarity import FamiliarityAccumulator, FamiliarityScore
from milsil.inference.objects import ObjectAccumulator, ObjectMeasurements
from milsil.v1 import inference_service_pb2
from milsil.wsi.objects import PixelRegion, region_pieces
from milsil.wsi.reader import open_slide

from .auth import client_of
from .errors import ResourceExhausted
from .inbox import Inbox
from .memory import Reservation, trim_memory
from .messages import familiarity, queue_status, region_tiles, region_words, warn_unlike
from .region_stream import Computed, RegionSpec, open_stream
from .resources import Limits, Resources, halo_for
from .tiles import TileData

# What one object costs the server while its call runs: its rings as float arrays and the
# accumulator's edge table (about 80 bytes) per vertex; the id, the arrays' headers and
# the per-object sums per object (generous: Python objects).
BYTES_PER_VERTEX = 96
BYTES_PER_OBJECT = 800
BATCH = 2048  # measurements per response message (about 100 bytes each for 2 classes)


def measure_objects_rpc(res: Resources, requests: Iterable[Any], context: Any) -> Iterator[Any]:
    """The MeasureObjects RPC: queue places, the header, the measurements in batches (the
    compute slot held only while a band computes, as for Heatmap)."""
    try:
        with res.inbox(requests, context) as inbox:
            yield from _measure_objects(res, inbox, context)
    finally:
        trim_memory()  # a refused or cancelled call's objects go back to the system


def _measure_objects(res: Resources, inbox: Inbox, context: Any) -> Iterator[Any]:
    iterator = inbox
    first = next(iterator, None)
    if first is None or not first.HasField("config"):
        raise MilsilError("config is required in the first MeasureObjectsRequest")
    config = first.config
    if not config.HasField("region"):
        raise MilsilError("config.region is required (level-0 x, y, width, height, downsample)")
    reg = config.region
    spec = RegionSpec.parse(reg.x, reg.y, reg.width, reg.height, reg.downsample, res.limits)
    ident, model = res.model(config.model, "config.model")
    halo = halo_for(model)
    slide = None
    if config.slide_path:
        slide, _ = res.paths.resolve_slide(config.slide_path, "config.slide_path")
        open_slide(slide).close()  # corrupt or unsupported: one line, before queueing
    Response = inference_service_pb2.MeasureObjectsResponse
    with res.memory.reservation() as reservation:
        received = read_objects(first, iterator, reservation, res.limits)
        if slide is not None and received.first_tiles:
            raise MilsilError("tiles were sent with config.slide_path: send one or the other")
        accumulator = ObjectAccumulator(
            received.geometries,
            spec.height,
            spec.width,
            int(model.config.num_classes),
            received.ids,
            origin=(spec.x, spec.y),
            downsample=spec.downsample,
        )
        received.geometries = []
        judge = FamiliarityAccumulator(model)
        with res.slots.turns(context.is_active, client_of(context), context.peer()) as turn:
            for status in turn.waiting():
                yield Response(queue=queue_status(status))
            inbox.on_wait = turn.release_if_wanted
            tiles = received.tiles() if slide is None else slide_tiles(slide, spec, halo)
            source = inbox if slide is None else None  # where the receiver reads tiles from
            stream = open_stream(res, spec, model, halo, 1, reservation, context, turn, source)
            try:
                for event in stream.events(tiles):
                    if isinstance(event, Computed):
                        accumulator.add_band(event.row0, event.logits)
                        event.judge(judge)
            finally:
                stream.close()
            if slide is not None:
                for _ in received.tiles():  # a tile sent anyway after the objects
                    raise MilsilError(
                        "tiles were sent with config.slide_path: send one or the other"
                    )
        result = accumulator.result()
    judged = judge.result()
    slide_words = f" of slide {config.slide_path}" if config.slide_path else ""
    warn_unlike(f"MeasureObjects models/{ident} {region_words(spec)}{slide_words}", judged)
    yield Response(header=header(ident, model.class_names, len(result.ids), halo, judged))
    for batch in measurement_batches(result, judged=judged):
        yield Response(measurements=batch)


@dataclass
class ReceivedObjects:
    """The objects of a call, and the stream positioned at its first tile."""

    ids: list[str] = field(default_factory=list)
    geometries: list[dict] = field(default_factory=list)
    first_tiles: list[Any] = field(default_factory=list)
    rest: Iterator[Any] = field(default_factory=lambda: iter(()))

    def tiles(self) -> Iterator[TileData]:
        """The call's tiles (later messages may carry tiles only)."""
        return region_tiles(self.first_tiles, _tiles_only(self.rest))


def _tiles_only(messages: Iterable[Any]) -> Iterator[Any]:
    for message in messages:
        if message.objects:
            raise MilsilError(
                "objects must all come before the first tile (a message after a tile carried "
                f"{len(message.objects)} objects)"
            )
        yield message


def compact_geometry(geometry: Any, where: str) -> tuple[dict, int]:
    """A Polygon/MultiPolygon mapping with its rings as float arrays (a fraction of the
    memory of JSON lists), and its vertex count; refuses anything else by name."""
    kind = geometry.get("type") if isinstance(geometry, dict) else None
    if kind not in ("Polygon", "MultiPolygon"):
        raise MilsilError(
            f"{where}.geometry must be a GeoJSON Polygon or MultiPolygon, got {kind!r}"
        )
    polygons = geometry.get("coordinates")
    polygons = [polygons] if kind == "Polygon" else polygons
    bad = MilsilError(f"{where}.geometry coordinates must be rings of finite [x, y] numbers")
    count, compact = 0, []
    try:
        for polygon in polygons:
            rings = []
            for ring in polygon:
                arr = np.asarray(ring, dtype=np.float64)
                if arr.ndim != 2 or arr.shape[1] < 2 or not np.isfinite(arr[:, :2]).all():
                    raise bad
                rings.append(np.ascontiguousarray(arr[:, :2]))
                count += len(arr)
            compact.append(rings)
    except (TypeError, ValueError):
        raise bad from None
    if count == 0:
        raise MilsilError(f"{where}.geometry has no coordinates")
    return {"type": "MultiPolygon", "coordinates": compact}, count


def read_objects(
    first: Any, rest: Iterator[Any], reservation: Reservation, limits: Limits
) -> ReceivedObjects:
    """Read every object up to the first tile, checking each and charging its memory."""
    got = ReceivedObjects()
    try:
        _read_into(got, first, rest, reservation, limits)
    except BaseException:
        # Refused half-way: drop what was built now (the traceback keeps this frame).
        got.ids.clear()
        got.geometries.clear()
        raise
    if not got.ids:
        raise MilsilError("no objects were sent; send at least one in `objects`")
    got.rest = rest
    return got


def _read_into(
    got: ReceivedObjects, first: Any, rest: Iterator[Any], reservation: Reservation, limits: Limits
) -> None:
    """:func:`read_objects`' loop: each message's objects counted before any is built."""
    seen: set[str] = set()
    held = 0
    message = first
    while message is not None:
        if message is not first and message.HasField("config"):
            raise MilsilError("config may only be sent in the first message")
        if len(got.ids) + len(message.objects) > limits.max_objects:
            raise ResourceExhausted(
                f"at most {limits.max_objects:,} objects per call (this message would make "
                f"{compact(len(got.ids) + len(message.objects))}); send the objects of smaller "
                "regions in separate calls",
                reason="too_large",
            )
        for obj in message.objects:
            n = len(got.ids)
            where = f"objects[{n}]"
            if not obj.id:
                raise MilsilError(f"{where}.id is required (unique within the call)")
            if obj.id in seen:
                raise MilsilError(f"{where}.id {obj.id[:80]!r} was already used in this call")
            try:
                geometry = json.loads(obj.geometry)
            except (json.JSONDecodeError, RecursionError):
                raise MilsilError(
                    f"{where}.geometry is not JSON text (id {obj.id[:80]!r})"
                ) from None
            geometry, vertices = compact_geometry(geometry, where)
            held += BYTES_PER_OBJECT + BYTES_PER_VERTEX * vertices
            reservation.ensure(held, "these objects")
            seen.add(obj.id)
            got.ids.append(obj.id)
            got.geometries.append(geometry)
        if message.tiles:
            got.first_tiles = list(message.tiles)
            break
        message = next(rest, None)


def slide_tiles(path: Path, spec: RegionSpec, context: int) -> Iterator[TileData]:
    """The region and its context read from a slide, as raw tiles in row order."""
    region = PixelRegion(spec.x, spec.y, spec.width, spec.height, spec.downsample)
    with open_slide(path) as slide:
        for x, y, pixels in region_pieces(slide, region, context):
            h, w = pixels.shape[:2]
            yield TileData(
                "RAW_RGB8",
                pixels.tobytes(),
                w,
                h,
                spec.x + x * spec.downsample,
                spec.y + y * spec.downsample,
                spec.downsample,
            )


def header(
    model_id: str,
    class_names: list[str],
    count: int,
    context: int,
    judged: FamiliarityScore | None,
) -> inference_service_pb2.MeasureObjectsHeader:
    return inference_service_pb2.MeasureObjectsHeader(
        model=f"models/{model_id}",
        class_names=list(class_names),
        object_count=count,
        context_pixels=context,
        familiarity=familiarity(judged),
    )


def measurement_batches(
    result: ObjectMeasurements, batch: int = BATCH, judged: FamiliarityScore | None = None
) -> Iterator[inference_service_pb2.ObjectMeasurements]:
    """The measurements in messages of ``batch`` objects, in the order the objects came,
    each with the region's familiarity (``judged``)."""
    p = result.p
    region = familiarity(judged)
    Measurement = inference_service_pb2.ObjectMeasurement
    for start in range(0, len(result.ids), batch):
        stop = min(start + batch, len(result.ids))
        yield inference_service_pb2.ObjectMeasurements(
            objects=[
                Measurement(
                    id=result.ids[k],
                    mean_logits=result.mean_logit[k].tolist(),
                    max_logits=result.max_logit[k].tolist(),
                    probabilities=p[k].tolist(),
                    pixels=int(result.pixels[k]),
                    familiarity=region,
                )
                for k in range(start, stop)
            ]
        )
