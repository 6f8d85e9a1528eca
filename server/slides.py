"""AnnotateSlide and SlideHeatmap: a slide the server reads itself, in the background.

Read top to bottom: the two RPCs; :func:`slide_job` turns a ``SlideConfig`` into a
:class:`SlideJob` (one :class:`~milsil.wsi.settings.SlideSettings`, which holds the
defaults and rules of every setting; only this server's own limits are checked here),
the slide inside a slide root, the TIFF target and the resumable work folder, whose
name is a digest of everything that changes the map (so a retry with the same settings
resumes, and anything different starts afresh). :meth:`SlideJob.outlines` and
:meth:`SlideJob.logit_map` call the library in the background (:mod:`.runner`); progress,
map blocks and the summary become messages at the end. The same pass judges how like the
training data each slide tile (the job's ``tile_size``) and the whole slide were: the
summary carries the slide's familiarity, each SlideHeatmap block its samples', and each
AnnotateSlide feature that of the slide tiles it touches (:func:`mark_slide_features`).
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import shapely.geometry

from milsil.errors import MilsilError
from milsil.inference.familiarity import FamiliarityScore, region_score
from milsil.inference.precision import heatmap_mode, mode_arithmetic
from milsil.models import target_class_index
from milsil.v1 import inference_service_pb2
from milsil.wsi.annotate import AnnotateResult, annotate_slide
from milsil.wsi.geojson import roi_geometry
from milsil.wsi.heatmap import SlideHeatmap, SlideProgress, Timings, slide_heatmap
from milsil.wsi.reader import Slide, open_slide
from milsil.wsi.settings import SlideSettings
from milsil.wsi.tiff import write_probability_tiff

from . import runner
from .auth import client_of
from .errors import Cancelled, ResourceExhausted
from .messages import (
    familiarity,
    heatmap_header,
    heatmap_tile,
    log,
    mark_feature,
    outline_request,
    queue_status,
    value_type,
    warn_unlike,
)
from .resources import Limits, Resources, halo_for
from .slots import QueueStatus

SLIDE_BLOCK = 256

# ------------------------------------------------------------------ the RPCs


def annotate_slide_rpc(res: Resources, request: Any, context: Any) -> Iterator[Any]:
    """The AnnotateSlide RPC: progress while the slide is computed, then the outlines."""
    job = slide_job(res, request, outlines=True)
    open_slide(job.path).close()  # corrupt or unsupported: one line, before queueing
    Response = inference_service_pb2.AnnotateSlideResponse
    yield Response(progress=slide_progress(None, time.perf_counter(), "queued"))
    with (
        res.work_locks.hold(job.work_dir.name, context.is_active),
        res.slots.queued(context.is_active, client_of(context), context.peer()) as ticket,
    ):
        for status in ticket.waiting():
            yield Response(progress=_queued(status))
        device, job.model = ticket.device, res.on_device(job.model, ticket.device)
        tally = _Tally(time.perf_counter())
        yield Response(progress=slide_progress(None, tally.started, job.first_stage))
        result = yield from runner.in_background(
            lambda progress, should_stop: job.outlines(device, progress, should_stop),
            context.is_active,
            lambda p: Response(progress=tally(p)),
        )
        if result.stopped:
            raise Cancelled(
                f"request cancelled or deadline exceeded after {result.tiles_computed} of "
                f"{result.tiles_total} tiles; call again with the same settings to resume"
            )
        mark_slide_features(result.collection["features"], result.tile_familiarity, job)
        geojson = json.dumps(result.collection)
        if len(geojson) > res.max_message_bytes - 65536:
            raise ResourceExhausted(
                f"the GeoJSON ({len(geojson)} bytes, {result.objects} objects) exceeds the "
                "message limit; raise config.outline.min_area (or min_area), or the stride (the map "
                "is kept: a new threshold costs no recomputation)"
            )
        shutil.rmtree(job.work_dir, ignore_errors=True)
    warn_slide(f"AnnotateSlide models/{job.model_id} slide {job.request_path}", result)
    summary = slide_summary(
        job,
        result.tiles_total,
        result.tiles_computed - tally.computed,
        result.tissue_megapixels,
        result.timings,
        result.familiarity,
    )
    yield Response(
        result=inference_service_pb2.AnnotateSlideResult(
            geojson=geojson, object_count=result.objects, summary=summary
        )
    )


def slide_heatmap_rpc(res: Resources, request: Any, context: Any) -> Iterator[Any]:
    """The SlideHeatmap RPC: progress, the header, the map in blocks, the summary."""
    job = slide_job(res, request, outlines=False)
    classes = job.model.class_names
    chosen, dtype, block = slide_values(request, len(classes), res.max_message_bytes)
    Response = inference_service_pb2.SlideHeatmapResponse
    with open_slide(job.path) as slide:
        yield Response(progress=slide_progress(None, time.perf_counter(), "queued"))
        timings = Timings()
        with res.work_locks.hold(job.work_dir.name, context.is_active):
            with res.slots.queued(context.is_active, client_of(context), context.peer()) as ticket:
                for status in ticket.waiting():
                    yield Response(progress=_queued(status))
                device, job.model = ticket.device, res.on_device(job.model, ticket.device)
                tally = _Tally(time.perf_counter())
                stage = job.first_stage
                yield Response(progress=slide_progress(None, tally.started, stage))
                heat, stopped = yield from runner.in_background(
                    lambda progress, should_stop: job.logit_map(
                        slide, device, progress, should_stop, timings
                    ),
                    context.is_active,
                    lambda p: Response(progress=tally(p)),
                )
            if stopped:
                raise Cancelled(
                    f"request cancelled or deadline exceeded after {len(heat.done)} of "
                    f"{heat.tiles_total} tiles; call again with the same settings to resume"
                )
            yield Response(
                header=heatmap_header(
                    job.model_id,
                    job.model,
                    heat.rows,
                    heat.cols,
                    heat.stride,
                    heat.downsample,
                    (0.0, 0.0),
                    chosen,
                    heatmap_mode(job.settings.precision, job.settings.bf16),
                )
            )
            if not request.omit_values:
                yield Response(progress=slide_progress(None, tally.started, "values"))
                for tile in slide_tiles(
                    heat,
                    block,
                    dtype,
                    request.include_probabilities,
                    context.is_active,
                    job.model,
                ):
                    yield Response(tile=tile)
            if job.tiff is not None:
                yield Response(progress=slide_progress(None, tally.started, "tiff"))
                t0 = time.perf_counter()
                write_probability_tiff(heat, job.tiff, job.class_index)
                timings.tiff = time.perf_counter() - t0
            whole = heat.familiarity(job.model)
            warn_unlike(f"SlideHeatmap models/{job.model_id} slide {job.request_path}", whole)
            summary = slide_summary(
                job,
                heat.tiles_total,
                len(heat.done) - tally.computed,
                heat.computed_megapixels(),
                vars(timings),
                whole,
            )
            del heat  # the memory map, before its folder goes
            shutil.rmtree(job.work_dir, ignore_errors=True)
    yield Response(result=summary)


# ------------------------------------------------------------------ the slide job


@dataclass
class SlideJob:
    """What to read, with what, how, and where."""

    model_id: str
    model: Any
    path: Path  # the slide, resolved inside a slide root
    request_path: str  # as the client named it
    settings: SlideSettings
    class_index: int
    tiff: Path | None  # absolute TIFF target, or None
    tiff_rel: str  # its path relative to the output root
    work_dir: Path  # resumable state, one per (slide, model, settings)
    roi: Any = None  # region of interest (shapely, level-0 px), or None: the whole slide

    @property
    def class_name(self) -> str:
        return self.model.class_names[self.class_index]

    @property
    def first_stage(self) -> str:
        return "tissue" if self.settings.tissue_only else "heatmap"

    def outlines(
        self,
        device: Any,
        progress: Callable[[SlideProgress], None],
        should_stop: Callable[[], bool],
    ) -> AnnotateResult:
        """Outlines of the job's class (and its TIFF); the work folder is kept for the caller."""
        return annotate_slide(
            self.path,
            self.model,
            None,
            self.settings,
            tiff=self.tiff,
            work_dir=self.work_dir,
            device=device,
            keep_work=True,  # removed by the caller, once the result fits in a message
            progress=progress,
            should_stop=should_stop,
            roi=self.roi,
            familiarity=True,
        )

    def logit_map(
        self,
        slide: Slide,
        device: Any,
        progress: Callable[[SlideProgress], None],
        should_stop: Callable[[], bool],
        timings: Timings,
    ) -> tuple[SlideHeatmap, bool]:
        """The slide's logit map in ``work_dir``: ``(map, stopped)``."""
        return slide_heatmap(
            self.model,
            slide,
            self.work_dir,
            self.settings,
            device=device,
            progress=progress,
            should_stop=should_stop,
            timings=timings,
            roi=self.roi,
            familiarity=True,
        )


