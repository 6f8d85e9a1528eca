"""The three milsil.v1 servicers: translate messages to calls into store, inference and jobs.

Servicers never call ``context.abort``: they raise (MilsilError, NotFoundError,
:mod:`milsil_server.errors`), and the interceptor in :mod:`milsil_server.app` turns that into a status.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import queue
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch
from google.protobuf import empty_pb2, timestamp_pb2
from milsil_server import inference
from milsil_server.errors import Cancelled, FailedPrecondition, ResourceExhausted
from milsil_server.inference import ComputeSlots, Limits, ModelCache, RegionCanvas, RegionSpec
from milsil_server.jobs import JobManager
from milsil_server.paths import resolve_under_root
from milsil_server.store import Store, new_id, parse_name, parse_page

from milsil.errors import MilsilError, NotFoundError
from milsil.models import target_class_index
from milsil.v1 import (
    common_pb2,
    inference_service_pb2,
    inference_service_pb2_grpc,
    model_service_pb2,
    model_service_pb2_grpc,
    training_service_pb2,
    training_service_pb2_grpc,
)
from milsil.wsi import slides

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
                fh.flush()
                os.fsync(fh.fileno())  # on disk before the store points at it
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


@dataclass
class _SlideJob:
    """A validated AnnotateSlide/SlideHeatmap request: what to read, with what, and where."""

    model_id: str
    model: torch.nn.Module
    path: Path  # the slide, resolved inside a slide root
    request_path: str  # as the client named it
    stride: int
    downsample: float
    tile: int
    tissue_only: bool
    class_index: int
    tiff: Path | None  # absolute TIFF target, or None
    tiff_rel: str  # its path relative to the output root
    work_dir: Path  # resumable state, one per (slide, model, settings)


SLIDE_STRIDE = 8
SLIDE_TILE = 1024
SLIDE_BLOCK = 256
TIFF_SUFFIXES = (".tif", ".tiff")


class InferenceServicer(inference_service_pb2_grpc.InferenceServiceServicer):
    def __init__(
        self,
        store: Store,
        cache: ModelCache,
        slots: ComputeSlots,
        limits: Limits,
        max_tiles: int = 100_000,
        slide_roots: Sequence[str | Path] = (),
        output_root: str | Path | None = None,
        max_message_bytes: int = 64 * 2**20,
    ) -> None:
        self.store, self.cache, self.slots, self.limits = store, cache, slots, limits
        self.max_tiles = max_tiles
        self.slide_roots = [Path(r).expanduser().resolve() for r in slide_roots]
        self.output_root = Path(output_root or store.root / "outputs").expanduser().resolve()
        self.max_message_bytes = max_message_bytes
        self._work_locks: dict[str, threading.Lock] = {}
        self._work_locks_lock = threading.Lock()

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
        try:
            class_name = classes[target_class_index(classes, config.class_name)]
        except MilsilError:
            raise MilsilError(
                f"config.class_name {config.class_name!r} is not a class of the model; allowed: {', '.join(classes)}"
            ) from None
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

        from milsil.wsi.geojson import heatmap_to_geojson

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

    # ------------------------------------------------------------------ whole slides

    def _resolve_slide(self, path: str) -> tuple[Path, Path]:
        """The slide file inside a slide root, and its path relative to that root."""
        if not self.slide_roots:
            raise FailedPrecondition(
                "this server reads no slides itself: start it with --slide-root DIR "
                "(repeatable) to allow AnnotateSlide and SlideHeatmap"
            )
        if not path:
            raise MilsilError("config.path is required: a slide file under the server's slide root")
        if "\x00" in path:
            raise MilsilError("config.path must not contain NUL characters")
        missing: NotFoundError | None = None
        for root in self.slide_roots:
            try:
                found = resolve_under_root(root, path)
            except NotFoundError as exc:
                missing = missing or exc
                continue
            except MilsilError:
                continue  # outside this root; maybe inside another
            if found.is_dir():
                raise MilsilError(f"config.path {path!r} is a folder; give a slide file")
            return found, found.relative_to(root)
        if missing is not None:
            raise NotFoundError(f"config.path: {missing}")
        raise MilsilError(
            f"config.path {path!r} is outside the server's slide root ('..' and symbolic "
            "links included); give a path relative to the slide root"
        )

    def _tiff_target(
        self, config: inference_service_pb2.SlideConfig, default: str
    ) -> tuple[Path | None, str]:
        if not (config.write_tiff or config.tiff_path):
            return None, ""
        name = config.tiff_path or default
        pure = PurePosixPath(name.replace("\\", "/"))
        if pure.is_absolute() or ".." in pure.parts or "\x00" in name:
            raise MilsilError(
                f"config.tiff_path {name!r} must be a relative path without '..' "
                "(it is written under the server's output root)"
            )
        if pure.suffix.lower() not in TIFF_SUFFIXES:
            raise MilsilError(f"config.tiff_path {name!r} must end in .tif or .tiff")
        target = (self.output_root / pure).resolve()
        if self.output_root not in target.parents:
            raise MilsilError(f"config.tiff_path {name!r} leads outside the server's output root")
        if target.is_dir():
            raise MilsilError(f"config.tiff_path {name!r} is a folder on the server")
        return target, target.relative_to(self.output_root).as_posix()

    def _slide_job(self, config: inference_service_pb2.SlideConfig) -> _SlideJob:
        stride = config.stride or SLIDE_STRIDE
        if not 1 <= stride <= self.limits.max_stride:
            raise MilsilError(
                f"config.stride must be 1-{self.limits.max_stride} (0 = {SLIDE_STRIDE}), got {config.stride}"
            )
        downsample = config.downsample or 1.0
        if not math.isfinite(downsample) or downsample < 1.0:
            raise MilsilError(
                f"config.downsample must be a number >= 1 (0 = 1, level 0), got {config.downsample}"
            )
        tile = config.tile_size or SLIDE_TILE
        if not stride <= tile <= self.limits.max_tile_side:
            raise MilsilError(
                f"config.tile_size must be {stride}-{self.limits.max_tile_side} "
                f"(at least the stride; 0 = {SLIDE_TILE}), got {config.tile_size}"
            )
        tile = tile // stride * stride
        tissue_only = config.tissue_only if config.HasField("tissue_only") else True
        ident, model = self._model(config.model, "config.model")
        inference.halo_for(model)  # FAILED_PRECONDITION for models without a receptive field
        try:
            class_index = target_class_index(model.class_names, config.class_name or None)
        except MilsilError as exc:
            raise MilsilError(f"config.class_name: {exc}") from None
        path, in_root = self._resolve_slide(config.path)
        tiff, tiff_rel = self._tiff_target(
            config, f"{in_root.as_posix()}.{ident}.s{stride}-ds{downsample:g}.tif"
        )
        st = path.stat()
        key = {
            "slide": str(path),
            "bytes": st.st_size,
            "mtime_ns": st.st_mtime_ns,
            "model": ident,
            "model_sha256": self.store.get_model(ident).get("sha256", ""),
            "stride": stride,
            "downsample": downsample,
            "tile": tile,
            "tissue_only": tissue_only,
        }
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
        return _SlideJob(
            model_id=ident,
            model=model,
            path=path,
            request_path=config.path,
            stride=stride,
            downsample=downsample,
            tile=tile,
            tissue_only=tissue_only,
            class_index=class_index,
            tiff=tiff,
            tiff_rel=tiff_rel,
            work_dir=self.store.root / "slide-work" / digest,
        )

    @contextmanager
    def _work_lock(self, job: _SlideJob, is_active: Callable[[], bool]) -> Iterator[None]:
        """One request at a time per work folder; a second waits (e.g. a retry after a timeout)."""
        with self._work_locks_lock:
            lock = self._work_locks.setdefault(job.work_dir.name, threading.Lock())
        while not lock.acquire(timeout=0.2):
            if not is_active():
                raise Cancelled("request cancelled while another request computed the same slide")
        try:
            yield
        finally:
            lock.release()

    @staticmethod
    def _progress(
        p: slides.SlideProgress | None, started: float, stage: str = ""
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

    def _in_background(
        self,
        fn: Callable[..., Any],
        context,
        started: float,
        computed: list[int],
        wrap: Callable[[inference_service_pb2.SlideProgress], Any],
    ) -> Generator[Any, None, Any]:
        """Run ``fn(progress, should_stop)`` in a thread; yield ``wrap(progress)``; return its result.

        The thread is always joined (it stops at the next tile once the client is gone), so
        the work folder and the compute slot are released only when nothing writes to them.
        """
        events: queue.Queue = queue.Queue()
        stop = threading.Event()

        def should_stop() -> bool:
            return stop.is_set() or not context.is_active()

        def progress(p: slides.SlideProgress) -> None:
            if p.stage == "heatmap":
                computed[0] += 1
            events.put(("progress", p))

        def target() -> None:
            try:
                events.put(("done", fn(progress, should_stop)))
            except BaseException as exc:  # noqa: BLE001 - re-raised in the RPC thread
                events.put(("error", exc))

        worker = threading.Thread(target=target, name="milsil-slide", daemon=True)
        worker.start()
        try:
            while True:
                kind, value = events.get()
                if kind == "progress":
                    yield wrap(self._progress(value, started))
                elif kind == "error":
                    raise value
                else:
                    return value
        finally:
            stop.set()
            worker.join()

    def _summary(
        self, job: _SlideJob, tiles_total: int, tiles_resumed: int, megapixels: float, timings
    ) -> inference_service_pb2.SlideSummary:
        return inference_service_pb2.SlideSummary(
            model=f"models/{job.model_id}",
            path=job.request_path,
            class_name=job.model.class_names[job.class_index],
            tiles_total=tiles_total,
            tiles_resumed=max(tiles_resumed, 0),
            tissue_megapixels=megapixels,
            stride=job.stride,
            downsample=job.downsample,
            tiff_path=job.tiff_rel,
            timings={k: float(v) for k, v in timings.items()},
        )

    def AnnotateSlide(self, request, context):
        if not request.HasField("config"):
            raise MilsilError("config is required (model, path, stride, ...)")
        job = self._slide_job(request.config)
        threshold = request.threshold if request.HasField("threshold") else 0.5
        if not (math.isfinite(threshold) and 0.0 <= threshold <= 1.0):
            raise MilsilError(f"threshold must be a probability in [0, 1], got {threshold}")
        for name in ("min_area", "simplify_tolerance"):
            value = getattr(request, name)
            if not math.isfinite(value) or value < 0:
                raise MilsilError(
                    f"{name} must be a finite number >= 0 (level-0 pixels), got {value}"
                )
        slides.open_slide(job.path).close()  # corrupt or unsupported: one line, before queueing
        Response = inference_service_pb2.AnnotateSlideResponse
        started = time.perf_counter()
        yield Response(progress=self._progress(None, started, "queued"))
        computed = [0]

        def run(progress, should_stop) -> slides.AnnotateResult:
            return slides.annotate_slide(
                job.path,
                job.model,
                None,
                stride=job.stride,
                downsample=job.downsample,
                tiff=job.tiff,
                threshold=threshold,
                class_name=job.model.class_names[job.class_index],
                work_dir=job.work_dir,
                tile=job.tile,
                tissue_only=job.tissue_only,
                min_area=request.min_area,
                simplify_tolerance=request.simplify_tolerance,
                device=self.cache.device,
                progress=progress,
                should_stop=should_stop,
                keep_work=True,  # removed below, once the result fits in a message
            )

        with self._work_lock(job, context.is_active), self.slots.acquire(context.is_active):
            started = time.perf_counter()
            stage = "tissue" if job.tissue_only else "heatmap"
            yield Response(progress=self._progress(None, started, stage))
            result = yield from self._in_background(
                run, context, started, computed, lambda m: Response(progress=m)
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
        summary = self._summary(
            job,
            result.tiles_total,
            result.tiles_computed - computed[0],
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
        if request.value_type not in VALUE_DTYPES:
            raise MilsilError(
                f"value_type {request.value_type} is unknown; allowed: FLOAT16, FLOAT32"
            )
        dtype = VALUE_DTYPES[request.value_type]
        value_type = request.value_type or common_pb2.VALUE_TYPE_FLOAT32
        block = request.block_size or SLIDE_BLOCK
        classes = job.model.class_names
        per_sample = (
            len(classes) * np.dtype(dtype).itemsize * (2 if request.include_probabilities else 1)
        )
        largest = max(1, math.isqrt(max(self.max_message_bytes - 65536, 0) // per_sample))
        if not 1 <= block <= min(4096, largest):
            raise MilsilError(
                f"block_size must be 1-{min(4096, largest)} samples (0 = {SLIDE_BLOCK}; a block "
                f"must fit in one message), got {request.block_size}"
            )
        Response = inference_service_pb2.SlideHeatmapResponse
        started = time.perf_counter()
        with slides.open_slide(job.path) as slide:
            yield Response(progress=self._progress(None, started, "queued"))
            computed = [0]
            timings = slides.Timings()

            def run(progress, should_stop):
                return slides.slide_heatmap(
                    job.model,
                    slide,
                    job.work_dir,
                    stride=job.stride,
                    downsample=job.downsample,
                    tile=job.tile,
                    tissue_only=job.tissue_only,
                    device=self.cache.device,
                    progress=progress,
                    should_stop=should_stop,
                    timings=timings,
                )

            with self._work_lock(job, context.is_active):
                with self.slots.acquire(context.is_active):
                    started = time.perf_counter()
                    stage = "tissue" if job.tissue_only else "heatmap"
                    yield Response(progress=self._progress(None, started, stage))
                    heat, stopped = yield from self._in_background(
                        run, context, started, computed, lambda m: Response(progress=m)
                    )
                if stopped:
                    raise Cancelled(
                        f"request cancelled or deadline exceeded after {len(heat.done)} of "
                        f"{heat.tiles_total} tiles; call again with the same settings to resume"
                    )
                yield Response(
                    header=inference_service_pb2.HeatmapHeader(
                        model=f"models/{job.model_id}",
                        class_names=classes,
                        rows=heat.rows,
                        cols=heat.cols,
                        stride=heat.stride,
                        step=heat.stride * heat.downsample,
                        origin_x=0.5 * heat.downsample,
                        origin_y=0.5 * heat.downsample,
                        value_type=value_type,
                        receptive_field=int(job.model.receptive_field),
                    )
                )
                if not request.omit_values:
                    yield Response(progress=self._progress(None, started, "values"))
                    yield from self._blocks(
                        heat, block, dtype, request.include_probabilities, context
                    )
                if job.tiff is not None:
                    yield Response(progress=self._progress(None, started, "tiff"))
                    t0 = time.perf_counter()
                    slides.write_probability_tiff(heat, job.tiff, job.class_index)
                    timings.tiff = time.perf_counter() - t0
                summary = self._summary(
                    job,
                    heat.tiles_total,
                    len(heat.done) - computed[0],
                    slides._computed_megapixels(heat),
                    vars(timings),
                )
                del heat  # the memory map, before its folder goes
                shutil.rmtree(job.work_dir, ignore_errors=True)
        yield Response(result=summary)

    @staticmethod
    def _blocks(heat, block: int, dtype: str, probabilities: bool, context):
        """The computed part of the map as HeatmapTile blocks (NaN where not computed)."""
        n = 0
        for r0 in range(0, heat.rows, block):
            for c0 in range(0, heat.cols, block):
                if not context.is_active():
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
                yield inference_service_pb2.SlideHeatmapResponse(tile=tile)
                n += 1


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
