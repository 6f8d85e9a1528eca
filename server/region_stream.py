"""The region stream: a region of any size, its tiles in, computed band by band.

Heatmap and Annotate (:mod:`.regions`) and MeasureObjects (:mod:`.objects`) all run one.

A region is not assembled: its tiles arrive in row order and land in the tiled engine's
:class:`milsil.inference.tiling.BandCanvas`, which hands out each band (with its context,
missing context mirrored) once the band and its context have arrived. Tiles are received
and decoded on a thread of their own (:mod:`.intake`) while the call's thread computes the
band handed out before, and frees its pixels. What a call keeps is bounded by the band
height times the region's width (the window, the band computing and the next one), never
by its area:

* Heatmap keeps the computed rows that tiles still waiting for their answer need;
* Annotate keeps the outlines and per-component sums (:class:`milsil.wsi.geojson.OutlineStream`).

Every tile's rectangle is checked against the region and its context from its header
(declared width and height) before its bytes are decoded; tiles wholly outside are
ignored undecoded. Memory is charged to the server's :class:`MemoryBudget`
(:mod:`.memory`, ``--max-memory``) before it is allocated, and returned when the call ends, however it
ends.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from milsil.errors import MilsilError, compact
from milsil.inference.familiarity import (
    FamiliarityAccumulator,
    band_appearance,
    piece_appearance,
)
from milsil.inference.heatmap import (
    TILE_ACTIVATION_BUDGET,
    band_logits,
    chunk_side,
    output_size,
    stream_band_rows,
)
from milsil.inference.precision import mode_arithmetic
from milsil.inference.tiling import Band, BandCanvas, UncoveredError
from milsil.models.familiarity import model_familiarity

from .errors import Busy, Cancelled, ResourceExhausted
from .inbox import Inbox
from .intake import END, Handover
from .memory import Reservation, trim_memory
from .resources import Limits, Resources
from .slots import Turn
from .tiles import TileData, check_tile, decode_tile

DECODE_BYTES_PER_PIXEL = 10  # a PNG/JPEG being decoded: PIL's image, its RGB copy, the array
BAND_TARGET_SECONDS = 1.0  # most compute between two cancellation checks


# --------------------------------------------------------------------------- requests


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
                "region.x and region.y must be >= 0 (level-0 pixels), got "
                f"({compact(x)}, {compact(y)})"
            )
        ds = downsample or 1.0
        if not 0 < ds <= 4096:
            raise MilsilError(
                f"region.downsample must be in (0, 4096] (0 = 1), got {compact(downsample)}"
            )
        if width <= 0 or height <= 0:
            raise MilsilError(
                "region.width and region.height must be > 0, got "
                f"{compact(width)}x{compact(height)}"
            )
        w, h = round(width / ds), round(height / ds)
        if w < 1 or h < 1:
            raise MilsilError(
                f"region is {w}x{h} pixels at downsample {compact(ds)}; it must be at least 1x1"
            )
        if w * h > limits.max_region_pixels:
            raise ResourceExhausted(
                f"region is {compact(w)}x{compact(h)} = {compact(w * h)} pixels at downsample "
                f"{compact(ds)}; this server takes images of at most "
                f"{compact(limits.max_region_pixels)} pixels (--max-region-pixels)",
                reason="too_large",
            )
        return cls(float(x), float(y), float(ds), int(w), int(h))

    def level0(self, x: int, y: int) -> str:
        """Region pixel ``(x, y)`` as level-0 coordinates, for messages."""
        return f"({self.x + x * self.downsample:g}, {self.y + y * self.downsample:g})"


@dataclass(frozen=True)
class Placed:
    """Tile ``index`` arrived; ``box`` is its part of the region (region pixels, may be empty)."""

    index: int
    box: tuple[int, int, int, int]
    # The appearance sums of the tile's part of the region (a stream with familiarity and a
    # reference with an appearance part), for the tile's own Familiarity; else None.
    appearance: np.ndarray | None = None


@dataclass(frozen=True)
class Computed:
    """Map rows ``[row0, row1)`` (samples) are done: ``values`` is ``[C, row1 - row0, cols]``
    logits, then (a stream with ``familiarity``) one more channel, the per-sample distance
    from the training data (:mod:`milsil.inference.familiarity`) of the same dense pass."""

    row0: int
    row1: int
    values: torch.Tensor
    classes: int
    # The appearance sums of the band's own pixels (milsil.inference.familiarity.
    # band_appearance), for the region's familiarity; None without an appearance part.
    appearance: np.ndarray | None = None

    @property
    def logits(self) -> torch.Tensor:
        """``[C, rows, cols]``."""
        return self.values[: self.classes]

    @property
    def distance(self) -> torch.Tensor | None:
        """``[rows, cols]`` per-sample distance, or None (the stream computes none)."""
        return self.values[self.classes] if self.values.shape[0] > self.classes else None

    def judge(self, accumulator: FamiliarityAccumulator) -> None:
        """Count this band in a region's familiarity: its samples' distances and its
        pixels' appearance (nothing when the stream computes no distance)."""
        if self.distance is not None:
            accumulator.add(self.distance)
            accumulator.add_appearance(self.appearance)