def slide_job(res: Resources, request: Any, outlines: bool) -> SlideJob:
    """The request's :class:`SlideJob`: settings, model and class, slide, TIFF, work folder.

    ``outlines``: the request is an ``AnnotateSlideRequest`` (threshold and outline rules).
    """
    if not request.HasField("config"):
        raise MilsilError("config is required (model, path, stride, ...)")
    config = request.config
    precision, bf16 = mode_arithmetic(res.precision)
    settings = slide_settings(request, res.limits, outlines).replace(precision=precision, bf16=bf16)
    ident, model = res.model(config.model, "config.model")
    halo_for(model)  # FAILED_PRECONDITION for models without a receptive field
    try:
        class_index = target_class_index(model.class_names, settings.class_name)
    except MilsilError as exc:
        raise MilsilError(f"config.class_name: {exc}") from None
    path, in_root = res.paths.resolve_slide(config.path)
    tiff, tiff_rel = None, ""
    if config.write_tiff or config.tiff_path:
        name = config.tiff_path or default_tiff_name(in_root, ident, settings)
        field = "config.tiff_path" if config.tiff_path else "config.tiff_path (default name)"
        tiff, tiff_rel = res.paths.tiff_target(name, field)
    sha256 = res.store.get_model(ident).get("sha256", "")
    return SlideJob(
        model_id=ident,
        model=model,
        path=path,
        request_path=config.path,
        settings=settings.replace(class_name=model.class_names[class_index]),
        class_index=class_index,
        tiff=tiff,
        tiff_rel=tiff_rel,
        work_dir=work_dir(res.store.root, path, ident, sha256, settings),
        roi=slide_roi(config),
    )


