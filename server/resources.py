"""What every inference RPC shares: request limits, the model cache, compute slots, the
memory budget and the path rules, held by one :class:`Resources` object.

The servicer (:mod:`.inference_service`) owns one; each RPC family (:mod:`.bags`,
:mod:`.regions`, :mod:`.objects`, :mod:`.slides`) takes it and asks it for a model
(:meth:`Resources.model`), a compute slot, memory, or a path inside a root.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

from milsil.errors import MilsilError
from milsil.inference.tiling import context_pixels

from .errors import FailedPrecondition
from .inbox import Inbox
from .memory import MemoryBudget
from .paths import SlidePaths
from .runner import WorkLocks
from .slots import ComputeSlots
from .store import Store, parse_name


@dataclass
class Limits:
    """Request size limits (pixels); larger requests are refused, never queued."""

    max_tile_side: int = 8192
    # Largest image a region may span (width x height at its downsample): regions are
    # streamed in bands, so this bounds the image, not memory (that is --max-memory).
    max_region_pixels: int = 1 << 36  # ~68.7 G pixels, e.g. 262,144 x 262,144
    max_bag_tiles: int = 4096
    max_bag_pixels: int = 1 << 26
    max_stride: int = 64
    max_objects: int = 1_000_000  # per MeasureObjects call


def default_device() -> torch.device:
    """CUDA when present, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class ModelCache:
    """Loaded models by id, least recently used evicted; loads are serialized per cache."""

    def __init__(
        self,
        path_of: Callable[[str], object],
        capacity: int = 4,
        device: torch.device | None = None,
    ):
        self._path_of = path_of
        self._capacity = capacity
        self._models: OrderedDict[str, torch.nn.Module] = OrderedDict()
        self._lock = threading.Lock()
        self.device = device or default_device()

    def get(self, model_id: str) -> torch.nn.Module:
        from milsil.models import load_checkpoint

        with self._lock:
            if model_id in self._models:
                self._models.move_to_end(model_id)
                return self._models[model_id]
            path = self._path_of(model_id)  # NotFoundError for unknown ids
            model = load_checkpoint(  # weights_only inside; messages name the resource
                path, map_location=self.device, label=f"models/{model_id}"
            )
            self._models[model_id] = model
            while len(self._models) > self._capacity:
                self._models.popitem(last=False)
            return model

    def evict(self, model_id: str) -> None:
        with self._lock:
            self._models.pop(model_id, None)


def halo_for(model: torch.nn.Module) -> int:
    """The context a region needs (the tiled engine's rule); FAILED_PRECONDITION without one."""
    try:
        return context_pixels(model)
    except MilsilError as exc:
        raise FailedPrecondition(str(exc)) from None


@dataclass
class Resources:
    """One server's shared state for inference: the store and its model cache, the
    compute slots, the memory budget, the slide and output roots, the work-folder locks,
    and the size limits of a request and a message."""

    store: Store
    cache: ModelCache
    slots: ComputeSlots
    limits: Limits
    memory: MemoryBudget
    paths: SlidePaths
    max_message_bytes: int = 64 * 2**20
    max_tiles: int = 1_000_000  # per streamed region
    work_locks: WorkLocks = field(default_factory=WorkLocks)
    # Longest silence between a streamed call's messages (--stream-idle-timeout; 0: none).
    stream_idle_seconds: float = 30.0

    @property
    def device(self) -> torch.device:
        return self.cache.device

    def inbox(self, requests: Iterable[Any], context: Any) -> Inbox:
        """A streamed call's messages under the idle limit (use ``with``): the Inbox the
        server already made for the call (:mod:`.app`), or one of its own."""
        if isinstance(requests, Inbox):
            return requests
        return Inbox(requests, self.stream_idle_seconds, context.is_active)

    def model(self, name: str, field: str) -> tuple[str, torch.nn.Module]:
        """The model ``name`` (as sent in ``field``): its id and the loaded model;
        NOT_FOUND before any file is touched."""
        ident = parse_name(name, "models", field)
        self.store.get_model(ident)
        return ident, self.cache.get(ident)
