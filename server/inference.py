"""Inference without gRPC: tile decoding, region assembly, banded heatmaps, bag classification.

The servicer hands over plain values; everything here raises :class:`MilsilError` (bad
input, -> INVALID_ARGUMENT) or a :mod:`milsil_server.errors` exception with its own status.
Long computations run in bands and call ``is_active()`` between bands, so a cancelled
or timed-out request stops computing within about a second.
"""

from __future__ import annotations

import io
import math
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch

from milsil.data.images import to_tensor
from milsil.errors import MilsilError
from milsil.inference.heatmap import iter_logit_bands
from milsil.inference.tiling import ContextCanvas, context_pixels
from milsil_server.errors import Cancelled, FailedPrecondition, ResourceExhausted

ENCODINGS = ("RAW_RGB8", "PNG", "JPEG")
BAND_TARGET_SECONDS = 1.0  # most compute between two cancellation checks


@dataclass
class Limits:
    """Request size limits (pixels); larger requests are refused, never queued."""

    max_tile_side: int = 8192
    max_region_pixels: int = 1 << 25  # ~33.5 MP: 400 MB of float32 canvas
    max_bag_tiles: int = 4096
    max_bag_pixels: int = 1 << 26
    max_stride: int = 64


def default_device() -> torch.device:
    """CUDA when present, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# --------------------------------------------------------------------------- tiles


def decode_tile(
    encoding: str, data: bytes, width: int, height: int, where: str, limits: Limits
) -> np.ndarray:
    """Decode one tile to uint8 ``H x W x 3``, checking its declared size.

    ``where`` names the tile in messages (e.g. ``tiles[3]``).
    """
    if encoding not in ENCODINGS:
        raise MilsilError(f"{where}.encoding must be one of {', '.join(ENCODINGS)}, got {encoding}")
    if not (0 < width <= limits.max_tile_side and 0 < height <= limits.max_tile_side):
        raise MilsilError(
            f"{where}.width and .height must be 1-{limits.max_tile_side}, got {width}x{height}"
        )
    if not data:
        raise MilsilError(f"{where}.data is empty")
    if encoding == "RAW_RGB8":
        expected = width * height * 3
        if len(data) != expected:
            raise MilsilError(
                f"{where}.data has {len(data)} bytes; RAW_RGB8 {width}x{height} needs width*height*3 = {expected}"
            )
        return np.frombuffer(data, dtype=np.uint8).reshape(height, width, 3)
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            if img.format != encoding:
                raise MilsilError(
                    f"{where}.data is {img.format or 'not an image'} but encoding says {encoding}"
                )
            if img.size != (width, height):
                raise MilsilError(
                    f"{where} declares {width}x{height} but its {encoding} image is {img.size[0]}x{img.size[1]}"
                )
            img.load()
            pixels = np.asarray(img.convert("RGB"), dtype=np.uint8)
    except MilsilError:
        raise
    except Exception as exc:  # PIL raises many types for corrupt/truncated files
        raise MilsilError(
            f"{where}.data is not a decodable {encoding} image ({type(exc).__name__}: {str(exc)[:120]})"
        ) from None
    return pixels


# --------------------------------------------------------------------------- concurrency


class ComputeSlots:
    """At most ``slots`` computations at once and at most ``max_waiting`` waiting for one.

    A request beyond that gets RESOURCE_EXHAUSTED at once (no unbounded queue); a waiting
    request whose client went away leaves the queue.
    """

    def __init__(self, slots: int = 1, max_waiting: int = 8) -> None:
        self._sem = threading.Semaphore(max(1, slots))
        self._lock = threading.Lock()
        self._waiting = 0
        self.max_waiting = max_waiting

    @contextmanager
    def acquire(self, is_active: Callable[[], bool]) -> Iterator[None]:
        with self._lock:
            if self._waiting >= self.max_waiting:
                raise ResourceExhausted(
                    f"server busy: {self._waiting} requests already wait for compute; retry later"
                )
            self._waiting += 1
        try:
            while not self._sem.acquire(timeout=0.2):
                if not is_active():
                    raise Cancelled("request cancelled while waiting for compute")
        finally:
            with self._lock:
                self._waiting -= 1
        try:
            yield
        finally:
            self._sem.release()


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
            model = load_checkpoint(path, map_location=self.device)  # weights_only inside
            self._models[model_id] = model
            while len(self._models) > self._capacity:
                self._models.popitem(last=False)
            return model

    def evict(self, model_id: str) -> None:
        with self._lock:
            self._models.pop(model_id, None)


# --------------------------------------------------------------------------- regions


@dataclass
class RegionSpec:
    """A validated region: level-0 origin, downsample, and its size in region pixels."""

    x: float
    y: float
    downsample: float
    width: int
    height: int

    @classmethod
    def parse(
        cls, x: float, y: float, width: float, height: float, downsample: float, limits: Limits
    ) -> RegionSpec:
        values = {
            "region.x": x,
            "region.y": y,
            "region.width": width,
            "region.height": height,
            "region.downsample": downsample,
        }
        for name, value in values.items():
            if not math.isfinite(value):
                raise MilsilError(f"{name} must be a finite number, got {value}")
        if x < 0 or y < 0:
            raise MilsilError(
                f"region.x and region.y must be >= 0 (level-0 pixels), got ({x}, {y})"
            )
        ds = downsample or 1.0
        if not 0 < ds <= 4096:
            raise MilsilError(f"region.downsample must be in (0, 4096] (0 = 1), got {downsample}")
        if width <= 0 or height <= 0:
            raise MilsilError(f"region.width and region.height must be > 0, got {width}x{height}")
        w, h = round(width / ds), round(height / ds)
        if w < 1 or h < 1:
            raise MilsilError(
                f"region is {w}x{h} pixels at downsample {ds}; it must be at least 1x1"
            )
        if w * h > limits.max_region_pixels:
            raise ResourceExhausted(
                f"region is {w}x{h} = {w * h} pixels at downsample {ds}; this server allows at most "
                f"{limits.max_region_pixels} per request: split it or raise --max-region-pixels"
            )
        return cls(float(x), float(y), float(ds), int(w), int(h))


@dataclass
class TilePlacement:
    """Where a received tile sits in region pixels (its interior part, for the output)."""

    index: int
    x0: int
    y0: int
    x1: int
    y1: int


@dataclass
class RegionCanvas:
    """The region a client streams, as a :class:`milsil.inference.tiling.ContextCanvas`.

    This class only checks each tile against the region (finite numbers, the region's
    downsample) and normalizes its pixels; placing, mirroring missing context and the
    coverage rule are the tiled engine's.
    """

    region: RegionSpec
    halo: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    placements: list[TilePlacement] = field(default_factory=list)
    context: ContextCanvas = field(init=False)

    def __post_init__(self) -> None:
        self.context = ContextCanvas(self.region.width, self.region.height, self.halo)

    @property
    def canvas(self) -> torch.Tensor:
        return self.context.canvas

    def add(
        self, pixels: np.ndarray, x: float, y: float, downsample: float, where: str
    ) -> TilePlacement:
        r = self.region
        for name, value in (("x", x), ("y", y), ("downsample", downsample)):
            if not math.isfinite(value):
                raise MilsilError(f"{where}.{name} must be a finite number, got {value}")
        if x < 0 or y < 0:
            raise MilsilError(f"{where}.x and .y must be >= 0 (level-0 pixels), got ({x}, {y})")
        ds = downsample or 1.0
        if abs(ds - r.downsample) > 1e-6 * r.downsample:
            raise MilsilError(
                f"{where}.downsample is {ds}; it must equal region.downsample {r.downsample}"
            )
        px, py = round((x - r.x) / ds), round((y - r.y) / ds)  # region pixels
        th, tw = pixels.shape[:2]
        box = self.context.clip(px, py, tw, th)
        if box is None:
            # Context beyond what the receptive field needs (a client may send a wider
            # margin): nothing to place. The coverage check still catches missing pixels.
            placement = TilePlacement(len(self.placements), 0, 0, 0, 0)
        else:
            x0, y0, x1, y1 = box
            sub = pixels[y0 - py : y1 - py, x0 - px : x1 - px]
            interior = self.context.place(to_tensor(sub, self.mean, self.std), x0, y0)
            placement = TilePlacement(len(self.placements), *interior)
        self.placements.append(placement)
        return placement

    def mirror_missing_context(self) -> None:
        self.context.mirror_missing_context()

    def check_covered(self) -> None:
        covered = self.context.covered
        if not self.placements:
            raise MilsilError("no tiles were sent; send tiles covering the region")
        if not covered.all():
            missing = np.argwhere(~covered)
            y, x = missing[0]
            r = self.region
            raise MilsilError(
                f"the tiles cover {int(covered.sum())} of {covered.size} region pixels; "
                f"e.g. level-0 ({r.x + x * r.downsample:g}, {r.y + y * r.downsample:g}) is missing: "
                "tiles must cover every pixel of the region"
            )


def banded_heatmap(
    model: torch.nn.Module,
    canvas: RegionCanvas,
    stride: int,
    is_active: Callable[[], bool],
    device: torch.device | None = None,
) -> Iterator[tuple[int, torch.Tensor]]:
    """``logit_heatmap`` of the canvas interior, band by band (the tiled engine's bands).

    Yields ``(rows_done, result)``. Chunks start at logit_heatmap's own tile (so the work
    equals one in-process call) and halve on a device slow enough that a chunk takes over
    :data:`BAND_TARGET_SECONDS`, so a cancelled or timed-out request stops within about a
    second; ``is_active`` is checked before every chunk.
    """
    rows = -(-canvas.region.height // stride)
    done = 0
    for done, result in iter_logit_bands(
        model,
        canvas.canvas,
        stride=stride,
        margin=canvas.halo,
        device=device,
        target_seconds=BAND_TARGET_SECONDS,
        should_stop=lambda: not is_active(),
    ):
        yield done, result
    if done < rows:
        raise Cancelled("request cancelled or deadline exceeded; heatmap computation stopped")


def halo_for(model: torch.nn.Module) -> int:
    """The context a region needs (the tiled engine's rule); FAILED_PRECONDITION without one."""
    try:
        return context_pixels(model)
    except MilsilError as exc:
        raise FailedPrecondition(str(exc)) from None


def tile_samples(placement: TilePlacement, stride: int) -> tuple[int, int, int, int]:
    """Sample grid rows/cols ``(row0, row1, col0, col1)`` whose pixels lie in a tile."""
    return (
        -(-placement.y0 // stride),
        -(-placement.y1 // stride),
        -(-placement.x0 // stride),
        -(-placement.x1 // stride),
    )


# --------------------------------------------------------------------------- bags


def classify_bag(
    model: torch.nn.Module, tiles: list[np.ndarray], is_active: Callable[[], bool], chunk: int = 64
) -> dict[str, object]:
    """SIL (per tile) and MIL (bag) logits/probabilities of one bag of equally sized tiles."""
    if not tiles:
        raise MilsilError("no tiles were sent; a bag needs at least one tile")
    h, w = tiles[0].shape[:2]
    for i, t in enumerate(tiles):
        if t.shape[:2] != (h, w):
            raise MilsilError(
                f"tiles[{i}] is {t.shape[1]}x{t.shape[0]} but tiles[0] is {w}x{h}: all tiles of a bag "
                "must have the same size"
            )
    rf = getattr(model, "receptive_field", None)
    if rf and (h < rf or w < rf):
        raise MilsilError(
            f"tiles are {w}x{h}; {model.config.arch} needs tiles of at least {rf}x{rf}"
        )
    device = next(model.parameters()).device
    mean, std = model.normalization
    result: dict[str, object] = {"attention": []}
    with torch.inference_mode():
        if hasattr(model, "patch_features") and hasattr(model, "fc"):
            feats = []
            for k in range(0, len(tiles), chunk):
                if not is_active():
                    raise Cancelled(
                        "request cancelled or deadline exceeded; classification stopped"
                    )
                x = to_tensor(np.stack(tiles[k : k + chunk]), mean, std).to(device)
                feats.append(model.patch_features(x).float())
            f = torch.cat(feats)
            sil = model.fc(f).float().cpu()
            mil = model.fc(f.mean(dim=0, keepdim=True))[0].float().cpu()
        else:
            x = to_tensor(np.stack(tiles), mean, std).to(device)
            out = model(x.unsqueeze(0))
            sil = None if out.sil_logits is None else out.sil_logits[0].float().cpu()
            mil = out.mil_logits[0].float().cpu()
            if out.attention is not None:
                result["attention"] = out.attention[0].float().cpu().tolist()
    result["sil_logits"] = None if sil is None else sil.tolist()
    result["sil_probabilities"] = None if sil is None else torch.softmax(sil, dim=1).tolist()
    result["mil_logits"] = mil.tolist()
    result["mil_probabilities"] = torch.softmax(mil, dim=0).tolist()
    return result
