"""Every conversion between milsil.v1 messages and the library, in one place.

Requests become validated plain values or library settings (:class:`RegionRequest`,
:class:`AnnotateSettings`, :class:`milsil.wsi.settings.SlideSettings`, decoded tiles);
library results become response messages. Contract facts are read from the contract:
value types from ``ValueType``, job states from ``Job.State``. Nothing here computes;
a bad field raises :class:`MilsilError` (INVALID_ARGUMENT) naming the field.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from google.protobuf import timestamp_pb2

from milsil.errors import MilsilError
from milsil.inference.tiling import context_for_receptive_field
from milsil.models import target_class_index
from milsil.v1 import common_pb2, inference_service_pb2, model_service_pb2, training_service_pb2
from milsil.wsi.settings import DEFAULT_STRIDE, DEFAULT_TILE, SlideSettings
from milsil_server.errors import Cancelled, ResourceExhausted
from milsil_server.inference import Limits, decode_tile
from milsil_server.regions import RegionSpec, TileData

if TYPE_CHECKING:
    from milsil.wsi.heatmap import SlideProgress
    from milsil_server.slide_jobs import SlideJob

# ------------------------------------------------------------------ contract facts

_VALUE_PREFIX = "VALUE_TYPE_"
VALUE_TYPES_ALLOWED = ", ".join(
    sorted(
        name.removeprefix(_VALUE_PREFIX)
        for name in common_pb2.ValueType.keys()
        if common_pb2.ValueType.Value(name) != common_pb2.VALUE_TYPE_UNSPECIFIED
    )
)
JOB_STATES_ALLOWED = ", ".join(
    name
    for name in training_service_pb2.Job.State.keys()
    if training_service_pb2.Job.State.Value(name) != training_service_pb2.Job.STATE_UNSPECIFIED
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


def _timestamp(seconds: float | None) -> timestamp_pb2.Timestamp | None:
    if seconds is None:
        return None
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def page_token(offset: int, limit: int, more: bool) -> str:
    return str(offset + limit) if more else ""


# ------------------------------------------------------------------ tiles


def decode(tile: common_pb2.Tile, where: str, limits: Limits) -> np.ndarray:
    """A ``Tile`` as uint8 ``H x W x 3``."""
    try:
        encoding = common_pb2.Tile.Encoding.Name(tile.encoding)
    except ValueError:
        raise MilsilError(
            f"{where}.encoding {tile.encoding} is unknown; allowed: RAW_RGB8, PNG, JPEG"
        ) from None
    return decode_tile(encoding, tile.data, tile.width, tile.height, where, limits)


def tile_data(tile: common_pb2.Tile, where: str) -> TileData:
    """A region's ``Tile`` as plain values (not decoded: its header is checked first)."""
    try:
        encoding = common_pb2.Tile.Encoding.Name(tile.encoding)
    except ValueError:
        raise MilsilError(
            f"{where}.encoding {tile.encoding} is unknown; allowed: RAW_RGB8, PNG, JPEG"
        ) from None
    return TileData(encoding, tile.data, tile.width, tile.height, tile.x, tile.y, tile.downsample)


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


# ------------------------------------------------------------------ ModelService


def model_message(row: dict[str, Any]) -> model_service_pb2.Model:
    return model_service_pb2.Model(
        name=f"models/{row['id']}",
        model_id=row["id"],
        display_name=row.get("display_name", ""),
        arch=row["arch"],
        head=row["head"],
        width=row["width"],
        class_names=row["class_names"],
        receptive_field=row.get("receptive_field", 0),
        context_pixels=context_pixels(row.get("receptive_field", 0)),
        target_class=row["class_names"][target_class_index(row["class_names"], None)],
        patch_size=row.get("patch_size", 0),
        source_job=row.get("source_job", ""),
        metrics=row.get("metrics", {}),
        size_bytes=row.get("size_bytes", 0),
        sha256=row.get("sha256", ""),
        create_time=_timestamp(row["create_time"]),
    )


def export_chunk_size(chunk_size: int, max_message_bytes: int) -> int:
    size = chunk_size or (1 << 20)
    if not 0 < size <= max_message_bytes - 1024:
        raise MilsilError(
            f"chunk_size must be 1-{max_message_bytes - 1024} bytes (0 = 1 MiB), got {size}"
        )
    return size


# ------------------------------------------------------------------ TrainingService

