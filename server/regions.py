"""Heatmap and Annotate: a region the client streams as tiles, computed band by band.

Read top to bottom: the two RPCs; :func:`open_region` reads the first message's config
(:func:`region_request`, :func:`annotate_settings`) and the model; the tiles then run
through a :class:`~.region_stream.RegionStream` under a compute slot and the memory
budget; Heatmap answers each request tile as soon as its rows are computed
(:class:`~.region_stream.TileReplies`, :func:`region_tile`), Annotate gathers outlines
and answers once (:func:`annotate_response`). Both judge how like the training data the
region was from the same dense pass (the stream's distance channel, gathered by the
library's ``FamiliarityAccumulator``): Heatmap per tile and, in its last message, for the
whole region; Annotate for the region, on the response, its objects and its features.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from milsil.errors import MilsilError
from milsil.inference.familiarity import FamiliarityAccumulator, FamiliarityScore, region_score
from milsil.inference.heatmap import output_size
from milsil.models import target_class_index
from milsil.v1 import inference_service_pb2
from milsil.wsi.geojson import OutlineStream
from milsil.wsi.outlines import OutlineSettings

from .auth import client_of
from .errors import Cancelled
from .inbox import Inbox
from .messages import (
    familiarity,
    heatmap_header,
    heatmap_tile,
    mark_feature,
    outline_request,
    queue_status,
    region_tiles,
    region_words,
    value_type,
    warn_unlike,
)
from .region_stream import Computed, RegionSpec, TileReplies, class_maps, open_stream
from .resources import Limits, Resources, halo_for

# ------------------------------------------------------------------ the RPCs


def heatmap_rpc(res: Resources, requests: Iterable[Any], context: Any) -> Iterator[Any]:
    """The Heatmap RPC: queue places, the header, one tile per request tile, then the
    region's familiarity alone. The compute slot is held only while a band computes
    (:class:`~.slots.Turn`): waiting for the client's next message, the call holds its
    reserved memory and nothing else."""
    with res.inbox(requests, context) as inbox:
        region = open_region(res, inbox, "Heatmap")
        req, r = region.request, region.request.spec
        Response = inference_service_pb2.HeatmapResponse
        with res.slots.turns(context.is_active, client_of(context), context.peer()) as turn:
            for status in turn.waiting():
                yield Response(queue=queue_status(status))
            inbox.on_wait = turn.release_if_wanted
            with res.memory.reservation() as reservation:
                stream = open_stream(
                    res,
                    r,
                    region.model,
                    region.halo,
                    req.stride,
                    reservation,
                    context,
                    turn,
                    inbox,
                    per_tile=True,  # each reply tile is judged with its own pixels
                )
                try:
                    events = stream.events(region.tiles())
                    yield Response(
                        header=heatmap_header(
                            region.model_id,
                            region.model,
                            *region.samples,
                            req.stride,
                            r.downsample,
                            (r.x, r.y),
                            req.value_type,
                            res.precision,
                        )
                    )
                    stream.answered = True
                    replies = TileReplies(stream)
                    judge = FamiliarityAccumulator(region.model)
                    for event in events:
                        if isinstance(event, Computed):
                            event.judge(judge)
                        for index, samples, block in replies.handle(event):
                            tile = region_tile(
                                index,
                                samples,
                                block,
                                req.dtype,
                                req.include_probabilities,
                                region.model,
                                replies.appearance.pop(index, None),
                            )
                            # The slot goes back before each reply: a client slow to
                            # read (gRPC's flow control holds the call) holds no slot.
                            turn.release()
                            yield Response(tile=tile)
                finally:
                    stream.close()
        whole = judge.result()
        warn_unlike(region.describe("Heatmap"), whole)
        yield Response(familiarity=familiarity(whole))


def annotate_rpc(res: Resources, requests: Iterable[Any], context: Any) -> Any:
    """The Annotate RPC: the region's outlines of one class, answered once (the compute
    slot held only while a band computes, as for Heatmap)."""
    with res.inbox(requests, context) as inbox:
        return _annotate(res, inbox, context)


def _annotate(res: Resources, inbox: Inbox, context: Any) -> Any:
    region = open_region(res, inbox, "Annotate")
    settings = annotate_settings(region.config, region.model.class_names)
    r, stride = region.request.spec, region.request.stride
    outlines = OutlineStream(
        *region.samples,
        settings.threshold,
        origin=(r.x, r.y),
        downsample=r.downsample,
        stride=stride,
        region_size=(r.width * r.downsample, r.height * r.downsample),
        classification=settings.classification,
        color=settings.color,
        min_area=settings.min_area,
        simplify_tolerance=settings.simplify_tolerance,
        outline=settings.outline,
        pixel_size_um=settings.pixel_size_um,
    )
    judge = FamiliarityAccumulator(region.model)
    with (
        res.slots.turns(context.is_active, client_of(context), context.peer()) as turn,
        res.memory.reservation() as reservation,
    ):
        for _status in turn.waiting():
            pass
        inbox.on_wait = turn.release_if_wanted
        stream = open_stream(
            res, r, region.model, region.halo, stride, reservation, context, turn, inbox
        )
        try:
            for event in stream.events(region.tiles()):
                if isinstance(event, Computed):
                    probs, logits = class_maps(event.logits, settings.class_index)
                    values = probs if settings.probability else logits
                    outlines.add(values, {"probability": probs, "logit": logits})
                    event.judge(judge)
        finally:
            stream.close()
    if not context.is_active():
        raise Cancelled("request cancelled or deadline exceeded")
    collection, objects = outlines.finish()
    judged = judge.result()
    warn_unlike(region.describe("Annotate"), judged)
    return annotate_response(collection, objects, region.model_id, settings.class_name, judged)


# ------------------------------------------------------------------ the stream's first message


@dataclass
class Region:
    """A Heatmap/Annotate stream once its config is read: the request, the model, and the
    messages still to come (the first one's tiles included)."""

    config: Any
    request: RegionRequest
    model_id: str
    model: torch.nn.Module
    halo: int
    first: Any
    rest: Iterator[Any]

    def tiles(self) -> Iterator[Any]:
        return region_tiles(self.first.tiles, self.rest)

    def describe(self, kind: str) -> str:
        """The call and its region, for the server's log (:func:`~.messages.region_words`)."""
        return f"{kind} models/{self.model_id} {region_words(self.request.spec)}"

    @property
    def samples(self) -> tuple[int, int]:
        """Heatmap rows and columns."""
        r, stride = self.request.spec, self.request.stride
        return output_size(r.height, stride), output_size(r.width, stride)


def open_region(res: Resources, requests: Iterable[Any], kind: str) -> Region:
    """A Heatmap/Annotate stream's config and model; no pixel is read yet."""
    iterator = iter(requests)
    first = next(iterator, None)
    if first is None or not first.HasField("config"):
        raise MilsilError(f"config is required in the first {kind}Request")
    config = first.config
    if kind == "Heatmap":
        request = region_request(config, "config", res.limits)
    else:
        request = region_request(config.heatmap, "config.heatmap", res.limits)
    ident, model = res.model(request.model, request.model_field)
    return Region(config, request, ident, model, halo_for(model), first, iterator)


# ------------------------------------------------------------------ messages <-> values


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
    outline: OutlineSettings  # the clean-up (config.outline; 0 = default)
    pixel_size_um: float | None  # config.pixel_size_um (None: the settings are pixels)


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
    outline, pixel_size_um = outline_request(config.outline, config.pixel_size_um, "config")
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
        outline=outline,
        pixel_size_um=pixel_size_um,
    )


