"""milsil.v1.ModelService: list, get, delete, export and import checkpoints in the store.

Servicers never call ``context.abort``: they raise (MilsilError, NotFoundError,
:mod:`milsil_server.errors`), and the interceptor in :mod:`milsil_server.app` turns that
into a status. A model row becomes a ``Model`` message here (:func:`model_message`).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from google.protobuf import empty_pb2

from milsil.errors import MilsilError
from milsil.inference.precision import EXPECTED_MAX_LOGIT_DEVIATION
from milsil.models import target_class_index
from milsil.v1 import model_service_pb2, model_service_pb2_grpc

from .errors import Cancelled, ResourceExhausted
from .messages import context_pixels, page_token, timestamp
from .resources import ModelCache
from .store import Store, new_id, parse_name, parse_page


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(
        self,
        store: Store,
        cache: ModelCache,
        max_message_bytes: int,
        max_model_bytes: int,
        precision: str = "exact",
    ) -> None:
        self.store, self.cache = store, cache
        self.max_message_bytes, self.max_model_bytes = max_message_bytes, max_model_bytes
        self.precision = precision  # the server's heatmap mode, said with every model

    def message(self, row: dict[str, Any]) -> model_service_pb2.Model:
        return model_message(row, self.precision)

    def ListModels(self, request, context):
        limit, offset = parse_page(request.page_size, request.page_token)
        rows, more = self.store.list_models(limit, offset)
        return model_service_pb2.ListModelsResponse(
            models=[self.message(r) for r in rows],
            next_page_token=page_token(offset, limit, more),
        )

    def GetModel(self, request, context):
        return self.message(self.store.get_model(parse_name(request.name, "models")))

    def DeleteModel(self, request, context):
        ident = parse_name(request.name, "models")
        self.store.delete_model(ident)
        self.cache.evict(ident)
        return empty_pb2.Empty()

    def ExportModel(self, request, context):
        ident = parse_name(request.name, "models")
        size = export_chunk_size(request.chunk_size, self.max_message_bytes)
        model = self.message(self.store.get_model(ident))
        for n, (offset, chunk) in enumerate(self.store.iter_model_file(ident, size)):
            if not context.is_active():
                raise Cancelled("export cancelled by the client")
            yield model_service_pb2.ExportModelResponse(
                model=model if n == 0 else None, chunk_data=chunk, offset=offset
            )

    def ImportModel(self, request_iterator, context):
        fd, tmp = tempfile.mkstemp(prefix="import-", suffix=".pt", dir=self.store.root / "tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                first = _receive(request_iterator, fh, self.max_model_bytes)
            if first is None:
                raise MilsilError("chunk_data is empty: stream the checkpoint file's bytes")
            ident = first.model_id or new_id("model-")
            parse_name(ident, "models", "model_id")
            row = self.store.register_model(
                Path(tmp),
                ident,
                display_name=first.display_name or "",
                move=True,
                label="the uploaded checkpoint (chunk_data)",
            )
            return self.message(row)
        finally:
            Path(tmp).unlink(missing_ok=True)


def _receive(requests: Iterable[Any], fh: Any, max_bytes: int) -> Any:
    """Write the streamed ``chunk_data`` to ``fh`` (synced); the first request, or None if no bytes."""
    first = None
    total = 0
    for request in requests:
        if first is None:
            first = request
        total += len(request.chunk_data)
        if total > max_bytes:
            raise ResourceExhausted(f"checkpoint exceeds the server limit of {max_bytes} bytes")
        fh.write(request.chunk_data)
    fh.flush()
    os.fsync(fh.fileno())  # on disk before the store points at it
    return first if total else None


def model_message(row: dict[str, Any], precision: str = "exact") -> model_service_pb2.Model:
    """A registered model's message; ``precision``: the server's heatmap mode
    (:data:`milsil.inference.precision.MODES`)."""
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
        create_time=timestamp(row["create_time"]),
        familiarity_method=row.get("familiarity_method", ""),
        familiarity_threshold=row.get("familiarity_threshold", 0.0),
        stain_normalization=row.get("stain_normalization", ""),
        heatmap_precision=precision,
        expected_max_logit_deviation=EXPECTED_MAX_LOGIT_DEVIATION[precision],
    )


def export_chunk_size(chunk_size: int, max_message_bytes: int) -> int:
    size = chunk_size or (1 << 20)
    if not 0 < size <= max_message_bytes - 1024:
        raise MilsilError(
            f"chunk_size must be 1-{max_message_bytes - 1024} bytes (0 = 1 MiB), got {size}"
        )
    return size
