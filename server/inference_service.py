"""milsil.v1.InferenceService: bags, regions streamed by a client, slides the server reads.

Each RPC converts its request (:mod:`milsil_server.convert`), runs the library under a
compute slot, and converts the result back. Streamed regions are computed band by band
under the memory budget by :mod:`milsil_server.regions`; slides run in the background (:mod:`milsil_server.runner`)
with their paths confined by :mod:`milsil_server.paths`.
"""

from __future__ import annotations

import itertools
import json
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from milsil.errors import MilsilError
from milsil.inference.objects import ObjectAccumulator
from milsil.models import target_class_index
from milsil.v1 import inference_service_pb2, inference_service_pb2_grpc
from milsil.wsi.heatmap import SlideProgress, Timings
from milsil.wsi.reader import open_slide
from milsil.wsi.tiff import write_probability_tiff
from milsil_server import convert, inference, objects, regions, runner, slide_jobs
from milsil_server.errors import Cancelled, ResourceExhausted
from milsil_server.inference import ComputeSlots, Limits, ModelCache
from milsil_server.paths import SlidePaths
from milsil_server.slots import QueueStatus
from milsil_server.store import Store, parse_name


@dataclass
class _Region:
    """A Heatmap/Annotate stream once its config is read: the request, the model, and the
    messages still to come (the first one's tiles included)."""

    config: Any
    request: convert.RegionRequest
    model_id: str
    model: torch.nn.Module
    halo: int
    first: Any
    rest: Iterator[Any]

    def tiles(self) -> Iterator[Any]:
        return convert.region_tiles(self.first.tiles, self.rest)

    @property
    def samples(self) -> tuple[int, int]:
        """Heatmap rows and columns."""
        r, stride = self.request.spec, self.request.stride
        return -(-r.height // stride), -(-r.width // stride)


class _Tally:
    """Slide progress -> messages, counting the tiles this request computed itself."""

    def __init__(self, started: float) -> None:
        self.started, self.computed = started, 0

    def __call__(self, p: SlideProgress) -> inference_service_pb2.SlideProgress:
        if p.stage == "heatmap":
            self.computed += 1
        return convert.slide_progress(p, self.started)


def _queue_status(status: QueueStatus) -> inference_service_pb2.QueueStatus:
    return inference_service_pb2.QueueStatus(position=status.position, waiting=status.waiting)


def _queued(status: QueueStatus) -> inference_service_pb2.SlideProgress:
    """A "queued" progress message with the request's place in the compute queue."""
    return inference_service_pb2.SlideProgress(stage="queued", queue=_queue_status(status))


class InferenceServicer(inference_service_pb2_grpc.InferenceServiceServicer):
    def __init__(
        self,
        store: Store,
        cache: ModelCache,
        slots: ComputeSlots,
        limits: Limits,
        max_tiles: int = 1_000_000,
        slide_roots: Sequence[str | Path] = (),
        output_root: str | Path | None = None,
        max_message_bytes: int = 64 * 2**20,
        memory: regions.MemoryBudget | None = None,
    ) -> None:
        self.store, self.cache, self.slots, self.limits = store, cache, slots, limits
        self.max_tiles = max_tiles
        self.memory = memory or regions.MemoryBudget(regions.default_max_memory())
        self.paths = SlidePaths(slide_roots, output_root or store.root / "outputs")
        self.max_message_bytes = max_message_bytes
        self.work_locks = runner.WorkLocks()

    def _model(self, name: str, field: str) -> tuple[str, torch.nn.Module]:
        ident = parse_name(name, "models", field)
        self.store.get_model(ident)  # NOT_FOUND before touching files
        return ident, self.cache.get(ident)

    # ------------------------------------------------------------------ bags

    def ClassifyBag(self, request_iterator, context):
        model_name, tiles = convert.bag_request(request_iterator, self.limits)
        ident, model = self._model(model_name, "model")
        with self.slots.acquire(context.is_active, context.peer()):
            result = inference.classify_bag(model, tiles, context.is_active)
        return convert.classify_bag_response(ident, model.class_names, result)

    # ------------------------------------------------------------------ regions

    def _open_region(self, request_iterator, kind: str) -> _Region:
        """A Heatmap/Annotate stream's config and model; no pixel is read yet."""
        iterator = iter(request_iterator)
        first = next(iterator, None)
        if first is None or not first.HasField("config"):
            raise MilsilError(f"config is required in the first {kind}Request")
        config = first.config
        if kind == "Heatmap":
            request = convert.region_request(config, "config", self.limits)
        else:
            request = convert.region_request(config.heatmap, "config.heatmap", self.limits)
        ident, model = self._model(request.model, request.model_field)
        halo = inference.halo_for(model)
        return _Region(config, request, ident, model, halo, first, iterator)

    def _stream(
        self, spec: regions.RegionSpec, model, halo: int, stride: int, reservation, context
    ) -> regions.RegionStream:
        """A streamed region computed under this server's limits, device and tile cap."""
        return regions.RegionStream(
            spec,
            model,
            halo,
            stride,
            self.limits,
            reservation,
            context.is_active,
            self.cache.device,
            self.max_tiles,
        )

    def _region_stream(self, region: _Region, reservation, context) -> regions.RegionStream:
        r = region.request
        return self._stream(r.spec, region.model, region.halo, r.stride, reservation, context)

    def _events(self, tiles: Iterator[Any], stream: regions.RegionStream) -> Iterator[Any]:
        """The stream's events (tiles placed, bands computed), its window reserved for the
        first tile before anything is answered (so a busy budget is refused up front)."""
        first = next(tiles, None)
        if first is not None:
            side = self.limits.max_tile_side
            stream.reserve_for(min(first.height, side), min(first.width, side))
            tiles = itertools.chain([first], tiles)
        return itertools.chain(stream.feed(tiles), stream.finish())

    def Heatmap(self, request_iterator, context):
        region = self._open_region(request_iterator, "Heatmap")
        req, r = region.request, region.request.spec
        Response = inference_service_pb2.HeatmapResponse
        with self.slots.queued(context.is_active, context.peer()) as ticket:
            for status in ticket.waiting():
                yield Response(queue=_queue_status(status))
            with self.memory.reservation() as reservation:
                stream = self._region_stream(region, reservation, context)
                try:
                    events = self._events(region.tiles(), stream)
                    yield Response(
                        header=convert.heatmap_header(
                            region.model_id,
                            region.model,
                            *region.samples,
                            req.stride,
                            r.downsample,
                            (r.x, r.y),
                            req.value_type,
                        )
                    )
                    stream.answered = True
                    replies = regions.TileReplies(stream)
                    for event in events:
                        for index, samples, block in replies.handle(event):
                            tile = convert.region_tile(
                                index, samples, block, req.dtype, req.include_probabilities
                            )
                            yield Response(tile=tile)
                finally:
                    stream.close()

    def Annotate(self, request_iterator, context):
        from milsil.wsi.geojson import OutlineStream

        region = self._open_region(request_iterator, "Annotate")
        settings = convert.annotate_settings(region.config, region.model.class_names)
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
        )
        with (
            self.slots.acquire(context.is_active, context.peer()),
            self.memory.reservation() as reservation,
        ):
            stream = self._region_stream(region, reservation, context)
            try:
                for event in self._events(region.tiles(), stream):
                    if isinstance(event, regions.Computed):
                        probs, logits = regions.class_maps(event.logits, settings.class_index)
                        values = probs if settings.probability else logits
                        outlines.add(values, {"probability": probs, "logit": logits})
            finally:
                stream.close()
        if not context.is_active():
            raise Cancelled("request cancelled or deadline exceeded")
        collection, objects = outlines.finish()
        return convert.annotate_response(collection, objects, region.model_id, settings.class_name)

    # ------------------------------------------------------------------ objects (cells)

    def MeasureObjects(self, request_iterator, context):
        iterator = iter(request_iterator)
        first = next(iterator, None)
        if first is None or not first.HasField("config"):
            raise MilsilError("config is required in the first MeasureObjectsRequest")
        config = first.config
        if not config.HasField("region"):
            raise MilsilError("config.region is required (level-0 x, y, width, height, downsample)")
        reg = config.region
        spec = regions.RegionSpec.parse(
            reg.x, reg.y, reg.width, reg.height, reg.downsample, self.limits
        )
        ident, model = self._model(config.model, "config.model")
        halo = inference.halo_for(model)
        slide = None
        if config.slide_path:
            slide, _ = self.paths.resolve_slide(config.slide_path, "config.slide_path")
            open_slide(slide).close()  # corrupt or unsupported: one line, before queueing
        Response = inference_service_pb2.MeasureObjectsResponse
        with self.memory.reservation() as reservation:
            received = objects.read_objects(first, iterator, reservation, self.limits)
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
            with self.slots.queued(context.is_active, context.peer()) as ticket:
                for status in ticket.waiting():
                    yield Response(queue=_queue_status(status))
                stream = self._stream(spec, model, halo, 1, reservation, context)
                tiles = (
                    received.tiles() if slide is None else objects.slide_tiles(slide, spec, halo)
                )
                try:
                    for event in self._events(tiles, stream):
                        if isinstance(event, regions.Computed):
                            accumulator.add_band(event.row0, event.logits)
                finally:
                    stream.close()
                if slide is not None:
                    for _ in received.tiles():  # a tile sent anyway after the objects
                        raise MilsilError(
                            "tiles were sent with config.slide_path: send one or the other"
                        )
            result = accumulator.result()
        yield Response(header=objects.header(ident, model.class_names, len(result.ids), halo))
        for batch in objects.measurement_batches(result):
            yield Response(measurements=batch)

    # ------------------------------------------------------------------ whole slides

    def _slide_job(self, config: inference_service_pb2.SlideConfig) -> slide_jobs.SlideJob:
        settings = convert.slide_settings(config, self.limits)
        ident, model = self._model(config.model, "config.model")
        inference.halo_for(model)  # FAILED_PRECONDITION for models without a receptive field
        try:
            class_index = target_class_index(model.class_names, settings.class_name)
        except MilsilError as exc:
            raise MilsilError(f"config.class_name: {exc}") from None
        path, in_root = self.paths.resolve_slide(config.path)
        tiff, tiff_rel = None, ""
        if config.write_tiff or config.tiff_path:
            name = config.tiff_path or slide_jobs.default_tiff_name(in_root, ident, settings)
            field = "config.tiff_path" if config.tiff_path else "config.tiff_path (default name)"
            tiff, tiff_rel = self.paths.tiff_target(name, field)
        sha256 = self.store.get_model(ident).get("sha256", "")
        return slide_jobs.SlideJob(
            model_id=ident,
            model=model,
            path=path,
            request_path=config.path,
            settings=settings.replace(class_name=model.class_names[class_index]),
            class_index=class_index,
            tiff=tiff,
            tiff_rel=tiff_rel,
            work_dir=slide_jobs.work_dir(self.store.root, path, ident, sha256, settings),
            roi=convert.slide_roi(config),
        )

    def AnnotateSlide(self, request, context):
        if not request.HasField("config"):
            raise MilsilError("config is required (model, path, stride, ...)")
        job = self._slide_job(request.config)
        job.settings = convert.annotate_slide_settings(request, job.settings)
        open_slide(job.path).close()  # corrupt or unsupported: one line, before queueing
        Response = inference_service_pb2.AnnotateSlideResponse
        yield Response(progress=convert.slide_progress(None, time.perf_counter(), "queued"))
        with (
            self.work_locks.hold(job.work_dir.name, context.is_active),
            self.slots.queued(context.is_active, context.peer()) as ticket,
        ):
            for status in ticket.waiting():
                yield Response(progress=_queued(status))
            tally = _Tally(time.perf_counter())
            yield Response(progress=convert.slide_progress(None, tally.started, job.first_stage))
            result = yield from runner.in_background(
                lambda progress, should_stop: slide_jobs.annotate(
                    job, self.cache.device, progress, should_stop
                ),
                context.is_active,
                lambda p: Response(progress=tally(p)),
            )
            if result.stopped:
                raise Cancelled(
                    f"request cancelled or deadline exceeded after {result.tiles_computed} of "
                    f"{result.tiles_total} tiles; call again with the same settings to resume"
                )
            geojson = json.dumps(result.collection)
            if len(geojson) > self.max_message_bytes - 65536:
                raise ResourceExhausted(
                    f"the GeoJSON ({len(geojson)} bytes, {result.objects} objects) exceeds the "
                    "message limit; raise min_area or simplify_tolerance, or the stride (the map "
                    "is kept: a new threshold costs no recomputation)"
                )
            shutil.rmtree(job.work_dir, ignore_errors=True)
        summary = convert.slide_summary(
            job,
            result.tiles_total,
            result.tiles_computed - tally.computed,
            result.tissue_megapixels,
            result.timings,
        )
        yield Response(
            result=inference_service_pb2.AnnotateSlideResult(
                geojson=geojson, object_count=result.objects, summary=summary
            )
        )

    def SlideHeatmap(self, request, context):
        if not request.HasField("config"):
            raise MilsilError("config is required (model, path, stride, ...)")
        job = self._slide_job(request.config)
        classes = job.model.class_names
        value_type, dtype, block = convert.slide_values(
            request, len(classes), self.max_message_bytes
        )
        Response = inference_service_pb2.SlideHeatmapResponse
        with open_slide(job.path) as slide:
            yield Response(progress=convert.slide_progress(None, time.perf_counter(), "queued"))
            timings = Timings()
            with self.work_locks.hold(job.work_dir.name, context.is_active):
                with self.slots.queued(context.is_active, context.peer()) as ticket:
                    for status in ticket.waiting():
                        yield Response(progress=_queued(status))
                    tally = _Tally(time.perf_counter())
                    stage = job.first_stage
                    yield Response(progress=convert.slide_progress(None, tally.started, stage))
                    heat, stopped = yield from runner.in_background(
                        lambda progress, should_stop: slide_jobs.heatmap(
                            job, slide, self.cache.device, progress, should_stop, timings
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
                    header=convert.heatmap_header(
                        job.model_id,
                        job.model,
                        heat.rows,
                        heat.cols,
                        heat.stride,
                        heat.downsample,
                        (0.0, 0.0),
                        value_type,
                    )
                )
                if not request.omit_values:
                    yield Response(progress=convert.slide_progress(None, tally.started, "values"))
                    for tile in convert.slide_tiles(
                        heat, block, dtype, request.include_probabilities, context.is_active
                    ):
                        yield Response(tile=tile)
                if job.tiff is not None:
                    yield Response(progress=convert.slide_progress(None, tally.started, "tiff"))
                    t0 = time.perf_counter()
                    write_probability_tiff(heat, job.tiff, job.class_index)
                    timings.tiff = time.perf_counter() - t0
                summary = convert.slide_summary(
                    job,
                    heat.tiles_total,
                    len(heat.done) - tally.computed,
                    heat.computed_megapixels(),
                    vars(timings),
                )
                del heat  # the memory map, before its folder goes
                shutil.rmtree(job.work_dir, ignore_errors=True)
        yield Response(result=summary)
