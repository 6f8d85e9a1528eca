"""Inference without gRPC: tile checks and decoding, the model cache, bag classification.

The servicer hands over plain values; everything here raises :class:`MilsilError` (bad
input, -> INVALID_ARGUMENT) or a :mod:`milsil_server.errors` exception with its own status.
Long computations call ``is_active()`` between pieces, so a cancelled or timed-out request
stops computing within about a second. Streamed regions: :mod:`milsil_server.regions`.
"""

from __future__ import annotations

import io
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from milsil.data.images import to_tensor
from milsil.errors import MilsilError
from milsil.inference.tiling import context_pixels
from milsil_server.errors import Cancelled, FailedPrecondition
from milsil_server.slots import ComputeSlots  # noqa: F401 - re-exported

ENCODINGS = ("RAW_RGB8", "PNG", "JPEG")
BAND_TARGET_SECONDS = 1.0  # most compute between two cancellation checks


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


# --------------------------------------------------------------------------- tiles


def decode_tile(
    encoding: str, data: bytes, width: int, height: int, where: str, limits: Limits
) -> np.ndarray:
    """Decode one tile to uint8 ``H x W x 3``, checking its declared size.

    ``where`` names the tile in messages (e.g. ``tiles[3]``). The cheap checks
    (:func:`check_tile`) come first; a PNG's or JPEG's own header must agree with the
    declared size before any pixel is decoded.
    """
    check_tile(encoding, data, width, height, where, limits)
    if encoding == "RAW_RGB8":
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


def check_tile(
    encoding: str, data: bytes, width: int, height: int, where: str, limits: Limits
) -> None:
    """A tile's encoding, declared size and byte count, checked without decoding it."""
    if encoding not in ENCODINGS:
        raise MilsilError(f"{where}.encoding must be one of {', '.join(ENCODINGS)}, got {encoding}")
    if not (0 < width <= limits.max_tile_side and 0 < height <= limits.max_tile_side):
        raise MilsilError(
            f"{where}.width and .height must be 1-{limits.max_tile_side}, got {width}x{height}"
        )
    if not data:
        raise MilsilError(f"{where}.data is empty")
    if encoding == "RAW_RGB8" and len(data) != width * height * 3:
        raise MilsilError(
            f"{where}.data has {len(data)} bytes; RAW_RGB8 {width}x{height} needs "
            f"width*height*3 = {width * height * 3}"
        )


# --------------------------------------------------------------------------- models


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


# --------------------------------------------------------------------------- regions


def halo_for(model: torch.nn.Module) -> int:
    """The context a region needs (the tiled engine's rule); FAILED_PRECONDITION without one."""
    try:
        return context_pixels(model)
    except MilsilError as exc:
        raise FailedPrecondition(str(exc)) from None


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