# The message fields, read from the contract (the store keeps them by these names).
CONFIG_FIELDS = tuple(f.name for f in training_service_pb2.TrainingConfig.DESCRIPTOR.fields)
_PROGRESS_FIELDS = tuple(f.name for f in training_service_pb2.TrainingProgress.DESCRIPTOR.fields)


def training_config(config: training_service_pb2.TrainingConfig) -> dict[str, Any]:
    """The request's settings as :func:`milsil_server.jobs.effective_config` takes them."""
    return {k: getattr(config, k) for k in CONFIG_FIELDS}


def job_state(state: int) -> str | None:
    """A ListJobs state filter as the store's state name (None: all states)."""
    try:
        return training_service_pb2.Job.State.Name(state) if state else None
    except ValueError:
        raise MilsilError(f"state {state} is unknown; allowed: {JOB_STATES_ALLOWED}") from None


def dataset_message(
    row: dict[str, Any], already_existed: bool = False
) -> training_service_pb2.Dataset:
    return training_service_pb2.Dataset(
        name=f"datasets/{row['id']}",
        dataset_id=row["id"],
        display_name=row.get("display_name", ""),
        class_names=row["class_names"],
        bag_count=row["bag_count"],
        tile_count=row["tile_count"],
        patient_count=row["patient_count"],
        size_bytes=row["size_bytes"],
        already_existed=already_existed,
        create_time=_timestamp(row["create_time"]),
    )


def job_message(row: dict[str, Any]) -> training_service_pb2.Job:
    cfg = row.get("config", {})
    progress = row.get("progress") or {}
    job = training_service_pb2.Job(
        name=f"jobs/{row['id']}",
        job_id=row["id"],
        display_name=row.get("display_name", ""),
        state=training_service_pb2.Job.State.Value(row["state"]),
        dataset=f"datasets/{row['dataset_id']}",
        config=training_service_pb2.TrainingConfig(
            **{k: cfg[k] for k in CONFIG_FIELDS if k in cfg}
        ),
        progress=training_service_pb2.TrainingProgress(
            **{
                k: progress[k]
                for k in _PROGRESS_FIELDS
                if isinstance(progress.get(k), (int, float))
            }
        ),
        model=f"models/{row['model_id']}" if row.get("model_id") else "",
        error=row.get("error", ""),
        create_time=_timestamp(row["create_time"]),
        update_time=_timestamp(row.get("update_time")),
        attempts=row.get("attempts", 1),
    )
    if row.get("end_time"):
        job.end_time.CopyFrom(_timestamp(row["end_time"]))
    return job


@dataclass
class UploadedBag:
    label: str
    patient: str
    tiles: np.ndarray  # [N, H, W, 3] uint8
    where: str  # the bag in messages, e.g. "bags[0] of message 2"


class BagUpload:
    """UploadDatasetRequest messages -> whole bags (a bag may continue over messages).

    Iterate for the bags, each yielded as soon as the next one starts; ``display_name``
    is the first message's.
    """

    def __init__(
        self, requests: Iterable[Any], limits: Limits, is_active: Callable[[], bool]
    ) -> None:
        self.requests, self.limits, self.is_active = requests, limits, is_active
        self.display_name = ""

    def __iter__(self) -> Iterator[UploadedBag]:
        pending: dict[str, Any] | None = None
        for n, request in enumerate(self.requests):
            if n == 0:
                self.display_name = request.display_name
            for b, bag in enumerate(request.bags):
                where = f"bags[{b}] of message {n}"
                if pending is not None and (not bag.bag_id or bag.bag_id != pending["id"]):
                    yield _whole_bag(pending)
                    pending = None
                if pending is not None:  # a continuation of the same bag
                    for field, value in (("label", bag.label), ("patient", bag.patient_id)):
                        if value and value != pending[field]:
                            raise MilsilError(
                                f"{where}: bag_id {bag.bag_id!r} continues the previous bag "
                                f"but has {field} {value!r}, not {pending[field]!r}; give "
                                "every bag its own bag_id"
                            )
                if pending is None:
                    pending = {
                        "id": bag.bag_id,
                        "label": bag.label,
                        "patient": bag.patient_id,
                        "tiles": [],
                        "where": where,
                    }
                for t, tile in enumerate(bag.tiles):
                    if len(pending["tiles"]) >= self.limits.max_bag_tiles:
                        raise ResourceExhausted(
                            f"{where}: a bag may have at most {self.limits.max_bag_tiles} tiles"
                        )
                    pending["tiles"].append(decode(tile, f"{where}.tiles[{t}]", self.limits))
            if not self.is_active():
                raise Cancelled("upload cancelled by the client")
        if pending is not None:
            yield _whole_bag(pending)