def _non_negative(message: Any, names: tuple[str, ...], prefix: str) -> None:
    for name in names:
        value = getattr(message, name)
        if not math.isfinite(value) or value < 0:
            raise MilsilError(
                f"{prefix}{name} must be a finite number >= 0 (level-0 pixels), got {value}"
            )


def region_tile(
    index: int,
    samples: tuple[int, int, int, int],
    block: torch.Tensor,
    dtype: np.dtype,
    probabilities: bool,
    model: torch.nn.Module,
    appearance: np.ndarray | None = None,
) -> inference_service_pb2.HeatmapTile:
    """The logits ``[C, rows, cols]`` of the samples ``(row0, row1, col0, col1)`` of one
    request tile, and its familiarity (when the stream computed one): those samples'
    distance channel and the ``appearance`` sums of the tile's own pixels."""
    r0, _, c0, _ = samples
    classes = int(model.config.num_classes)
    logits = block[:classes]
    distance = block[classes] if block.shape[0] > classes else None
    judged = region_score(model, distance, appearance=appearance)
    probs = torch.softmax(logits, dim=0).numpy() if probabilities else None
    return heatmap_tile(index, r0, c0, logits.numpy(), dtype, probs, judged)


def annotate_response(
    collection: dict[str, Any],
    objects: list[dict[str, Any]],
    model_id: str,
    class_name: str,
    judged: FamiliarityScore | None,
) -> inference_service_pb2.AnnotateResponse:
    """The outlines and their measurements; every object and feature carries the region's
    familiarity (``judged``; features as the measurement "milsil OOD score")."""
    for feature in collection["features"]:
        mark_feature(feature, judged, with_property=False)
    region = familiarity(judged)
    return inference_service_pb2.AnnotateResponse(
        geojson=json.dumps(collection),
        objects=[
            inference_service_pb2.AnnotationObject(
                id=o["id"],
                area=o["area"],
                mean_probability=o["mean_probability"],
                max_probability=o["max_probability"],
                mean_logit=o["mean_logit"],
                familiarity=region,
            )
            for o in objects
        ],
        model=f"models/{model_id}",
        class_name=class_name,
        familiarity=region,
    )
