"""Python client of the milsil gRPC server (the reference client; the tests and demo use it).

::

    from milsil.client import MilsilClient

    with MilsilClient("127.0.0.1:50051", token="...") as client:
        ds = client.upload_dataset(bags_from_dataset("data/manifest.csv", patch_size=64))
        job = client.start_training(ds.name, {"epochs": 5, "learning_rate": 1e-3})
        for job in client.watch_job(job.name):
            print(job.state, job.progress.epoch)
        heat = client.heatmap(job.model, image)          # numpy [C, H, W] logits
        fc, objects = client.annotate(job.model, image)  # QuPath GeoJSON
        fc, result = client.annotate_slide(job.model, "case1.svs")  # read by the server

Images are uint8 ``H x W x 3`` numpy arrays; they are cut into tiles, streamed, and the
streamed heatmap tiles are put back together here.

Busy is not failure: every call that the server refuses as busy (``milsil-retry: busy``,
see :mod:`milsil.client.retry`) is retried after a jittered exponential backoff until the
call's deadline (``timeout``; none: until it is served); waiting lines ("queued for
compute, position 2 of 5", "server busy ...; retrying in 1.3 s") go to ``on_wait``
(default: the ``milsil.client`` logger at INFO). Too large is final and raised at once.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from milsil.client.messages import (
    VALUE_TYPES,
    HeatmapResult,
    assemble_heatmap,
    encode_tile,
    image_tiles,
    interior_region,
)
from milsil.client.objects import ObjectResult, assemble_objects, geometry_bounds, object_messages
from milsil.client.retry import Retrier, method_name, queue_line
from milsil.errors import MilsilError
from milsil.v1 import (
    common_pb2,
    inference_service_pb2,
    inference_service_pb2_grpc,
    model_service_pb2,
    model_service_pb2_grpc,
    training_service_pb2,
    training_service_pb2_grpc,
)

# Read from the contract, not copied: every Job.State numbered above RUNNING is final
# (documented in training_service.proto).
FINAL_JOB_STATES = tuple(
    name
    for name, number in training_service_pb2.Job.State.items()
    if number > training_service_pb2.Job.RUNNING
)


def bags_from_dataset(path: str | Path, patch_size: int) -> Iterator[tuple[np.ndarray, str, str]]:
    """``(tiles, label, patient)`` for every bag of a local dataset (manifest CSV or folder)."""
    from milsil.data import load_bag, load_dataset

    records, classes = load_dataset(path)
    for record in records:
        yield load_bag(record, patch_size), classes[record.label], record.patient


class MilsilClient:
    """Connection to a milsil server; every call raises ``grpc.RpcError`` on a non-OK status."""

    def __init__(
        self,
        target: str = "127.0.0.1:50051",
        token: str | None = None,
        root_certificates: bytes | str | Path | None = None,
        client_cert: bytes | str | Path | None = None,
        client_key: bytes | str | Path | None = None,
        max_message_mb: int = 64,
        timeout: float | None = None,
        server_name: str | None = None,
        tls: bool | None = None,
        retry_busy: bool = True,
        on_wait: Callable[[str], None] | None = None,
    ) -> None:
        options = [
            ("grpc.max_receive_message_length", max_message_mb * 2**20),
            ("grpc.max_send_message_length", max_message_mb * 2**20),
            # A connection of its own: the server queues work fairly per connection.
            ("grpc.use_local_subchannel_pool", 1),
        ]
        if server_name:
            options.append(("grpc.ssl_target_name_override", server_name))
        use_tls = (
            tls if tls is not None else root_certificates is not None or client_cert is not None
        )
        if use_tls:
            creds = grpc.ssl_channel_credentials(
                root_certificates=_pem(root_certificates),
                private_key=_pem(client_key),
                certificate_chain=_pem(client_cert),
            )
            self.channel = grpc.secure_channel(target, creds, options=options)
        else:
            self.channel = grpc.insecure_channel(target, options=options)
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.timeout = timeout
        self.retry = Retrier(
            enabled=retry_busy,
            on_wait=on_wait if on_wait is not None else logging.getLogger("milsil.client").info,
        )
        self.models = model_service_pb2_grpc.ModelServiceStub(self.channel)
        self.inference = inference_service_pb2_grpc.InferenceServiceStub(self.channel)
        self.training = training_service_pb2_grpc.TrainingServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> MilsilClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _kw(self, timeout: float | None = None) -> dict[str, Any]:
        return {
            "metadata": self.metadata,
            "timeout": timeout if timeout is not None else self.timeout,
        }

    def _all_pages(self, method, request_for: Callable[[str], Any], field: str) -> list[Any]:
        """Every item of a paged List RPC: follow ``next_page_token`` until it is empty."""
        items, token = [], ""
        while True:
            page = self._unary(method, request_for(token))
            items.extend(getattr(page, field))
            token = page.next_page_token
            if not token:
                return items

    def _unary(self, method, request: Any, timeout: float | None = None) -> Any:
        """One answer (``request`` may make a request stream); waits while the server is busy."""
        return self.retry.unary(method, request, self.metadata, self._kw(timeout)["timeout"])

    def _stream(self, method, request: Any, timeout: float | None = None, is_result=None):
        """Streamed answers; waits while the server is busy, before the first result."""
        timeout = self._kw(timeout)["timeout"]
        return self.retry.streaming(method, request, self.metadata, timeout, is_result)

    def _queued_stream(self, method, requests, timeout: float | None) -> Iterator[Any]:
        """The answers of a call that reports its place in the compute queue (``queue``
        messages, said through ``on_wait`` and left out)."""
        what = method_name(method)
        for response in self._stream(
            method, requests, timeout, is_result=lambda r: not r.HasField("queue")
        ):
            if response.HasField("queue"):
                self._say_queue(what, response.queue)
            else:
                yield response

    def _say_queue(self, what: str, queue: Any) -> None:
        self.retry.say(queue_line(what, queue.position, queue.waiting))

    def health(self, service: str = "", timeout: float | None = 5.0) -> str:
        """Health status name ("SERVING", "NOT_SERVING", ...) of the server or one service."""
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        stub = health_pb2_grpc.HealthStub(self.channel)
        response = self.retry.call(
            "Health",
            lambda left: stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=left),
            timeout,
        )
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)

    # ------------------------------------------------------------------ models

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

    def _region_requests(
        self,
        first_config: dict[str, Any],
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
                yield request_cls(**(first_config if first else {}), tiles=batch)
                batch, first = [], False
        if batch or first:
            yield request_cls(**(first_config if first else {}), tiles=batch)

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
        if value_type not in VALUE_TYPES:
            raise MilsilError(
                f"value_type must be one of {', '.join(VALUE_TYPES)}, got {value_type!r}"
            )
        config = inference_service_pb2.HeatmapConfig(
            model=model,
            region=interior_region(image, x, y, downsample, margin),
            stride=stride,
            value_type=VALUE_TYPES[value_type],
            include_probabilities=probabilities,
        )

        def requests() -> Iterator[inference_service_pb2.HeatmapRequest]:
            return self._region_requests(
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
                x0, y0, x1, y1 = _around(geometry_bounds([g for _, g in objects]))
                region = (x0, y0, x1 - x0, y1 - y0)
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
                yield from self._region_requests(
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
    ) -> tuple[dict[str, Any], inference_service_pb2.AnnotateResponse]:
        """QuPath GeoJSON FeatureCollection (as a dict) of ``class_name`` regions, and the response."""
        ons = {
            "probability": inference_service_pb2.AnnotateConfig.PROBABILITY,
            "logit": inference_service_pb2.AnnotateConfig.LOGIT,
        }
        if threshold_on not in ons:
            raise MilsilError(
                f"threshold_on must be 'probability' or 'logit', got {threshold_on!r}"
            )
        config = inference_service_pb2.AnnotateConfig(
            heatmap=inference_service_pb2.HeatmapConfig(
                model=model,
                region=interior_region(image, x, y, downsample, margin),
                stride=stride,
            ),
            class_name=class_name,
            threshold_on=ons[threshold_on],
            min_area=min_area,
            simplify_tolerance=simplify_tolerance,
        )
        if threshold is not None:
            config.threshold = threshold

        def requests() -> Iterator[inference_service_pb2.AnnotateRequest]:
            return self._region_requests(
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

    @staticmethod
    def _slide_config(
        model: str,
        path: str,
        stride: int,
        downsample: float,
        tissue_only: bool,
        tile_size: int,
        class_name: str,
        write_tiff: bool,
        tiff_path: str,
    ) -> inference_service_pb2.SlideConfig:
        return inference_service_pb2.SlideConfig(
            model=model,
            path=str(path),
            stride=stride,
            downsample=downsample,
            tissue_only=tissue_only,
            tile_size=tile_size,
            class_name=class_name,
            write_tiff=write_tiff,
            tiff_path=tiff_path,
        )

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
    ) -> tuple[dict[str, Any], inference_service_pb2.AnnotateSlideResult]:
        """QuPath GeoJSON (as a dict) of a slide the server reads itself, and the result.

        ``path`` is relative to the server's ``--slide-root``. ``progress`` gets every
        progress message. Cancelled or failed calls resume when called again alike.
        ``roi``: a GeoJSON Polygon/MultiPolygon (dict or text, level-0 px): only tiles that
        intersect it are computed and the outlines are clipped to it.
        """
        request = inference_service_pb2.AnnotateSlideRequest(
            config=self._slide_config(
                model,
                path,
                stride,
                downsample,
                tissue_only,
                tile_size,
                class_name,
                write_tiff,
                tiff_path,
            ),
            min_area=min_area,
            simplify_tolerance=simplify_tolerance,
        )
        if threshold is not None:
            request.threshold = threshold
        if roi:
            request.config.roi = roi if isinstance(roi, str) else json.dumps(roi)
        result = None
        for response in self._stream(
            self.inference.AnnotateSlide,
            request,
            timeout,
            is_result=lambda r: r.HasField("result"),
        ):
            if response.HasField("progress"):
                if response.progress.HasField("queue"):
                    self._say_queue("AnnotateSlide", response.progress.queue)
                if progress is not None:
                    progress(response.progress)
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
        if value_type not in VALUE_TYPES:
            raise MilsilError(
                f"value_type must be one of {', '.join(VALUE_TYPES)}, got {value_type!r}"
            )
        request = inference_service_pb2.SlideHeatmapRequest(
            config=self._slide_config(
                model,
                path,
                stride,
                downsample,
                tissue_only,
                tile_size,
                class_name,
                write_tiff,
                tiff_path,
            ),
            value_type=VALUE_TYPES[value_type],
            include_probabilities=probabilities,
            omit_values=not values,
            block_size=block_size,
        )
        if roi:  # only tiles that intersect this GeoJSON geometry (level-0 px)
            request.config.roi = roi if isinstance(roi, str) else json.dumps(roi)
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
                    if response.progress.HasField("queue"):
                        self._say_queue("SlideHeatmap", response.progress.queue)
                    if progress is not None:
                        progress(response.progress)
                elif kind == "result":
                    summary.append(response.result)
                else:
                    yield response

        heat = assemble_heatmap(map_messages())
        if not summary:
            raise MilsilError("the server ended SlideHeatmap without a result")
        if probabilities and heat.probabilities is None:
            heat.probabilities = np.full_like(heat.logits, np.nan)
        return heat, summary[0]

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
            first = True
            for n, (tiles, label, patient) in enumerate(bags):
                # Split big bags across messages under one bag_id.
                chunk: list[common_pb2.Tile] = []
                size = 0
                for tile in tiles:
                    msg = encode_tile(np.asarray(tile), encoding)
                    if chunk and size + len(msg.data) > max_message_bytes:
                        yield _upload(first, display_name, n, label, patient, chunk)
                        first, chunk, size = False, [], 0
                    chunk.append(msg)
                    size += len(msg.data)
                yield _upload(first, display_name, n, label, patient, chunk)
                first = False
            if first:
                yield training_service_pb2.UploadDatasetRequest(display_name=display_name)

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


def _upload(
    first, display_name, n, label, patient, tiles
) -> training_service_pb2.UploadDatasetRequest:
    return training_service_pb2.UploadDatasetRequest(
        display_name=display_name if first else "",
        bags=[
            training_service_pb2.Bag(
                bag_id=f"bag-{n}", label=label, patient_id=patient, tiles=tiles
            )
        ],
    )


def _around(bounds: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
    """Whole level-0 pixels around ``bounds``, one wider on each side (never below 0)."""
    x0, y0, x1, y1 = bounds
    return (
        max(0.0, math.floor(x0) - 1),
        max(0.0, math.floor(y0) - 1),
        math.ceil(x1) + 1,
        math.ceil(y1) + 1,
    )


def _pem(value: bytes | str | Path | None) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    path = Path(value).expanduser()
    try:
        return path.read_bytes()
    except OSError as exc:
        raise MilsilError(f"cannot read PEM file {path}: {exc.strerror or exc}") from None