def _whole_bag(pending: dict[str, Any]) -> UploadedBag:
    tiles = pending["tiles"]
    if not tiles:
        raise MilsilError(f"{pending['where']} has no tiles")
    shape = tiles[0].shape
    for i, t in enumerate(tiles):
        if t.shape != shape:
            raise MilsilError(
                f"{pending['where']}.tiles[{i}] is {t.shape[1]}x{t.shape[0]} but the bag's first tile is "
                f"{shape[1]}x{shape[0]}: all tiles of a bag must have the same size"
            )
    return UploadedBag(pending["label"], pending["patient"], np.stack(tiles), pending["where"])


# ------------------------------------------------------------------ ClassifyBag


def bag_request(requests: Iterable[Any], limits: Limits) -> tuple[str, list[np.ndarray]]:
    """ClassifyBagRequest messages -> (model name, decoded tiles)."""
    model_name = None
    tiles: list[np.ndarray] = []
    pixels = 0
    for n, request in enumerate(requests):
        if n == 0:
            model_name = request.model
        elif request.model and request.model != model_name:
            raise MilsilError("model may only be set in the first message (or repeated unchanged)")
        for tile in request.tiles:
            where = f"tiles[{len(tiles)}]"
            if len(tiles) >= limits.max_bag_tiles:
                raise ResourceExhausted(f"a bag may have at most {limits.max_bag_tiles} tiles")
            pixels += max(tile.width, 0) * max(tile.height, 0)
            if pixels > limits.max_bag_pixels:
                raise ResourceExhausted(f"a bag may hold at most {limits.max_bag_pixels} pixels")
            tiles.append(decode(tile, where, limits))
    if model_name is None:
        raise MilsilError("empty stream: the first ClassifyBagRequest must name the model")
    return model_name, tiles


def classify_bag_response(
    model_id: str, classes: list[str], result: dict[str, Any]
) -> inference_service_pb2.ClassifyBagResponse:
    response = inference_service_pb2.ClassifyBagResponse(
        model=f"models/{model_id}",
        class_names=classes,
        bag_logits=result["mil_logits"],
        bag_probabilities=result["mil_probabilities"],
        attention=result["attention"],
        predicted_class=classes[int(np.argmax(result["mil_probabilities"]))],
    )
    if result["sil_logits"] is not None:
        for i, (lg, pr) in enumerate(
            zip(result["sil_logits"], result["sil_probabilities"], strict=True)
        ):
            response.tiles.add(index=i, logits=lg, probabilities=pr)
    return response


# ------------------------------------------------------------------ Heatmap and Annotate


@dataclass(frozen=True)
class RegionRequest:
    """A validated ``HeatmapConfig`` (the model is not loaded yet)."""

    model: str  # the model's name as sent
    model_field: str  # e.g. "config.model", for messages
    spec: RegionSpec
    stride: int
    value_type: int
    dtype: np.dtype
    include_probabilities: bool


def region_request(
    config: inference_service_pb2.HeatmapConfig, prefix: str, limits: Limits
) -> RegionRequest:
    stride = config.stride or 1
    if not 1 <= stride <= limits.max_stride:
        raise MilsilError(
            f"{prefix}.stride must be 1-{limits.max_stride} (0 = 1), got {config.stride}"
        )
    chosen, dtype = value_type(config.value_type, f"{prefix}.value_type")
    if not config.HasField("region"):
        raise MilsilError(f"{prefix}.region is required (level-0 x, y, width, height, downsample)")
    reg = config.region
    spec = RegionSpec.parse(reg.x, reg.y, reg.width, reg.height, reg.downsample, limits)
    return RegionRequest(
        config.model, f"{prefix}.model", spec, stride, chosen, dtype, config.include_probabilities
    )


@dataclass(frozen=True)
class AnnotateSettings:
    """A validated ``AnnotateConfig`` for a model's classes."""

    class_index: int
    class_name: str
    probability: bool  # threshold the probability (else the logit)
    threshold: float
    color: list[int] | None
    classification: str
    min_area: float
    simplify_tolerance: float


