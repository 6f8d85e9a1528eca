"""Python client of the milsil gRPC server (the reference client; the tests and demo use it).

::

    from milsil.client import MilsilClient

    with MilsilClient("127.0.0.1:50051", token="...") as client:
        ds = client.upload_dataset(bags_from_dataset("data/manifest.csv", patch_size=64))
        job = client.start_training(ds.name, {"epochs": 5, "learning_rate": 1e-3})
        for job in client.watch_job(job.name):
            print(job.state, job.progress.epoch)
        heat = client.heatmap(job.model, image)          # numpy [C, H, W] logits
        heat.familiarity.unlike_training                 # unlike the training data?
        fc, objects = client.annotate(job.model, image)  # QuPath GeoJSON
        fc, result = client.annotate_slide(job.model, "case1.svs")  # read by the server

Images are uint8 ``H x W x 3`` numpy arrays; they are cut into tiles, streamed, and the
streamed heatmap tiles are put back together here. The channel and the waiting while the
server is busy are :class:`~milsil.client.connection.Connection`'s; each family's messages
are built in the module named after it (:mod:`~milsil.client.regions`,
:mod:`~milsil.client.objects`, :mod:`~milsil.client.slides`,
:mod:`~milsil.client.training`), as on the server.

Every inference answer says how like the model's training data its input was:
``HeatmapResult.familiarity`` and ``ObjectResult.familiarity`` are
:class:`~milsil.client.messages.Familiarity`; the responses returned as messages
(ClassifyBag, Annotate, AnnotateSlide) carry a ``familiarity`` message, which
``Familiarity.from_message`` turns into one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from milsil.client import messages, regions
from milsil.client.connection import Connection
from milsil.client.messages import Familiarity, HeatmapResult, assemble_heatmap, encode_tile
from milsil.client.objects import ObjectResult, assemble_objects, object_messages, region_around
from milsil.client.outlines import outline_message
from milsil.client.regions import interior_region, region_requests
from milsil.client.slides import slide_config
from milsil.client.training import upload_requests
from milsil.errors import MilsilError
from milsil.v1 import (
    common_pb2,
    inference_service_pb2,
    model_service_pb2,
    training_service_pb2,
)


class MilsilClient(Connection):
    """The typed API of a milsil server: one method per RPC, numpy arrays and GeoJSON dicts
    in and out; every call raises ``grpc.RpcError`` on a non-OK status."""

    def list_models(self, page_size: int = 0) -> list[model_service_pb2.Model]:
        return self._all_pages(
            self.models.ListModels,
            lambda token: model_service_pb2.ListModelsRequest(
                page_size=page_size, page_token=token
            ),
            "models",
        )

    def get_model(self, name: str) -> model_service_pb2.Model:
        return self._unary(self.models.GetModel, model_service_pb2.GetModelRequest(name=name))

    def delete_model(self, name: str) -> None:
        self._unary(self.models.DeleteModel, model_service_pb2.DeleteModelRequest(name=name))

    def export_model(
        self, name: str, path: str | Path, chunk_size: int = 0
    ) -> model_service_pb2.Model:
        """Download a model's checkpoint to ``path`` (written atomically)."""
        path = Path(path)
        model = None
        tmp = path.with_name(f".{path.name}.part")
        try:
            with open(tmp, "wb") as fh:
                for response in self._stream(
                    self.models.ExportModel,
                    model_service_pb2.ExportModelRequest(name=name, chunk_size=chunk_size),
                ):
                    if response.HasField("model"):
                        model = response.model
                    fh.write(response.chunk_data)
                fh.flush()
                os.fsync(fh.fileno())
            tmp.replace(path)
        finally:
            tmp.unlink(missing_ok=True)
        return model

    def import_model(
        self,
        path: str | Path,
        model_id: str = "",
        display_name: str = "",
        chunk_size: int = 1 << 20,
    ) -> model_service_pb2.Model:
        data = Path(path).read_bytes()

        def requests() -> Iterator[model_service_pb2.ImportModelRequest]:
            for i in range(0, max(len(data), 1), chunk_size):
                first = i == 0
                yield model_service_pb2.ImportModelRequest(
                    model_id=model_id if first else "",
                    display_name=display_name if first else "",
                    chunk_data=data[i : i + chunk_size],
                )

        return self._unary(self.models.ImportModel, requests)

    # ------------------------------------------------------------------ inference

    def classify_bag(
        self,
        model: str,
        tiles: Sequence[np.ndarray] | np.ndarray,
        encoding: str = "raw",
        tiles_per_message: int = 16,
        timeout: float | None = None,
    ) -> inference_service_pb2.ClassifyBagResponse:
        """Per-tile (SIL) and bag (MIL) probabilities of one bag of equally sized tiles."""
        tiles = list(tiles)

        def requests() -> Iterator[inference_service_pb2.ClassifyBagRequest]:
            if not tiles:
                yield inference_service_pb2.ClassifyBagRequest(model=model)
            for k in range(0, len(tiles), tiles_per_message):
                yield inference_service_pb2.ClassifyBagRequest(
                    model=model if k == 0 else "",
                    tiles=[encode_tile(t, encoding) for t in tiles[k : k + tiles_per_message]],
                )

        return self._unary(self.inference.ClassifyBag, requests, timeout)

    def heatmap(
        self,
        model: str,
        image: np.ndarray,
        x: float = 0.0,
        y: float = 0.0,
        downsample: float = 1.0,
        stride: int = 1,
        margin: int = 0,
        tile_size: int = 512,
        encoding: str = "raw",
        value_type: str = "float32",
        probabilities: bool = False,
        timeout: float | None = None,
    ) -> HeatmapResult:
        """Logit heatmap of ``image`` (its interior when ``margin`` > 0 pixels are context).

        ``(x, y)`` is the level-0 position of the interior's top-left pixel. A ``margin`` of
        the model's ``context_pixels`` (:meth:`get_model`) makes the interior's heatmap
        equal that of the whole slide; with less, the server mirrors the missing context.
        Returns ``[C, ceil(H'/stride), ceil(W'/stride)]`` arrays, as
        ``milsil.inference.heatmap.logit_heatmap``.
        """
        config = inference_service_pb2.HeatmapConfig(
            model=model,
            region=interior_region(image, x, y, downsample, margin),
            stride=stride,
            value_type=messages.value_type(value_type),
            include_probabilities=probabilities,
        )

        def requests() -> Iterator[inference_service_pb2.HeatmapRequest]:
            return region_requests(
                {"config": config},
                image,
                x,
                y,
                downsample,
                margin,
                tile_size,
                encoding,
                inference_service_pb2.HeatmapRequest,
            )

        return assemble_heatmap(self._queued_stream(self.inference.Heatmap, requests, timeout))

    def measure_objects(
        self,
        model: str,
        objects: Sequence[tuple[str, Mapping]],
        image: np.ndarray | None = None,
        x: float = 0.0,
        y: float = 0.0,
        downsample: float = 1.0,
        margin: int = 0,
        slide_path: str = "",
        region: tuple[float, float, float, float] | None = None,
        tile_size: int = 512,
        encoding: str = "raw",
        objects_per_message: int = 1000,
        timeout: float | None = None,
    ) -> ObjectResult:
        """Per-object mean/max logits and probabilities (MeasureObjects) of ``objects``,
        ``(id, GeoJSON geometry)`` pairs in level-0 pixels.

        Pixels: ``image`` (its interior at level-0 ``(x, y)``, ``margin`` pixels of context
        on each side, as :meth:`heatmap`), or ``slide_path``, a slide the server reads
        under its ``--slide-root``, with ``region`` level-0 ``(x, y, width, height)``
        (default: the objects' bounding box, one pixel wider) read at ``downsample``.
        """
        objects = list(objects)
        if (image is None) == (not slide_path):
            raise MilsilError("give either image (pixels to stream) or slide_path (server-side)")
        if image is not None:
            box = interior_region(image, x, y, downsample, margin)
        else:
            if region is None:
                region = region_around([g for _, g in objects])
            box = common_pb2.Region(
                x=region[0], y=region[1], width=region[2], height=region[3], downsample=downsample
            )
        config = inference_service_pb2.MeasureObjectsConfig(
            model=model, region=box, slide_path=slide_path
        )
        Request = inference_service_pb2.MeasureObjectsRequest

        def requests() -> Iterator[Any]:
            yield Request(config=config)
            for batch in object_messages(objects, objects_per_message):
                yield Request(objects=batch)
            if image is not None:
                yield from region_requests(
                    {}, image, x, y, downsample, margin, tile_size, encoding, Request
                )

        return assemble_objects(
            self._queued_stream(self.inference.MeasureObjects, requests, timeout)
        )

    def annotate(
        self,
        model: str,
        image: np.ndarray,
        x: float = 0.0,
        y: float = 0.0,
        downsample: float = 1.0,
        stride: int = 1,
        margin: int = 0,
        class_name: str = "",
        threshold: float | None = None,
        threshold_on: str = "probability",
        min_area: float = 0.0,
        simplify_tolerance: float = 0.0,
        tile_size: int = 512,
        encoding: str = "raw",
        timeout: float | None = None,
        outline: Mapping[str, float] | None = None,
        pixel_size_um: float = 0.0,
    ) -> tuple[dict[str, Any], inference_service_pb2.AnnotateResponse]:
        """QuPath GeoJSON FeatureCollection (as a dict) of ``class_name`` regions, and the response.

        ``outline``: the clean-up (``min_area``, ``min_hole_area``, ``smooth_sigma``,
        ``merge_distance``, ``simplify``; a field left out takes the server's default, 0
        turns it off), in µm with ``pixel_size_um`` (level-0 µm per pixel), else in
        pixels; the GeoJSON's ``outline_settings`` says which.
        """
        config = inference_service_pb2.AnnotateConfig(
            heatmap=inference_service_pb2.HeatmapConfig(
                model=model,
                region=interior_region(image, x, y, downsample, margin),
                stride=stride,
            ),
            class_name=class_name,
            threshold_on=regions.threshold_on(threshold_on),
            min_area=min_area,
            simplify_tolerance=simplify_tolerance,
            outline=outline_message(outline),
            pixel_size_um=pixel_size_um,
        )
        if threshold is not None:
            config.threshold = threshold

        def requests() -> Iterator[inference_service_pb2.AnnotateRequest]:
            return region_requests(
                {"config": config},
                image,
                x,
                y,
                downsample,
                margin,
                tile_size,
                encoding,
                inference_service_pb2.AnnotateRequest,
            )

        response = self._unary(self.inference.Annotate, requests, timeout)
        return json.loads(response.geojson), response

    # ------------------------------------------------------------------ whole slides

    def annotate_slide(
        self,
        model: str,
        path: str,
        stride: int = 8,
        downsample: float = 1.0,
        tissue_only: bool = True,
        tile_size: int = 0,
        class_name: str = "",
        threshold: float | None = None,
        min_area: float = 0.0,
        simplify_tolerance: float = 0.0,
        write_tiff: bool = False,
        tiff_path: str = "",
        progress: Callable[[inference_service_pb2.SlideProgress], None] | None = None,
        timeout: float | None = None,
        roi: str | dict | None = None,
        outline: Mapping[str, float] | None = None,
        pixel_size_um: float = 0.0,
    ) -> tuple[dict[str, Any], inference_service_pb2.AnnotateSlideResult]:
        """QuPath GeoJSON (as a dict) of a slide the server reads itself, and the result.

        ``path`` is relative to the server's ``--slide-root``. ``progress`` gets every
        progress message. Cancelled or failed calls resume when called again alike.
        ``roi``: a GeoJSON Polygon/MultiPolygon (dict or text, level-0 px): only tiles that
        intersect it are computed and the outlines are clipped to it. ``outline`` /
        ``pixel_size_um``: as :meth:`annotate`'s (pixel size 0: the slide's metadata).
        """
        request = inference_service_pb2.AnnotateSlideRequest(
            config=slide_config(
                model,
                path,
                stride,
                downsample,
                tissue_only,
                tile_size,
                class_name,
                write_tiff,
                tiff_path,
                roi,
                outline_message(outline),
                pixel_size_um,
            ),
            min_area=min_area,
            simplify_tolerance=simplify_tolerance,
        )
        if threshold is not None:
            request.threshold = threshold
        result = None
        for response in self._stream(
            self.inference.AnnotateSlide,
            request,
            timeout,
            is_result=lambda r: r.HasField("result"),
        ):
            if response.HasField("progress"):
                self._progress("AnnotateSlide", response.progress, progress)
            else:
                result = response.result
        if result is None:
            raise MilsilError("the server ended AnnotateSlide without a result")
        return json.loads(result.geojson), result

    def slide_heatmap(
        self,
        model: str,
        path: str,
        stride: int = 8,
        downsample: float = 1.0,
        tissue_only: bool = True,
        tile_size: int = 0,
        value_type: str = "float32",
        probabilities: bool = False,
        values: bool = True,
        block_size: int = 0,
        class_name: str = "",
        write_tiff: bool = False,
        tiff_path: str = "",
        progress: Callable[[inference_service_pb2.SlideProgress], None] | None = None,
        timeout: float | None = None,
        roi: str | dict | None = None,
    ) -> tuple[HeatmapResult, inference_service_pb2.SlideSummary]:
        """Logit map ``[C, rows, cols]`` of a slide the server reads itself (NaN off tissue).

        With ``values=False`` only the header and the summary come back (e.g. with
        ``write_tiff``); the arrays are then all NaN.
        """
        request = inference_service_pb2.SlideHeatmapRequest(
            config=slide_config(
                model,
                path,
                stride,
                downsample,
                tissue_only,
                tile_size,
                class_name,
                write_tiff,
                tiff_path,
                roi,
            ),
            value_type=messages.value_type(value_type),
            include_probabilities=probabilities,
            omit_values=not values,
            block_size=block_size,
        )
        summary: list[inference_service_pb2.SlideSummary] = []

        def map_messages() -> Iterator[Any]:
            for response in self._stream(
                self.inference.SlideHeatmap,
                request,
                timeout,
                is_result=lambda r: r.WhichOneof("response") != "progress",
            ):
                kind = response.WhichOneof("response")
                if kind == "progress":
                    self._progress("SlideHeatmap", response.progress, progress)
                elif kind == "result":
                    summary.append(response.result)
                else:
                    yield response

        heat = assemble_heatmap(map_messages())
        if not summary:
            raise MilsilError("the server ended SlideHeatmap without a result")
        heat.familiarity = Familiarity.from_message(summary[0].familiarity)  # the whole slide
        if probabilities and heat.probabilities is None:
            heat.probabilities = np.full_like(heat.logits, np.nan)
        return heat, summary[0]

    def _progress(
        self,
        what: str,
        message: inference_service_pb2.SlideProgress,
        progress: Callable[[inference_service_pb2.SlideProgress], None] | None,
    ) -> None:
        """A slide's progress: its queue place said through ``on_wait``, then ``progress``."""
        if message.HasField("queue"):
            self._say_queue(what, message.queue)
        if progress is not None:
            progress(message)

    # ------------------------------------------------------------------ training

    def upload_dataset(
        self,
        bags: Iterable[tuple[np.ndarray, str, str]],
        display_name: str = "",
        encoding: str = "raw",
        max_message_bytes: int = 16 * 2**20,
        timeout: float | None = None,
    ) -> training_service_pb2.Dataset:
        """Upload ``(tiles [N,h,w,3] uint8, label, patient)`` bags; returns the stored dataset.

        A busy server is waited for when ``bags`` can be read again (a list); bags from a
        one-shot iterator are sent once.
        """

        def requests() -> Iterator[training_service_pb2.UploadDatasetRequest]:
            return upload_requests(bags, display_name, encoding, max_message_bytes)

        if iter(bags) is bags:  # one pass only: no retry
            return self.training.UploadDataset(requests(), **self._kw(timeout))
        return self._unary(self.training.UploadDataset, requests, timeout)

    def start_training(
        self,
        dataset: str = "",
        config: dict[str, Any] | None = None,
        display_name: str = "",
        resume_job: str = "",
    ) -> training_service_pb2.Job:
        """Start a job (fields of TrainingConfig: arch, head, width, epochs, learning_rate, ...)."""
        try:
            cfg = training_service_pb2.TrainingConfig(**(config or {}))
        except (ValueError, TypeError) as exc:
            raise MilsilError(f"bad training config: {exc}") from None
        return self._unary(
            self.training.StartTraining,
            training_service_pb2.StartTrainingRequest(
                dataset=dataset, config=cfg, display_name=display_name, resume_job=resume_job
            ),
        )

    def get_job(self, name: str) -> training_service_pb2.Job:
        return self._unary(self.training.GetJob, training_service_pb2.GetJobRequest(name=name))

    def list_jobs(self, state: str = "") -> list[training_service_pb2.Job]:
        value = training_service_pb2.Job.State.Value(state.upper()) if state else 0
        return self._all_pages(
            self.training.ListJobs,
            lambda token: training_service_pb2.ListJobsRequest(page_token=token, state=value),
            "jobs",
        )

    def cancel_job(self, name: str) -> training_service_pb2.Job:
        return self._unary(
            self.training.CancelJob, training_service_pb2.CancelJobRequest(name=name)
        )

    def watch_job(
        self, name: str, timeout: float | None = None
    ) -> Iterator[training_service_pb2.Job]:
        """Yield the job at every change until it reaches a final state."""
        for response in self._stream(
            self.training.WatchJob, training_service_pb2.WatchJobRequest(name=name), timeout
        ):
            yield response.job

    def wait_job(self, name: str, timeout: float | None = None) -> training_service_pb2.Job:
        """Block until the job is final; returns it."""
        last = None
        for job in self.watch_job(name, timeout):
            last = job
        return last if last is not None else self.get_job(name)
