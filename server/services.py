"""The three milsil.v1 servicers: translate messages to calls into store, inference and jobs.

Servicers never call ``context.abort``: they raise (MilsilError, NotFoundError,
:mod:`server.errors`), and the interceptor in :mod:`server.app` turns that into a status.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from google.protobuf import empty_pb2, timestamp_pb2

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
from server import inference
from server.errors import Cancelled, ResourceExhausted
from server.inference import ComputeSlots, Limits, ModelCache, RegionCanvas, RegionSpec
from server.jobs import JobManager
from server.store import Store, new_id, parse_name, parse_page

VALUE_DTYPES = {
    common_pb2.VALUE_TYPE_UNSPECIFIED: "<f4",
    common_pb2.VALUE_TYPE_FLOAT32: "<f4",
    common_pb2.VALUE_TYPE_FLOAT16: "<f2",
}


def _timestamp(seconds: float | None) -> timestamp_pb2.Timestamp | None:
    if seconds is None:
        return None
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def _encoding_name(tile: common_pb2.Tile, where: str) -> str:
    try:
        return common_pb2.Tile.Encoding.Name(tile.encoding)
    except ValueError:
        raise MilsilError(
            f"{where}.encoding {tile.encoding} is unknown; allowed: RAW_RGB8, PNG, JPEG"
        ) from None


def decode(tile: common_pb2.Tile, where: str, limits: Limits) -> np.ndarray:
    return inference.decode_tile(
        _encoding_name(tile, where), tile.data, tile.width, tile.height, where, limits
    )


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
        patch_size=row.get("patch_size", 0),
        source_job=row.get("source_job", ""),
        metrics=row.get("metrics", {}),
        size_bytes=row.get("size_bytes", 0),
        sha256=row.get("sha256", ""),
        create_time=_timestamp(row["create_time"]),
    )


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


_CONFIG_FIELDS = (
    "arch",
    "head",
    "width",
    "epochs",
    "learning_rate",
    "lr_decay",
    "batch_size",
    "patch_size",
    "seed",
    "validation_fraction",
    "folds",
    "fold",
    "no_augment",
)
_PROGRESS_FIELDS = (
    "epoch",
    "epochs",
    "step",
    "steps_per_epoch",
    "loss",
    "sil_accuracy",
    "mil_accuracy",
    "val_sil_accuracy",
    "val_mil_accuracy",
    "val_mil_auroc",
    "eta_seconds",
    "elapsed_seconds",
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
            **{k: cfg[k] for k in _CONFIG_FIELDS if k in cfg}
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


# ====================================================================== ModelService


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(
        self, store: Store, cache: ModelCache, max_message_bytes: int, max_model_bytes: int
    ) -> None:
        self.store, self.cache = store, cache
        self.max_message_bytes, self.max_model_bytes = max_message_bytes, max_model_bytes

    def ListModels(self, request, context):
        limit, offset = parse_page(request.page_size, request.page_token)
        rows, more = self.store.list_models(limit, offset)
        return model_service_pb2.ListModelsResponse(
            models=[model_message(r) for r in rows],
            next_page_token=str(offset + limit) if more else "",
        )

    def GetModel(self, request, context):
        return model_message(self.store.get_model(parse_name(request.name, "models")))

    def DeleteModel(self, request, context):
        ident = parse_name(request.name, "models")
        self.store.delete_model(ident)
        self.cache.evict(ident)
        return empty_pb2.Empty()

    def ExportModel(self, request, context):
        ident = parse_name(request.name, "models")
        size = request.chunk_size or (1 << 20)
        if not 0 < size <= self.max_message_bytes - 1024:
            raise MilsilError(
                f"chunk_size must be 1-{self.max_message_bytes - 1024} bytes (0 = 1 MiB), got {size}"
            )
        row = self.store.get_model(ident)
        first = True
        for offset, chunk in self.store.iter_model_file(ident, size):
            if not context.is_active():
                raise Cancelled("export cancelled by the client")
            yield model_service_pb2.ExportModelResponse(
                model=model_message(row) if first else None, chunk_data=chunk, offset=offset
            )
            first = False

    def ImportModel(self, request_iterator, context):
        model_id = display_name = None
        fd, tmp = tempfile.mkstemp(prefix="import-", suffix=".pt", dir=self.store.root / "tmp")
        total = 0
        try:
            with os.fdopen(fd, "wb") as fh:
                for request in request_iterator:
                    if model_id is None:
                        model_id, display_name = request.model_id, request.display_name
                    total += len(request.chunk_data)
                    if total > self.max_model_bytes:
                        raise ResourceExhausted(
                            f"checkpoint exceeds the server limit of {self.max_model_bytes} bytes"
                        )
                    fh.write(request.chunk_data)
            if model_id is None or total == 0:
                raise MilsilError("chunk_data is empty: stream the checkpoint file's bytes")
            ident = model_id or new_id("model-")
            parse_name(ident, "models", "model_id")
            row = self.store.register_model(
                Path(tmp), ident, display_name=display_name or "", move=True
            )
            return model_message(row)
        finally:
            Path(tmp).unlink(missing_ok=True)


# ====================================================================== InferenceService


@dataclass
class _RegionJob:
    model_id: str
    model: torch.nn.Module
    canvas: RegionCanvas
    stride: int


class InferenceServicer(inference_service_pb2_grpc.InferenceServiceServicer):
    def __init__(
        self,
        store: Store,
        cache: ModelCache,
        slots: ComputeSlots,
        limits: Limits,
        max_tiles: int = 100_000,
    ) -> None:
        self.store, self.cache, self.slots, self.limits = store, cache, slots, limits
        self.max_tiles = max_tiles

    def _model(self, name: str, field: str) -> tuple[str, torch.nn.Module]:
        ident = parse_name(name, "models", field)
        self.store.get_model(ident)  # NOT_FOUND before touching files
        return ident, self.cache.get(ident)

    # ------------------------------------------------------------------ ClassifyBag

    def ClassifyBag(self, request_iterator, context):
        model_name = None
        tiles: list[np.ndarray] = []
        pixels = 0
        for n, request in enumerate(request_iterator):
            if n == 0:
                model_name = request.model
            elif request.model and request.model != model_name:
                raise MilsilError(
                    "model may only be set in the first message (or repeated unchanged)"
                )
            for tile in request.tiles:
                where = f"tiles[{len(tiles)}]"
                if len(tiles) >= self.limits.max_bag_tiles:
                    raise ResourceExhausted(
                        f"a bag may have at most {self.limits.max_bag_tiles} tiles"
                    )
                pixels += max(tile.width, 0) * max(tile.height, 0)
                if pixels > self.limits.max_bag_pixels:
                    raise ResourceExhausted(
                        f"a bag may hold at most {self.limits.max_bag_pixels} pixels"
                    )
                tiles.append(decode(tile, where, self.limits))
        if model_name is None:
            raise MilsilError("empty stream: the first ClassifyBagRequest must name the model")
        ident, model = self._model(model_name, "model")
        with self.slots.acquire(context.is_active):
            result = inference.classify_bag(model, tiles, context.is_active)
        classes = model.class_names
        response = inference_service_pb2.ClassifyBagResponse(
            model=f"models/{ident}",
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

    # ------------------------------------------------------------------ region intake

    def _open(self, config: inference_service_pb2.HeatmapConfig, prefix: str) -> _RegionJob:
        stride = config.stride or 1
        if not 1 <= stride <= self.limits.max_stride:
            raise MilsilError(
                f"{prefix}.stride must be 1-{self.limits.max_stride} (0 = 1), got {config.stride}"
            )
        if config.value_type not in VALUE_DTYPES:
            raise MilsilError(
                f"{prefix}.value_type {config.value_type} is unknown; allowed: FLOAT16, FLOAT32"
            )
        if not config.HasField("region"):
            raise MilsilError(
                f"{prefix}.region is required (level-0 x, y, width, height, downsample)"
            )
        reg = config.region
        spec = RegionSpec.parse(reg.x, reg.y, reg.width, reg.height, reg.downsample, self.limits)
        ident, model = self._model(config.model, f"{prefix}.model")
        halo = inference.halo_for(model)
        canvas = RegionCanvas(spec, halo, *model.normalization)
        return _RegionJob(ident, model, canvas, stride)

    def _intake(self, job: _RegionJob, tiles: Iterable[common_pb2.Tile], context) -> None:
        for tile in tiles:
            n = len(job.canvas.placements)
            if n >= self.max_tiles:
                raise ResourceExhausted(f"at most {self.max_tiles} tiles per request")
            where = f"tiles[{n}]"
            pixels = decode(tile, where, self.limits)
            job.canvas.add(pixels, tile.x, tile.y, tile.downsample, where)

    def _read_region(self, request_iterator, context, kind: str) -> tuple[Any, _RegionJob]:
        iterator = iter(request_iterator)
        first = next(iterator, None)
        if first is None or not first.HasField("config"):
            raise MilsilError(f"config is required in the first {kind}Request")
        config = first.config
        job = self._open(
            config if kind == "Heatmap" else config.heatmap,
            "config" if kind == "Heatmap" else "config.heatmap",
        )
        if kind == "Annotate":
            self._annotate_settings(config, job.model)  # fail fast, before the pixels arrive
        self._intake(job, first.tiles, context)
        for request in iterator:
            if request.HasField("config"):
                raise MilsilError("config may only be sent in the first message")
            self._intake(job, request.tiles, context)
        job.canvas.check_covered()
        job.canvas.mirror_missing_context()
        return config, job

    # ------------------------------------------------------------------ Heatmap

    def Heatmap(self, request_iterator, context):
        config, job = self._read_region(request_iterator, context, "Heatmap")
        dtype = VALUE_DTYPES[config.value_type]
        value_type = config.value_type or common_pb2.VALUE_TYPE_FLOAT32
        model, canvas, stride = job.model, job.canvas, job.stride
        r = canvas.region
        rows, cols = -(-r.height // stride), -(-r.width // stride)
        classes = model.class_names
        with self.slots.acquire(context.is_active):
            yield inference_service_pb2.HeatmapResponse(
                header=inference_service_pb2.HeatmapHeader(
                    model=f"models/{job.model_id}",
                    class_names=classes,
                    rows=rows,
                    cols=cols,
                    stride=stride,
                    step=stride * r.downsample,
                    origin_x=r.x + 0.5 * r.downsample,
                    origin_y=r.y + 0.5 * r.downsample,
                    value_type=value_type,
                    receptive_field=int(model.receptive_field),
                )
            )
            pending = sorted(canvas.placements, key=lambda p: p.y1)
            probs = None
            for done, result in inference.banded_heatmap(
                model, canvas, stride, context.is_active, self.cache.device
            ):
                while pending and -(-pending[0].y1 // stride) <= done:
                    placement = pending.pop(0)
                    r0, r1, c0, c1 = inference.tile_samples(placement, stride)
                    block = result[:, r0:r1, c0:c1]
                    tile = inference_service_pb2.HeatmapTile(
                        tile_index=placement.index,
                        row=r0,
                        col=c0,
                        rows=r1 - r0,
                        cols=c1 - c0,
                        num_classes=len(classes),
                        logits=block.numpy().astype(dtype).tobytes(),
                    )
                    if config.include_probabilities:
                        probs = torch.softmax(block, dim=0)
                        tile.probabilities = probs.numpy().astype(dtype).tobytes()
                    yield inference_service_pb2.HeatmapResponse(tile=tile)

    # ------------------------------------------------------------------ Annotate

    def _annotate_settings(
        self, config: inference_service_pb2.AnnotateConfig, model
    ) -> dict[str, Any]:
        classes = model.class_names
        class_name = config.class_name or classes[-1]
        if class_name not in classes:
            raise MilsilError(
                f"config.class_name {class_name!r} is not a class of the model; allowed: {', '.join(classes)}"
            )
        on = config.threshold_on or inference_service_pb2.AnnotateConfig.PROBABILITY
        if on not in (
            inference_service_pb2.AnnotateConfig.PROBABILITY,
            inference_service_pb2.AnnotateConfig.LOGIT,
        ):
            raise MilsilError(f"config.threshold_on {on} is unknown; allowed: PROBABILITY, LOGIT")
        probability = on == inference_service_pb2.AnnotateConfig.PROBABILITY
        threshold = (
            config.threshold if config.HasField("threshold") else (0.5 if probability else 0.0)
        )
        if not math.isfinite(threshold):
            raise MilsilError(f"config.threshold must be a finite number, got {threshold}")
        if probability and not 0.0 <= threshold <= 1.0:
            raise MilsilError(
                f"config.threshold must be in [0, 1] for PROBABILITY, got {threshold}"
            )
        for name in ("min_area", "simplify_tolerance"):
            value = getattr(config, name)
            if not math.isfinite(value) or value < 0:
                raise MilsilError(
                    f"config.{name} must be a finite number >= 0 (level-0 pixels), got {value}"
                )
        color = list(config.color)
        if color and (len(color) != 3 or not all(0 <= c <= 255 for c in color)):
            raise MilsilError(f"config.color must be empty or [r, g, b] with 0-255, got {color}")
        return {
            "class_index": classes.index(class_name),
            "class_name": class_name,
            "probability": probability,
            "threshold": float(threshold),
            "color": color or None,
            "classification": config.classification or class_name,
        }

    def Annotate(self, request_iterator, context):
        import json

        from milsil.geojson import heatmap_to_geojson

        config, job = self._read_region(request_iterator, context, "Annotate")
        settings = self._annotate_settings(config, job.model)
        with self.slots.acquire(context.is_active):
            result = None
            for _done, full in inference.banded_heatmap(
                job.model, job.canvas, job.stride, context.is_active, self.cache.device
            ):
                result = full
        if not context.is_active():
            raise Cancelled("request cancelled or deadline exceeded")
        k = settings["class_index"]
        logits = result[k].numpy()
        probs = torch.softmax(result, dim=0)[k].numpy()
        r = job.canvas.region
        collection, objects = heatmap_to_geojson(
            probs if settings["probability"] else logits,
            settings["threshold"],
            origin=(r.x, r.y),
            downsample=r.downsample,
            stride=job.stride,
            region_size=(r.width * r.downsample, r.height * r.downsample),
            classification=settings["classification"],
            color=settings["color"],
            min_area=config.min_area,
            simplify_tolerance=config.simplify_tolerance,
            measurement_maps={"probability": probs, "logit": logits},
        )
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
            model=f"models/{job.model_id}",
            class_name=settings["class_name"],
        )


# ====================================================================== TrainingService


class TrainingServicer(training_service_pb2_grpc.TrainingServiceServicer):
    def __init__(self, store: Store, jobs: JobManager, limits: Limits) -> None:
        self.store, self.jobs, self.limits = store, jobs, limits

    def UploadDataset(self, request_iterator, context):
        writer = self.store.dataset_writer()
        display_name = ""
        pending: dict[str, Any] | None = None
        try:
            for n, request in enumerate(request_iterator):
                if n == 0:
                    display_name = request.display_name
                for b, bag in enumerate(request.bags):
                    where = f"bags[{b}] of message {n}"
                    if pending is not None and (not bag.bag_id or bag.bag_id != pending["id"]):
                        self._flush(writer, pending)
                        pending = None
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
                if not context.is_active():
                    raise Cancelled("upload cancelled by the client")
            if pending is not None:
                self._flush(writer, pending)
            row, existed = self.store.commit_dataset(writer, display_name)
        except BaseException:
            self.store.discard(writer)
            raise
        return dataset_message(row, existed)

    def _flush(self, writer, pending: dict[str, Any]) -> None:
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
        try:
            writer.add_bag(pending["label"], pending["patient"], np.stack(tiles))
        except MilsilError as exc:
            raise MilsilError(f"{pending['where']}: {exc}") from None

    def StartTraining(self, request, context):
        if request.resume_job:
            return job_message(
                self.jobs.resume(parse_name(request.resume_job, "jobs", "resume_job"))
            )
        dataset_id = parse_name(request.dataset, "datasets", "dataset")
        cfg = {k: getattr(request.config, k) for k in _CONFIG_FIELDS}
        return job_message(self.jobs.start(dataset_id, cfg, request.display_name))

    def GetJob(self, request, context):
        return job_message(self.store.get_job(parse_name(request.name, "jobs")))

    def ListJobs(self, request, context):
        limit, offset = parse_page(request.page_size, request.page_token)
        try:
            state = training_service_pb2.Job.State.Name(request.state) if request.state else None
        except ValueError:
            raise MilsilError(
                f"state {request.state} is unknown; allowed: QUEUED, RUNNING, SUCCEEDED, FAILED, "
                "CANCELLED, INTERRUPTED"
            ) from None
        rows, more = self.store.list_jobs(limit, offset, state)
        return training_service_pb2.ListJobsResponse(
            jobs=[job_message(r) for r in rows], next_page_token=str(offset + limit) if more else ""
        )

    def CancelJob(self, request, context):
        return job_message(self.jobs.cancel(parse_name(request.name, "jobs")))

    def WatchJob(self, request, context) -> Iterator[training_service_pb2.WatchJobResponse]:
        ident = parse_name(request.name, "jobs")
        for row in self.jobs.watch(ident, context.is_active):
            yield training_service_pb2.WatchJobResponse(job=job_message(row))
