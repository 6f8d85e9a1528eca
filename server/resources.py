"""What every inference RPC shares: request limits, the model cache, compute slots, the
memory budget and the path rules, held by one :class:`Resources` object.

The servicer (:mod:`.inference_service`) owns one; each RPC family (:mod:`.bags`,
:mod:`.regions`, :mod:`.objects`, :mod:`.slides`) takes it and asks it for a model
(:meth:`Resources.model`), a compute slot, memory, or a path inside a root.

A server may compute on several devices (``milsil serve --devices``, :func:`parse_devices`):
each compute slot belongs to one, and a call computes on its slot's device with the copy
of the model the cache keeps there (:meth:`Resources.on_device`). Host memory is one
budget (``--max-memory``); a device's own memory is bounded per device, since one band at
a time computes on it, in chunks sized to the device's activation budget
(:data:`milsil.inference.heatmap.TILE_ACTIVATION_BUDGET`).
"""

from __future__ import annotations

import copy
import threading
import weakref
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


def parse_devices(text: str | None, gpus: int | None = None) -> list[torch.device]:
    """The devices of ``milsil serve --devices`` (comma-separated), one compute slot each.

    None or empty: every visible GPU (``cuda:0`` ... ``cuda:N-1``), or ``cpu`` when there is
    none. ``cpu`` may repeat (each is one more slot on the CPU, which the tests use to have
    two devices on a machine without GPUs); a GPU may be named once (more slots on one GPU:
    ``--compute-slots``); ``cuda`` is ``cuda:0``. CPU and GPUs are not mixed (a band's
    sizes are chosen for one kind of device). ``gpus``: visible GPUs (default: CUDA's count).
    """
    count = torch.cuda.device_count() if gpus is None else gpus
    allowed = ", ".join(["cpu", *(f"cuda:{i}" for i in range(count))])
    if not text or not text.strip():
        return [torch.device(f"cuda:{i}") for i in range(count)] or [torch.device("cpu")]
    devices: list[torch.device] = []
    for item in text.split(","):
        name = item.strip().lower()
        index = name.removeprefix("cuda:") if name.startswith("cuda:") else None
        if name == "cpu":
            device = torch.device("cpu")
        elif name == "cuda" and count:
            device = torch.device("cuda:0")
        elif index is not None and index.isdigit() and int(index) < count:
            device = torch.device(f"cuda:{int(index)}")
        else:
            where = f"{count} GPU(s) visible" if count else "no GPU visible"
            raise MilsilError(
                f"--devices {text!r}: {item.strip()!r} is not a device here ({where}); "
                f"allowed, comma-separated: {allowed}"
            )
        if device.type == "cuda" and device in devices:
            raise MilsilError(
                f"--devices {text!r}: {device} is named twice; a GPU has one compute slot "
                "(more per device: --compute-slots)"
            )
        devices.append(device)
    if len({d.type for d in devices}) > 1:
        raise MilsilError(
            f"--devices {text!r} mixes the CPU and GPUs; name GPUs only, or cpu only "
            f"(allowed: {allowed})"
        )
    return devices


class ModelCache:
    """Loaded models by id and device, least recently used evicted (``capacity`` models per
    device); loads are serialized per cache. :meth:`get` loads on ``device`` (the first of
    the server's devices); :meth:`on` gives a model's copy on another device, loaded there
    from the same file on first use, so each device computes with a copy of its own."""

    def __init__(
        self,
        path_of: Callable[[str], object],
        capacity: int = 4,
        device: torch.device | None = None,
    ):
        self._path_of = path_of
        self._capacity = capacity
        self._models: OrderedDict[tuple[str, str], torch.nn.Module] = OrderedDict()
        # The id of every model this cache loaded (for :meth:`on`), forgotten with the model.
        self._ids: weakref.WeakKeyDictionary[torch.nn.Module, str] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()
        self.device = device or default_device()

    def get(self, model_id: str, device: torch.device | None = None) -> torch.nn.Module:
        """Model ``model_id`` on ``device`` (default: the cache's device)."""
        from milsil.models import load_checkpoint

        device = torch.device(device or self.device)
        key = (model_id, str(device))
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
            path = self._path_of(model_id)  # NotFoundError for unknown ids
            model = load_checkpoint(  # weights_only inside; messages name the resource
                path, map_location=device, label=f"models/{model_id}"
            )
            self._models[key] = model
            self._ids[model] = model_id
            on_device = [k for k in self._models if k[1] == key[1]]
            for old in on_device[: max(0, len(on_device) - self._capacity)]:
                del self._models[old]
            return model

    def on(self, model: torch.nn.Module, device: torch.device | None) -> torch.nn.Module:
        """``model`` (one this cache loaded) on ``device``: itself when it is there (or
        ``device`` is None), else the cache's copy there. A model the cache did not load
        is copied (uncached) rather than moved, so its caller's copy stays where it is."""
        if device is None:
            return model
        device = torch.device(device)
        here = next(model.parameters()).device
        if here == device:
            return model
        with self._lock:
            model_id = self._ids.get(model)
        if model_id is None:
            return copy.deepcopy(model).to(device)
        return self.get(model_id, device)

    def evict(self, model_id: str) -> None:
        """Forget ``model_id`` on every device."""
        with self._lock:
            for key in [k for k in self._models if k[0] == model_id]:
                del self._models[key]


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
    # The mode of every heatmap (milsil.inference.precision.MODES: exact, tf32 or bf16).
    precision: str = "exact"

    @property
    def device(self) -> torch.device:
        """The first device: where models are loaded and checked before a call computes."""
        return self.cache.device

    def on_device(self, model: torch.nn.Module, device: Any) -> torch.nn.Module:
        """``model``'s copy on ``device`` (a compute slot's; None: the model as it is)."""
        return self.cache.on(model, device)

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
