"""Streamed tiles as plain values: checked from their header, then decoded.

Every RPC that takes pixels (ClassifyBag, Heatmap, Annotate, MeasureObjects,
UploadDataset) decodes them here; :mod:`.messages` turns ``Tile`` messages into
:class:`TileData` and calls :func:`decode_tile`.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np

from milsil.errors import MilsilError

from .resources import Limits

ENCODINGS = ("RAW_RGB8", "PNG", "JPEG")


@dataclass(frozen=True)
class TileData:
    """One streamed tile as plain values (``encoding`` by name: RAW_RGB8, PNG, JPEG)."""

    encoding: str
    data: bytes
    width: int
    height: int
    x: float
    y: float
    downsample: float


def decode_tile(
    encoding: str, data: bytes, width: int, height: int, where: str, limits: Limits
) -> np.ndarray:
    """Decode one tile to uint8 ``H x W x 3``, checking its declared size.

    RAW_RGB8 is a view of ``data`` (no copy: the caller copies it once, into place); a PNG
    or JPEG is decoded once, and its pixels copied once out of PIL's image.

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
            img.load()  # decoded once, here
            if img.mode != "RGB":  # (an RGB image is used as decoded, not copied)
                img = img.convert("RGB")
            pixels = np.asarray(img)
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