def annotate_settings(
    config: inference_service_pb2.AnnotateConfig, classes: list[str]
) -> AnnotateSettings:
    try:
        class_name = classes[target_class_index(classes, config.class_name)]
    except MilsilError:
        raise MilsilError(
            f"config.class_name {config.class_name!r} is not a class of the model; allowed: {', '.join(classes)}"
        ) from None
    Config = inference_service_pb2.AnnotateConfig
    on = config.threshold_on or Config.PROBABILITY
    if on not in (Config.PROBABILITY, Config.LOGIT):
        raise MilsilError(f"config.threshold_on {on} is unknown; allowed: PROBABILITY, LOGIT")
    probability = on == Config.PROBABILITY
    threshold = config.threshold if config.HasField("threshold") else (0.5 if probability else 0.0)
    if not math.isfinite(threshold):
        raise MilsilError(f"config.threshold must be a finite number, got {threshold}")
    if probability and not 0.0 <= threshold <= 1.0:
        raise MilsilError(f"config.threshold must be in [0, 1] for PROBABILITY, got {threshold}")
    _non_negative(config, ("min_area", "simplify_tolerance"), "config.")
    color = list(config.color)
    if color and (len(color) != 3 or not all(0 <= c <= 255 for c in color)):
        raise MilsilError(f"config.color must be empty or [r, g, b] with 0-255, got {color}")
    return AnnotateSettings(
        class_index=classes.index(class_name),
        class_name=class_name,
        probability=probability,
        threshold=float(threshold),
        color=color or None,
        classification=config.classification or class_name,
        min_area=config.min_area,
        simplify_tolerance=config.simplify_tolerance,
    )


def _non_negative(message: Any, names: tuple[str, ...], prefix: str) -> None:
    for name in names:
        value = getattr(message, name)
        if not math.isfinite(value) or value < 0:
            raise MilsilError(
                f"{prefix}{name} must be a finite number >= 0 (level-0 pixels), got {value}"
            )


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


def region_tile(
    index: int,
    samples: tuple[int, int, int, int],
    block: torch.Tensor,
    dtype: np.dtype,
    probabilities: bool,
) -> inference_service_pb2.HeatmapTile:
    """The logits ``[C, rows, cols]`` of the samples ``(row0, row1, col0, col1)`` of one
    request tile."""
    r0, r1, c0, c1 = samples
    tile = inference_service_pb2.HeatmapTile(
        tile_index=index,
        row=r0,
        col=c0,
        rows=r1 - r0,
        cols=c1 - c0,
        num_classes=block.shape[0],
        logits=block.numpy().astype(dtype).tobytes(),
    )
    if probabilities:
        tile.probabilities = torch.softmax(block, dim=0).numpy().astype(dtype).tobytes()
    return tile


def annotate_response(
    collection: dict[str, Any], objects: list[dict[str, Any]], model_id: str, class_name: str
) -> inference_service_pb2.AnnotateResponse:
    import json

    return inference_service_pb2.AnnotateResponse(
        geojson=json.dumps(collection),
        objects=[
            inference_service_pb2.AnnotationObject(
                id=o["id"],
                area=o["area"],
                mean_probability=o["mean_probability"],
                max_probability=o["max_probability"],
                mean_logit=o["mean_logit"],
            )
            for o in objects
        ],
        model=f"models/{model_id}",
        class_name=class_name,
    )


# ------------------------------------------------------------------ AnnotateSlide and SlideHeatmap

SLIDE_BLOCK = 256


def slide_settings(config: inference_service_pb2.SlideConfig, limits: Limits) -> SlideSettings:
    """A ``SlideConfig``'s stride, downsample, tile, class and tissue rule, within ``limits``."""
    stride = config.stride or DEFAULT_STRIDE
    if not 1 <= stride <= limits.max_stride:
        raise MilsilError(
            f"config.stride must be 1-{limits.max_stride} (0 = {DEFAULT_STRIDE}), got {config.stride}"
        )
    downsample = config.downsample or 1.0
    if not math.isfinite(downsample) or downsample < 1.0:
        raise MilsilError(
            f"config.downsample must be a number >= 1 (0 = 1, level 0), got {config.downsample}"
        )
    tile = config.tile_size or DEFAULT_TILE
    if not stride <= tile <= limits.max_tile_side:
        raise MilsilError(
            f"config.tile_size must be {stride}-{limits.max_tile_side} "
            f"(at least the stride; 0 = {DEFAULT_TILE}), got {config.tile_size}"
        )
    return SlideSettings(
        stride=stride,
        downsample=downsample,
        tile=tile,
        class_name=config.class_name or None,
        tissue_only=config.tissue_only if config.HasField("tissue_only") else True,
    )


