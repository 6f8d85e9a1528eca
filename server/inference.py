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
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from milsil_server.errors import Cancelled, FailedPrecondition, ResourceExhausted

from milsil.errors import MilsilError

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


def normalize(pixels: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """uint8 ``[..., H, W, 3]`` -> float32 ``[..., 3, H, W]`` normalized with the model's mean/std."""
    pixels = np.ascontiguousarray(pixels)
    if not pixels.flags.writeable:  # frombuffer views of message bytes; torch wants writable
        pixels = pixels.copy()
    x = torch.from_numpy(pixels).float().div_(255.0)
    x = x.movedim(-1, -3)
    m = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return ((x - m) / s).contiguous()


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
    """A normalized float canvas of the region plus ``halo`` pixels of context on each side.

    Context no tile supplied is filled by :meth:`mirror_missing_context` with the
    mirror image, logit_heatmap's own border policy, so a region sent without context
    gives exactly ``logit_heatmap(region)``, and one sent with context gives the same
    numbers as the whole image would.
    """

    region: RegionSpec
    halo: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    canvas: torch.Tensor = field(init=False)
    covered: np.ndarray = field(init=False)
    supplied: np.ndarray = field(init=False)
    placements: list[TilePlacement] = field(default_factory=list)

    def __post_init__(self) -> None:
        h, w, p = self.region.height, self.region.width, self.halo
        self.canvas = torch.zeros(3, h + 2 * p, w + 2 * p, dtype=torch.float32)
        self.covered = np.zeros((h, w), dtype=bool)
        self.supplied = np.zeros((h + 2 * p, w + 2 * p), dtype=bool)

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
        p = self.halo
        # Intersect with the canvas (region + halo).
        cx0, cy0 = max(px, -p), max(py, -p)
        cx1, cy1 = min(px + tw, r.width + p), min(py + th, r.height + p)
        if cx0 >= cx1 or cy0 >= cy1:
            # Context beyond what the receptive field needs (a client may send a wider
            # margin): nothing to place. The coverage check still catches missing pixels.
            placement = TilePlacement(len(self.placements), 0, 0, 0, 0)
            self.placements.append(placement)
            return placement
        sub = pixels[cy0 - py : cy1 - py, cx0 - px : cx1 - px]
        self.canvas[:, cy0 + p : cy1 + p, cx0 + p : cx1 + p] = normalize(sub, self.mean, self.std)
        self.supplied[cy0 + p : cy1 + p, cx0 + p : cx1 + p] = True
        ix0, iy0 = max(px, 0), max(py, 0)
        ix1, iy1 = min(px + tw, r.width), min(py + th, r.height)
        if ix0 < ix1 and iy0 < iy1:
            self.covered[iy0:iy1, ix0:ix1] = True
        placement = TilePlacement(len(self.placements), ix0, iy0, max(ix0, ix1), max(iy0, iy1))
        self.placements.append(placement)
        return placement

    def mirror_missing_context(self) -> None:
        """Fill each side's context that no tile supplied with the mirror image.

        On each side, the context rows/columns supplied all along the region count as
        real; beyond them the image (region plus real context) is reflected, exactly as
        ``logit_heatmap`` pads an image it is given without margin.
        """
        p, h, w = self.halo, self.region.height, self.region.width
        s = self.supplied

        def depth(lines: Iterator[np.ndarray]) -> int:
            d = 0
            for line in lines:
                if not line.all():
                    break
                d += 1
            return d

        top = depth(s[p - 1 - k, p : p + w] for k in range(p))
        bottom = depth(s[p + h + k, p : p + w] for k in range(p))
        left = depth(s[p : p + h, p - 1 - k] for k in range(p))
        right = depth(s[p : p + h, p + w + k] for k in range(p))
        if not s[p - top : p + h + bottom, p - left : p + w + right].all():
            # Sides with context but a corner without: mirror everything from the region.
            top = bottom = left = right = 0
        if min(top, bottom, left, right) == p:
            return
        core = self.canvas[:, p - top : p + h + bottom, p - left : p + w + right]
        if min(core.shape[1:]) <= p:
            raise MilsilError(
                f"the region is {w}x{h} px with {min(top, bottom, left, right)} px of context on "
                f"its narrowest side; a heatmap needs at least {2 * p + 1}x{2 * p + 1} pixels "
                "(the receptive field): send a larger region or context around it"
            )
        pads = (p - left, p - right, p - top, p - bottom)
        self.canvas = torch.nn.functional.pad(core[None], pads, mode="reflect")[0].contiguous()

    def check_covered(self) -> None:
        if not self.placements:
            raise MilsilError("no tiles were sent; send tiles covering the region")
        if not self.covered.all():
            missing = np.argwhere(~self.covered)
            y, x = missing[0]
            r = self.region
            raise MilsilError(
                f"the tiles cover {int(self.covered.sum())} of {self.covered.size} region pixels; "
                f"e.g. level-0 ({r.x + x * r.downsample:g}, {r.y + y * r.downsample:g}) is missing: "
                "tiles must cover every pixel of the region"
            )


def _default_band_rows(
    model: torch.nn.Module, stride: int, device: torch.device | None = None
) -> int:
    """logit_heatmap's own tile side for this stride (bands of it cost no extra work)."""
    from milsil.inference.heatmap import default_tile

    base = math.gcd(stride, 8)
    return default_tile(model, base, stride // base, device or next(model.parameters()).device)


def banded_heatmap(
    model: torch.nn.Module,
    canvas: RegionCanvas,
    stride: int,
    is_active: Callable[[], bool],
    device: torch.device | None = None,
) -> Iterator[tuple[int, torch.Tensor]]:
    """Compute ``logit_heatmap`` of the canvas interior chunk by chunk.

    Yields ``(rows_done, result)`` after each band of rows; ``result`` is the full
    ``[C, rows, cols]`` tensor, filled up to ``rows_done``. Each square chunk carries
    ``halo`` pixels of real canvas context, so chunks join without seams. ``is_active`` is
    checked between chunks. The side starts at logit_heatmap's own tile (so the work equals
    one in-process call; on CPUs that tile is cache-sized and takes well under a second),
    halves when a chunk takes longer than :data:`BAND_TARGET_SECONDS` and grows back while
    chunks take under a quarter of it, so a cancelled or timed-out request stops within
    about a second on any device.
    """
    from milsil.inference.heatmap import logit_heatmap

    r, p = canvas.region, canvas.halo
    rows, cols = -(-r.height // stride), -(-r.width // stride)
    result = torch.empty(model.config.num_classes, rows, cols, dtype=torch.float32)
    tile = max(1, _default_band_rows(model, stride, device))
    # Start at logit_heatmap's own tile (cache-sized on CPUs): smaller chunks would repeat
    # halo work the in-process call does not; a slow device halves it below.
    side = tile
    done = 0
    while done < rows:
        n = min(side, rows - done)
        y0, y1 = done * stride, min((done + n) * stride, r.height)
        c0 = 0
        while c0 < cols:
            if not is_active():
                raise Cancelled(
                    "request cancelled or deadline exceeded; heatmap computation stopped"
                )
            m = min(side, cols - c0)
            x0, x1 = c0 * stride, min((c0 + m) * stride, r.width)
            crop = canvas.canvas[:, y0 : y1 + 2 * p, x0 : x1 + 2 * p]
            started = time.perf_counter()
            out = logit_heatmap(model, crop, stride=stride, margin=p, tile=max(n, m), device=device)
            result[:, done : done + n, c0 : c0 + m] = out[:, :n, :m]
            c0 += m
            elapsed = time.perf_counter() - started
            if elapsed > BAND_TARGET_SECONDS and side > 8:
                side //= 2  # slow device: smaller chunks (the current band keeps its height)
            elif elapsed < BAND_TARGET_SECONDS / 4 and side * 2 <= tile:
                side *= 2  # fast: grow towards logit_heatmap's own tile (fewer halo overlaps)
        done += n
        yield done, result


def halo_for(model: torch.nn.Module) -> int:
    rf = getattr(model, "receptive_field", None)
    if not rf:
        raise FailedPrecondition(
            f"model architecture {model.config.arch} has no bounded receptive field; logit heatmaps "
            "need a BagNet model (bagnet9, bagnet17, bagnet33)"
        )
    return int(rf) // 2


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
                x = normalize(np.stack(tiles[k : k + chunk]), mean, std).to(device)
                feats.append(model.patch_features(x).float())
            f = torch.cat(feats)
            sil = model.fc(f).float().cpu()
            mil = model.fc(f.mean(dim=0, keepdim=True))[0].float().cpu()
        else:
            x = normalize(np.stack(tiles), mean, std).to(device)
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
