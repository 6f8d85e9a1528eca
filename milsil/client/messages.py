"""The message codec every client call shares (the client's half of ``milsil_server.messages``):
pixels -> Tile messages, value types, streamed heatmap tiles -> arrays.

Each family's own messages live in the module named after it, as on the server:
:mod:`~milsil.client.regions`, :mod:`~milsil.client.objects`,
:mod:`~milsil.client.slides`, :mod:`~milsil.client.training`.

Torch-free, like all of :mod:`milsil.client`; the value types are read from the contract
(``ValueType`` names the numpy dtype: ``VALUE_TYPE_FLOAT16`` -> ``float16``, little-endian).
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from milsil.errors import MilsilError
from milsil.v1 import common_pb2, inference_service_pb2

ENCODINGS = {
    "raw": common_pb2.Tile.RAW_RGB8,
    "png": common_pb2.Tile.PNG,
    "jpeg": common_pb2.Tile.JPEG,
}
VALUE_TYPES = {
    name.removeprefix("VALUE_TYPE_").lower(): number
    for name, number in common_pb2.ValueType.items()
    if number != common_pb2.VALUE_TYPE_UNSPECIFIED
}
_NUMPY_TYPES = {number: np.dtype(name).newbyteorder("<") for name, number in VALUE_TYPES.items()}


def value_type(name: str) -> int:
    """The ``ValueType`` of ``"float32"``, ``"float16"``, ...; refuses others by name."""
    if name not in VALUE_TYPES:
        raise MilsilError(f"value_type must be one of {', '.join(VALUE_TYPES)}, got {name!r}")
    return VALUE_TYPES[name]


def encode_tile(
    pixels: np.ndarray,
    encoding: str = "raw",
    x: float = 0.0,
    y: float = 0.0,
    downsample: float = 1.0,
) -> common_pb2.Tile:
    """A Tile message from uint8 ``h x w x 3`` pixels at level-0 ``(x, y)``."""
    pixels = np.ascontiguousarray(pixels)
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
        raise MilsilError(
            f"tiles must be uint8 h x w x 3 arrays, got {pixels.dtype} {pixels.shape}"
        )
    if encoding not in ENCODINGS:
        raise MilsilError(f"encoding must be one of {', '.join(ENCODINGS)}, got {encoding!r}")
    h, w = pixels.shape[:2]
    if encoding == "raw":
        data = pixels.tobytes()
    else:
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format="PNG" if encoding == "png" else "JPEG", quality=95)
        data = buf.getvalue()
    return common_pb2.Tile(
        encoding=ENCODINGS[encoding], data=data, width=w, height=h, x=x, y=y, downsample=downsample
    )


def image_tiles(
    image: np.ndarray,
    tile_size: int,
    encoding: str = "raw",
    x: float = 0.0,
    y: float = 0.0,
    downsample: float = 1.0,
) -> Iterator[common_pb2.Tile]:
    """Cut an image whose top-left is level-0 ``(x, y)`` into a grid of tiles (edges smaller)."""
    if tile_size < 1:
        raise MilsilError(f"tile_size must be >= 1, got {tile_size}")
    h, w = image.shape[:2]
    for ty in range(0, h, tile_size):
        for tx in range(0, w, tile_size):
            yield encode_tile(
                image[ty : ty + tile_size, tx : tx + tile_size],
                encoding,
                x + tx * downsample,
                y + ty * downsample,
                downsample,
            )


@dataclass(frozen=True)
class Familiarity:
    """How like the model's training data an input was (the contract's ``Familiarity``).

    ``available`` is False when the model carries no training statistics (then nothing
    was judged and the numbers are 0); ``unlike_training``: ``score > threshold``, the
    model's answer for that input should not be trusted.
    """

    available: bool = False
    score: float = 0.0
    threshold: float = 0.0
    unlike_training: bool = False

    @classmethod
    def from_message(cls, message: common_pb2.Familiarity) -> Familiarity:
        return cls(
            bool(message.available),
            float(message.score),
            float(message.threshold),
            bool(message.unlike_training),
        )

    def warning(self, where: str) -> str | None:
        """``milsil: <where>: unlike the training data (score S, threshold T)``, the line
        every milsil client prints (the QuPath scripts' too), or None when familiar."""
        if not (self.available and self.unlike_training):
            return None
        return (
            f"milsil: {where}: unlike the training data "
            f"(score {self.score:.3g}, threshold {self.threshold:.3g})"
        )


@dataclass
class HeatmapResult:
    """A heatmap put back together from the streamed tiles, with how like the training
    data the whole region was (``familiarity``) and each streamed tile's samples
    (``tile_familiarity``, in the order they came: ``HeatmapTile.tile_index`` first)."""

    header: inference_service_pb2.HeatmapHeader
    logits: np.ndarray  # float32 [C, rows, cols]
    probabilities: np.ndarray | None  # float32 [C, rows, cols] when requested
    familiarity: Familiarity = Familiarity()
    tile_familiarity: list[tuple[int, Familiarity]] | None = None

    @property
    def class_names(self) -> list[str]:
        return list(self.header.class_names)


def assemble_heatmap(responses: Iterable[inference_service_pb2.HeatmapResponse]) -> HeatmapResult:
    """Put streamed HeatmapResponse tiles back into whole ``[C, rows, cols]`` arrays; the
    region's familiarity comes alone in the last message (Heatmap)."""
    header = None
    logits = probs = None
    region = Familiarity()
    tiles: list[tuple[int, Familiarity]] = []
    for response in responses:
        if "queue" in response.DESCRIPTOR.fields_by_name and response.HasField("queue"):
            continue  # waiting for compute (HeatmapResponse.queue)
        if "familiarity" in response.DESCRIPTOR.fields_by_name and response.HasField("familiarity"):
            region = Familiarity.from_message(response.familiarity)
            continue
        if response.HasField("header"):
            header = response.header
            c = len(header.class_names)
            logits = np.full((c, header.rows, header.cols), np.nan, dtype=np.float32)
            continue
        if header is None:
            raise MilsilError("the server sent heatmap tiles before the header")
        t = response.tile
        tiles.append((t.tile_index, Familiarity.from_message(t.familiarity)))
        dtype = _NUMPY_TYPES[header.value_type or common_pb2.VALUE_TYPE_FLOAT32]
        shape = (t.num_classes, t.rows, t.cols)
        logits[:, t.row : t.row + t.rows, t.col : t.col + t.cols] = np.frombuffer(
            t.logits, dtype
        ).reshape(shape)
        if t.probabilities:
            if probs is None:
                probs = np.full_like(logits, np.nan)
            probs[:, t.row : t.row + t.rows, t.col : t.col + t.cols] = np.frombuffer(
                t.probabilities, dtype
            ).reshape(shape)
    if header is None:
        raise MilsilError("the server sent no heatmap header")
    return HeatmapResult(header, logits, probs, region, tiles)