def default_tiff_name(in_root: Path, model_id: str, settings: SlideSettings) -> str:
    """``<slide>.<model>.s<stride>-ds<downsample>.tif``, relative to the output root."""
    return f"{in_root.as_posix()}.{model_id}.s{settings.stride}-ds{settings.downsample:g}.tif"


def work_dir(
    root: Path, slide: Path, model_id: str, model_sha256: str, settings: SlideSettings
) -> Path:
    """The work folder under ``root/slide-work`` for this slide file, model and settings."""
    st = slide.stat()
    key = {
        "slide": str(slide),
        "bytes": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "model": model_id,
        "model_sha256": model_sha256,
        "stride": settings.stride,
        "downsample": settings.downsample,
        "tile": settings.tile,
        "tissue_only": settings.tissue_only,
    }
    mode = heatmap_mode(settings.precision, settings.bf16)
    if mode != "exact":  # exact folders keep the names they always had
        key["precision"] = mode
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
    return root / "slide-work" / digest


# ------------------------------------------------------------------ messages <-> values

# The request fields of each SlideSettings value (their names in error messages).
_FIELDS = {
    "stride": "config.stride",
    "downsample": "config.downsample",
    "tile": "config.tile_size",
    "class_name": "config.class_name",
    "tissue_only": "config.tissue_only",
}


def slide_settings(request: Any, limits: Limits, outlines: bool) -> SlideSettings:
    """The request's :class:`SlideSettings` (a field left 0 or unset takes the settings'
    default), then the limits of this server.

    ``outlines``: also the threshold, ``min_area`` and ``simplify_tolerance`` of an
    ``AnnotateSlideRequest``, and the config's outline clean-up and pixel size (0: the
    slide's, which :func:`~milsil.wsi.annotate.annotate_slide` reads).
    """
    config = request.config
    values: dict[str, Any] = {
        "stride": config.stride,
        "downsample": config.downsample,
        "tile": config.tile_size,
        "class_name": config.class_name,
    }
    values = {k: v for k, v in values.items() if v}  # proto3: 0 and "" mean unset
    if config.HasField("tissue_only"):
        values["tissue_only"] = config.tissue_only
    if outlines:
        values["min_area"] = request.min_area
        values["simplify_tolerance"] = request.simplify_tolerance
        if request.HasField("threshold"):
            values["threshold"] = request.threshold
        values["outline"], values["pixel_size_um"] = outline_request(
            config.outline, config.pixel_size_um, "config"
        )
    try:
        settings = SlideSettings(**values)
    except MilsilError as exc:
        name, _, rule = str(exc).partition(" ")
        raise MilsilError(f"{_FIELDS.get(name, name)} {rule}") from None
    if settings.stride > limits.max_stride:
        raise MilsilError(
            f"config.stride must be at most {limits.max_stride} on this server, got {config.stride}"
        )
    if config.tile_size > limits.max_tile_side:
        raise MilsilError(
            f"config.tile_size must be at most {limits.max_tile_side} on this server, "
            f"got {config.tile_size}"
        )
    return settings