# --------------------------------------------------------------------------- streaming


@dataclass
class RegionStream:
    """One streamed region: tiles in, events out (:meth:`events`).

    ``reservation`` is charged before the window, a band or a tile's pixels are
    allocated (:meth:`nbytes` says how much in all); ``is_active`` is polled between
    tiles and between chunks of a band.
    """

    spec: RegionSpec
    model: torch.nn.Module
    halo: int
    stride: int
    limits: Limits
    reservation: Reservation
    is_active: Callable[[], bool]
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    max_tiles: int = 1_000_000
    # The call's compute turn: held while a band computes, given up while the call waits
    # for its client (None: the caller holds a slot for the whole call).
    turn: Turn | None = None
    # A model's copy on the turn's device (Resources.on_device; None: compute on `device`),
    # and the heatmap mode (milsil.inference.precision.MODES: exact, tf32 or bf16).
    on_device: Callable[[torch.nn.Module, Any], torch.nn.Module] | None = None
    precision: str = "exact"
    # Also the per-sample distance from the training data, in the same pass (a model with
    # a familiarity reference): one more channel in every Computed.
    familiarity: bool = False
    # With familiarity, also each request tile's appearance sums in its Placed event (for
    # answers judged tile by tile: Heatmap's); the region's come from its bands either way.
    tile_familiarity: bool = False
    # The call's inbox when the tiles come from it: its ``on_wait`` (the caller's, while
    # this thread reads the first tile) is cleared once the receiver thread reads it.
    inbox: Inbox | None = None
    tiles: int = field(init=False, default=0)
    _hand: Handover | None = field(init=False, default=None)  # the receiver, once started
    answered: bool = field(init=False, default=False)  # a reply went out (Heatmap's header)
    canvas: BandCanvas = field(init=False)
    band: int = field(init=False)

    def __post_init__(self) -> None:
        self.band = stream_band_rows(self.model, self.spec.width, self.stride, self.device)
        self._chunk_side = chunk_side(self.model, self.stride, self.device)
        self.canvas = BandCanvas(
            self.spec.width,
            self.spec.height,
            self.halo,
            self.band,
            reserve=self._reserve,
            held_bands=2,  # the band computing and the next one (:mod:`.intake`)
        )
        self.rows = output_size(self.spec.height, self.stride)
        self.cols = output_size(self.spec.width, self.stride)
        self._canvas_bytes = 0
        self._tile_pixels = 0
        self._placed = 0  # tiles with pixels inside the region or its context
        self._outside: str | None = None  # the first tile wholly outside, for messages

    # ------------------------------------------------------------------ memory

    @property
    def channels(self) -> int:
        """Channels of each :class:`Computed` (the classes, and the distance if any)."""
        return int(self.model.config.num_classes) + int(self.familiarity)

    def nbytes(self) -> int:
        """What this call holds at most, given the window and the largest tile so far."""
        c = self.halo
        chunk = (self.band + 2 * c) * (self._chunk_side * self.stride + 2 * c)
        chunk_input = chunk * 12 * 2  # one chunk normalized (float32), its channels-last copy
        classes = self.channels
        out = (self.canvas.capacity // self.stride + 2 * self.band // self.stride + 2) * self.cols
        outputs = out * classes * 4 * 3  # logits, probabilities, a class's maps
        activations = 4 * TILE_ACTIVATION_BUDGET["cpu"] if self.device.type == "cpu" else 0
        decode = self._tile_pixels * DECODE_BYTES_PER_PIXEL
        return self._canvas_bytes + chunk_input + outputs + activations + decode

    def _reserve(self, canvas_bytes: int) -> None:
        self._canvas_bytes = canvas_bytes
        self._ensure()

    def _ensure(self) -> None:
        """Reserve :meth:`nbytes`. Once the caller has answered something (``answered``),
        "busy" can no longer be retried transparently: it becomes final."""
        try:
            self.reservation.ensure(self.nbytes())
        except Busy as exc:
            if not self.answered:
                raise
            raise ResourceExhausted(
                f"{exc} (this call's tiles grew taller than its first one; send tiles of one "
                "height to have the memory reserved before the first answer)",
                reason="memory",
            ) from None

    def reserve_for(self, tile_height: int, tile_width: int) -> None:
        """Reserve the window for tiles of this size up front (before any reply is sent)."""
        c = self.halo
        rows = min(self.spec.height + 2 * c, self.band + 2 * c + max(1, tile_height))
        self._tile_pixels = max(self._tile_pixels, tile_height * tile_width)
        self._reserve(self.canvas.nbytes(rows))

    # ------------------------------------------------------------------ tiles

    def _box(self, tile: TileData, where: str) -> tuple[int, int, tuple | None]:
        """The tile's region-pixel position and its clipped box, from its header only."""
        r = self.spec
        for name, value in (("x", tile.x), ("y", tile.y), ("downsample", tile.downsample)):
            if not math.isfinite(value):
                raise MilsilError(f"{where}.{name} must be a finite number, got {value}")
        if tile.x < 0 or tile.y < 0:
            raise MilsilError(
                f"{where}.x and .y must be >= 0 (level-0 pixels), got "
                f"({compact(tile.x)}, {compact(tile.y)})"
            )
        ds = tile.downsample or 1.0
        if abs(ds - r.downsample) > 1e-6 * r.downsample:
            raise MilsilError(
                f"{where}.downsample is {compact(ds)}; it must equal region.downsample "
                f"{compact(r.downsample)}"
            )
        check_tile(tile.encoding, tile.data, tile.width, tile.height, where, self.limits)
        px, py = round((tile.x - r.x) / ds), round((tile.y - r.y) / ds)  # region pixels
        return px, py, self.canvas.clip(px, py, tile.width, tile.height)

    def _receive(self, tiles: Iterator[TileData], hand: Handover) -> None:
        """The receiver thread (:mod:`.intake`): every tile checked from its header, its room
        made (bands handed over to compute), decoded and placed; then the bands left."""
        for tile in tiles:  # waits for the client (the inbox's idle limit), holding nothing
            with hand.working():
                self._take_tile(tile, hand)
        with hand.working():
            self._finish(hand)

    def _take_tile(self, tile: TileData, hand: Handover) -> None:
        if not self.is_active():
            raise Cancelled("request cancelled or deadline exceeded")
        n = self.tiles
        if n >= self.max_tiles:
            raise ResourceExhausted(
                f"at most {compact(self.max_tiles)} tiles per request", reason="too_large"
            )
        self.tiles += 1
        where = f"tiles[{n}]"
        px, py, box = self._box(tile, where)
        if box is None:
            # Context beyond what the receptive field needs (a client may send a wider
            # margin): ignored before decoding. The coverage check still catches gaps.
            if self._outside is None:
                self._outside = f"{where} at level-0 ({compact(tile.x)}, {compact(tile.y)})"
            hand.put(Placed(n, (0, 0, 0, 0)))
            return
        self._placed += 1
        with self._uncovered():
            for band in self.canvas.make_room(box):
                hand.hand_band(band, self.canvas.own)
        if tile.width * tile.height > self._tile_pixels:
            self._tile_pixels = tile.width * tile.height
            self._ensure()
        pixels = decode_tile(tile.encoding, tile.data, tile.width, tile.height, where, self.limits)
        x0, y0, x1, y1 = inside = self.canvas.place(pixels, px, py)
        looks = None
        judged = self.familiarity and self.tile_familiarity
        if judged and x1 > x0 and y1 > y0:  # on this thread, beside the compute
            looks = piece_appearance(self.model, pixels[y0 - py : y1 - py, x0 - px : x1 - px])
        hand.put(Placed(n, inside, looks))

    def _finish(self, hand: Handover) -> None:
        """The bands left once the client has sent everything."""
        if self.tiles and not self._placed:
            r = self.spec
            raise MilsilError(
                f"none of the {self.tiles} tiles lies in the region or its context: "
                f"{self._outside} is outside the region at level-0 ({compact(r.x)}, "
                f"{compact(r.y)}), {compact(r.width * r.downsample)} x "
                f"{compact(r.height * r.downsample)}; tiles must cover the region"
            )
        with self._uncovered():
            for band in self.canvas.finish():
                hand.hand_band(band, self.canvas.own)

    def events(self, tiles: Iterator[TileData]) -> Iterator[Placed | Computed]:
        """All of the stream's events (tiles placed, bands computed), its window reserved
        for the first tile before anything is answered (so a busy budget is refused up
        front). The tiles are received on a thread of their own (:mod:`.intake`) from the
        first event on, while this thread computes."""
        first = next(tiles, None)
        if first is not None:
            side = self.limits.max_tile_side
            self.reserve_for(min(first.height, side), min(first.width, side))
            tiles = itertools.chain([first], tiles)
        if self.inbox is not None:
            # The receiver thread reads on; this thread then waits in Handover.get, which
            # gives the turn back (a Turn is only ever touched by the call's thread).
            self.inbox.on_wait = None
        return self._computed(tiles)

    def _computed(self, tiles: Iterator[TileData]) -> Iterator[Placed | Computed]:
        on_wait = self.turn.release_if_wanted if self.turn is not None else None
        self._hand = hand = Handover(lambda h: self._receive(tiles, h), on_wait)
        try:
            while (item := hand.get()) is not END:
                if isinstance(item, Band):
                    try:
                        computed = self._compute(item)
                    finally:
                        item.pixels = None
                        hand.band_done()
                    yield computed
                else:
                    yield item
        finally:
            hand.stop()

    def close(self) -> None:
        """Stop the receiver, free the window and hand the freed memory back to the system."""
        if self._hand is not None:
            self._hand.stop()
        self.canvas.close()
        trim_memory()

    @contextmanager
    def _uncovered(self) -> Iterator[None]:
        try:
            yield
        except UncoveredError as exc:
            where = self.spec.level0(exc.x, exc.y)
            if exc.early:
                raise MilsilError(
                    f"the tiles do not cover the region: level-0 {where} had not arrived when "
                    "tiles below it needed the room; tiles must cover every pixel of the region "
                    "and come in row order (sorted by their top edge)"
                ) from None
            raise MilsilError(
                f"the tiles do not cover the region: level-0 {where} is missing; tiles must "
                "cover every pixel of the region"
            ) from None

    def _compute(self, band: Band) -> Computed:
        if self.turn is not None:
            self.turn.hold()
        device = (self.turn and self.turn.device) or self.device  # the slot's device
        model = self.on_device(self.model, device) if self.on_device else self.model
        precision, bf16 = mode_arithmetic(self.precision)
        logits = band_logits(
            model,
            band,
            self.halo,
            self.stride,
            tile=self._chunk_side,
            device=device,
            target_seconds=BAND_TARGET_SECONDS,
            should_stop=lambda: not self.is_active(),
            precision=precision,
            familiarity=self.familiarity,
            bf16=bf16,
        )
        if logits is None:
            raise Cancelled("request cancelled or deadline exceeded; heatmap computation stopped")
        row0 = band.row0 // self.stride
        classes = int(self.model.config.num_classes)
        looks = band_appearance(self.model, band, self.halo) if self.familiarity else None
        return Computed(row0, row0 + logits.shape[1], logits, classes, looks)


class TileReplies:
    """Heatmap's answer, one reply per request tile: the samples inside it, sent as soon as
    every band they lie in is computed. Keeps only the computed rows that waiting tiles
    (or tiles still to come, in row order) need."""

    def __init__(self, stream: RegionStream) -> None:
        self.stream = stream
        self.stride = stream.stride
        self.pending: list[tuple[int, tuple[int, int, int, int]]] = []  # (index, samples)
        self.blocks: list[Computed] = []
        self.done = 0  # map rows computed
        # Each placed tile's appearance sums (Placed.appearance), until its reply takes them.
        self.appearance: dict[int, np.ndarray | None] = {}

    def samples(self, box: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
        """Sample rows/cols ``(row0, row1, col0, col1)`` whose pixels lie in a tile's box."""
        x0, y0, x1, y1 = box
        s = self.stride
        return -(-y0 // s), -(-y1 // s), -(-x0 // s), -(-x1 // s)

    def handle(
        self, event: Placed | Computed
    ) -> Iterator[tuple[int, tuple[int, int, int, int], torch.Tensor]]:
        """``(tile index, samples, values [channels, rows, cols])`` of every tile now
        complete (the stream's :attr:`Computed.values`: logits, then the distance if any)."""
        if isinstance(event, Placed):
            self.appearance[event.index] = event.appearance
            samples = self.samples(event.box)
            r0, r1, c0, c1 = samples
            if r1 <= r0 or c1 <= c0:  # context only: an empty reply at once
                yield event.index, (r0, r0, c0, c0), self._rows((r0, r0, c0, c0))
            elif r1 <= self.done:
                yield event.index, samples, self._rows(samples)
            else:
                self.pending.append((event.index, samples))
            return
        self.blocks.append(event)
        self.done = event.row1
        ready = [p for p in self.pending if p[1][1] <= self.done]
        self.pending = [p for p in self.pending if p[1][1] > self.done]
        for index, samples in sorted(ready, key=lambda p: (p[1][1], p[0])):
            yield index, samples, self._rows(samples)
        # Rows no waiting tile needs, and no later tile can (they start below `sealed`).
        keep = -(-max(self.stream.canvas.sealed, 0) // self.stride)
        keep = min([keep] + [p[1][0] for p in self.pending])
        self.blocks = [b for b in self.blocks if b.row1 > keep]

    def _rows(self, samples: tuple[int, int, int, int]) -> torch.Tensor:
        r0, r1, c0, c1 = samples
        parts = [
            b.values[:, max(r0, b.row0) - b.row0 : min(r1, b.row1) - b.row0, c0:c1]
            for b in self.blocks
            if b.row1 > r0 and b.row0 < r1
        ]
        if not parts:
            return torch.zeros(self.stream.channels, 0, max(c1 - c0, 0))
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


def class_maps(logits: torch.Tensor, class_index: int) -> tuple[np.ndarray, np.ndarray]:
    """One class's probability and logit maps (float64) from a band's ``[C, rows, cols]``."""
    probs = torch.softmax(logits, dim=0)[class_index].double().numpy()
    return probs, logits[class_index].double().numpy()


def open_stream(
    res: Resources,
    spec: RegionSpec,
    model: torch.nn.Module,
    halo: int,
    stride: int,
    reservation: Reservation,
    context: Any,
    turn: Turn | None = None,
    inbox: Inbox | None = None,
    per_tile: bool = False,
) -> RegionStream:
    """A region stream computed under this server's limits, device and tile cap, for as
    long as the call (``context``) is active, in ``turn``'s compute turns; ``inbox``: the
    call's, when the tiles are read from it; with the per-sample familiarity distance when
    the model has a reference (``per_tile``: and each request tile's appearance, for
    answers judged tile by tile)."""
    return RegionStream(
        spec,
        model,
        halo,
        stride,
        res.limits,
        reservation,
        context.is_active,
        res.device,
        res.max_tiles,
        turn,
        inbox=inbox,
        on_device=res.on_device,
        precision=res.precision,
        familiarity=model_familiarity(model) is not None,
        tile_familiarity=per_tile,
    )