def slide_roi(config: inference_service_pb2.SlideConfig) -> Any:
    """``SlideConfig.roi`` as a shapely geometry (level-0 px), or None (the whole slide)."""
    if not config.roi:
        return None
    from milsil.wsi.geojson import roi_geometry

    return roi_geometry(config.roi, "config.roi")


def annotate_slide_settings(
    request: inference_service_pb2.AnnotateSlideRequest, settings: SlideSettings
) -> SlideSettings:
    """``settings`` with the request's threshold and outline rules."""
    threshold = request.threshold if request.HasField("threshold") else 0.5
    if not (math.isfinite(threshold) and 0.0 <= threshold <= 1.0):
        raise MilsilError(f"threshold must be a probability in [0, 1], got {threshold}")
    _non_negative(request, ("min_area", "simplify_tolerance"), "")
    return settings.replace(
        threshold=threshold,
        min_area=request.min_area,
        simplify_tolerance=request.simplify_tolerance,
    )


def slide_values(
    request: inference_service_pb2.SlideHeatmapRequest, classes: int, max_message_bytes: int
) -> tuple[int, np.dtype, int]:
    """SlideHeatmap's value type, its dtype, and the block side (samples) that fits a message."""
    chosen, dtype = value_type(request.value_type, "value_type")
    block = request.block_size or SLIDE_BLOCK
    per_sample = classes * dtype.itemsize * (2 if request.include_probabilities else 1)
    largest = max(1, math.isqrt(max(max_message_bytes - 65536, 0) // per_sample))
    if not 1 <= block <= min(4096, largest):
        raise MilsilError(
            f"block_size must be 1-{min(4096, largest)} samples (0 = {SLIDE_BLOCK}; a block "
            f"must fit in one message), got {request.block_size}"
        )
    return chosen, dtype, block


def slide_progress(
    p: SlideProgress | None, started: float, stage: str = ""
) -> inference_service_pb2.SlideProgress:
    elapsed = time.perf_counter() - started
    if p is None:
        return inference_service_pb2.SlideProgress(elapsed_seconds=elapsed, stage=stage)
    return inference_service_pb2.SlideProgress(
        tiles_done=p.tiles_done,
        tiles_total=p.tiles_total,
        tissue_megapixels=p.tissue_megapixels,
        elapsed_seconds=elapsed,
        eta_seconds=p.eta_seconds,
        stage=stage or p.stage,
    )


def slide_summary(
    job: SlideJob,
    tiles_total: int,
    tiles_resumed: int,
    megapixels: float,
    timings: dict[str, float],
) -> inference_service_pb2.SlideSummary:
    return inference_service_pb2.SlideSummary(
        model=f"models/{job.model_id}",
        path=job.request_path,
        class_name=job.model.class_names[job.class_index],
        tiles_total=tiles_total,
        tiles_resumed=max(tiles_resumed, 0),
        tissue_megapixels=megapixels,
        stride=job.settings.stride,
        downsample=job.settings.downsample,
        tiff_path=job.tiff_rel,
        timings={k: float(v) for k, v in timings.items()},
    )


def slide_tiles(
    heat: Any, block: int, dtype: np.dtype, probabilities: bool, is_active: Callable[[], bool]
) -> Iterator[inference_service_pb2.HeatmapTile]:
    """The computed part of a slide's map as HeatmapTile blocks (NaN where not computed)."""
    n = 0
    for r0 in range(0, heat.rows, block):
        for c0 in range(0, heat.cols, block):
            if not is_active():
                raise Cancelled("request cancelled while the map was being sent")
            r1, c1 = min(r0 + block, heat.rows), min(c0 + block, heat.cols)
            if not heat.valid(r0, r1, c0, c1).any():
                continue
            logits = heat.block(r0, r1, c0, c1)
            tile = inference_service_pb2.HeatmapTile(
                tile_index=n,
                row=r0,
                col=c0,
                rows=r1 - r0,
                cols=c1 - c0,
                num_classes=logits.shape[0],
                logits=logits.astype(dtype).tobytes(),
            )
            if probabilities:
                lg = logits.astype(np.float64)
                with np.errstate(invalid="ignore"):
                    e = np.exp(lg - lg.max(axis=0, keepdims=True))
                    tile.probabilities = (e / e.sum(axis=0)).astype(dtype).tobytes()
            yield tile
            n += 1