def slide_roi(config: inference_service_pb2.SlideConfig) -> Any:
    """``SlideConfig.roi`` as a shapely geometry (level-0 px), or None (the whole slide)."""
    if not config.roi:
        return None
    return roi_geometry(config.roi, "config.roi")


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
    whole: FamiliarityScore | None,
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
        familiarity=familiarity(whole),
    )


def slide_tiles(
    heat: Any,
    block: int,
    dtype: np.dtype,
    probabilities: bool,
    is_active: Callable[[], bool],
    model: Any,
) -> Iterator[inference_service_pb2.HeatmapTile]:
    """The computed part of a slide's map as HeatmapTile blocks (NaN where not computed),
    each with the familiarity of its computed samples."""
    n = 0
    for r0 in range(0, heat.rows, block):
        for c0 in range(0, heat.cols, block):
            if not is_active():
                raise Cancelled("request cancelled while the map was being sent")
            r1, c1 = min(r0 + block, heat.rows), min(c0 + block, heat.cols)
            if not heat.valid(r0, r1, c0, c1).any():
                continue
            logits = heat.block(r0, r1, c0, c1)
            probs = None
            if probabilities:
                lg = logits.astype(np.float64)
                with np.errstate(invalid="ignore"):
                    e = np.exp(lg - lg.max(axis=0, keepdims=True))
                    probs = e / e.sum(axis=0)
            distance = heat.distance_block(r0, r1, c0, c1)
            looks = heat.block_appearance(r0, r1, c0, c1)  # its slide tiles' appearance
            judged = None if distance is None else region_score(model, distance, appearance=looks)
            yield heatmap_tile(n, r0, c0, logits, dtype, probs, judged)
            n += 1


def mark_slide_features(
    features: list[dict[str, Any]],
    tiles: dict[tuple[int, int], FamiliarityScore],
    job: SlideJob,
) -> None:
    """Give each AnnotateSlide feature the familiarity of its slide tile: the highest score
    among the computed slide tiles its bounding box touches (an outline across tiles is as
    doubtful as its least familiar part). Nothing when no tile was judged."""
    if not tiles:
        return
    side = job.settings.tile * job.settings.downsample  # a slide tile's level-0 side
    for feature in features:
        x0, y0, x1, y1 = shapely.geometry.shape(feature["geometry"]).bounds
        touched = [
            tiles[(r, c)]
            for r in range(int(y0 // side), math.ceil(y1 / side))
            for c in range(int(x0 // side), math.ceil(x1 / side))
            if (r, c) in tiles
        ]
        if touched:
            mark_feature(feature, max(touched, key=lambda t: t.score), with_property=True)


def warn_slide(what: str, result: Any) -> None:
    """The server's log line for a slide whose input was unlike the training data: the
    whole slide, or else the slide tiles that were (their features carry it)."""
    whole = result.familiarity
    if whole is not None and whole.unlike_training:
        warn_unlike(what, whole)
        return
    unlike = [t for t in result.tile_familiarity.values() if t.unlike_training]
    if unlike:
        worst = max(unlike, key=lambda t: t.score)
        log.warning(
            "%s: %d of %d slide tiles unlike the training data (highest score %.4g, "
            "threshold %.4g)",
            what,
            len(unlike),
            len(result.tile_familiarity),
            worst.score,
            worst.threshold,
        )


class _Tally:
    """Slide progress -> messages, counting the tiles this request computed itself."""

    def __init__(self, started: float) -> None:
        self.started, self.computed = started, 0

    def __call__(self, p: SlideProgress) -> inference_service_pb2.SlideProgress:
        if p.stage == "heatmap":
            self.computed += 1
        return slide_progress(p, self.started)


def _queued(status: QueueStatus) -> inference_service_pb2.SlideProgress:
    """A "queued" progress message with the request's place in the compute queue."""
    return inference_service_pb2.SlideProgress(stage="queued", queue=queue_status(status))
