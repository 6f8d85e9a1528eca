"""The tiled-inference engine: how much context a region needs, how missing context is
filled, and how a large region is computed band by band.

These three rules are what make a heatmap computed in pieces equal the heatmap of the whole
image, so they live here once; :func:`milsil.inference.heatmap.logit_heatmap`, whole-slide
heatmaps (:mod:`milsil.wsi`) and the server (``milsil_server``) all use them, and the
server tells its clients the context through ``Model.context_pixels``.

* **Context.** A BagNet logit at pixel ``p`` depends on the ``receptive_field`` window
  centred on ``p``, so a region needs ``receptive_field // 2`` pixels of real context on
  every side (:func:`context_pixels`).
* **Missing context is mirrored.** Where no real pixels exist (an image border, a client
  that sent none), the image is reflected: the border policy of ``logit_heatmap``.
* **Bands.** A region is computed in square chunks, each with its context, so memory stays
  bounded and the chunks join without seams.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from milsil.errors import MilsilError


def context_for_receptive_field(receptive_field: int) -> int:
    """Pixels of context needed on each side of a region, given the receptive field."""
    return int(receptive_field) // 2


def context_pixels(model: Any) -> int:
    """Pixels of context a client must send around a region for seamless output.

    Refused for models without a bounded receptive field (ResNet-50, DenseNet-161, attention
    MIL): their logits depend on the whole image, so no finite context makes tiles exact.
    """
    rf = getattr(model, "receptive_field", None)
    if not rf:
        arch = getattr(getattr(model, "config", None), "arch", type(model).__name__)
        raise MilsilError(
            f"per-pixel logit heatmaps need a BagNet (bagnet9, bagnet17, bagnet33); "
            f"{arch} has no bounded receptive field: use cam() or gradcam()"
        )
    return context_for_receptive_field(rf)


# --------------------------------------------------------------------------- mirroring


@dataclass(frozen=True)
class ContextBox:
    """A region plus its context, clipped to the image: what to read, and what to mirror.

    ``x0, y0, x1, y1`` are the pixels that exist (read them); ``left, top, right, bottom``
    are the context pixels beyond the image on each side (mirror them, :func:`mirror_pad`).
    """

    x0: int
    y0: int
    x1: int
    y1: int
    left: int
    top: int
    right: int
    bottom: int

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0


def context_box(
    x: int, y: int, width: int, height: int, context: int, image_width: int, image_height: int
) -> ContextBox:
    """The box to read for region ``(x, y, width, height)`` with ``context`` pixels around it,
    in an image of ``image_width x image_height``; beyond the image the context is mirrored."""
    x0, y0 = max(x - context, 0), max(y - context, 0)
    x1, y1 = min(x + width + context, image_width), min(y + height + context, image_height)
    return ContextBox(
        x0=x0,
        y0=y0,
        x1=x1,
        y1=y1,
        left=x0 - (x - context),
        top=y0 - (y - context),
        right=x + width + context - x1,
        bottom=y + height + context - y1,
    )


def _check_mirror(width: int, height: int, left: int, right: int, top: int, bottom: int) -> None:
    """Refuse a reflection wider than the image it reflects (the edge is not repeated, so
    ``n`` pixels of context need more than ``n`` pixels of image on that axis)."""
    if max(top, bottom) >= height or max(left, right) >= width:
        raise MilsilError(
            f"an image of {width}x{height} pixels cannot be mirrored by "
            f"{max(left, right)}x{max(top, bottom)} pixels of context; it must be larger than "
            "the context on each axis: send a larger region or real context around it"
        )


def mirror_pad(image: torch.Tensor, left: int, right: int, top: int, bottom: int) -> torch.Tensor:
    """Reflect ``[3, H, W]`` outwards (without repeating the edge pixel) by the given widths."""
    if left == right == top == bottom == 0:
        return image
    height, width = image.shape[-2:]
    _check_mirror(width, height, left, right, top, bottom)
    return F.pad(image.unsqueeze(0), (left, right, top, bottom), mode="reflect")[0]


def mirror_pad_pixels(
    pixels: np.ndarray, left: int, right: int, top: int, bottom: int
) -> np.ndarray:
    """:func:`mirror_pad` for uint8 ``[H, W, 3]`` pixels (the same reflection, before
    normalization: normalizing is per pixel, so both orders give the same tensor)."""
    if left == right == top == bottom == 0:
        return pixels
    height, width = pixels.shape[:2]
    _check_mirror(width, height, left, right, top, bottom)
    return np.pad(pixels, ((top, bottom), (left, right), (0, 0)), mode="reflect")


# --------------------------------------------------------------------------- bands


def iter_chunks(
    rows: int, cols: int, side: int, target_seconds: float | None = None, min_side: int = 8
) -> Iterator[tuple[int, int, int, int]]:
    """Output chunks ``(r0, r1, c0, c1)`` of a ``rows x cols`` map, band by band in row order.

    Each band is ``side`` rows high and is cut into chunks ``side`` columns wide. With
    ``target_seconds``, the side adapts to the time the caller spends on each chunk: halved
    when a chunk takes longer (a slow device: cancellation is checked between chunks), grown
    back towards ``side`` while chunks take under a quarter of it (fewer overlapping
    contexts). A band keeps the height it started with.
    """
    side = max(1, int(side))
    current = side
    r0 = 0
    while r0 < rows:
        r1 = min(r0 + current, rows)
        c0 = 0
        while c0 < cols:
            c1 = min(c0 + current, cols)
            started = time.perf_counter()
            yield r0, r1, c0, c1
            elapsed = time.perf_counter() - started
            c0 = c1
            if target_seconds is None:
                continue
            if elapsed > target_seconds and current > min_side:
                current //= 2
            elif elapsed < target_seconds / 4 and current * 2 <= side:
                current *= 2
        r0 = r1


# --------------------------------------------------------------------------- streamed bands


class UncoveredError(MilsilError):
    """A region pixel no piece supplied; ``x``, ``y`` are its region-pixel coordinates;
    ``early``: found when a later piece needed the room (so it may merely be out of order)."""

    def __init__(self, x: int, y: int, early: bool = False) -> None:
        super().__init__(
            f"region pixel ({x}, {y}) was not sent"
            + (" before pieces below it needed the room" if early else "")
            + ": pieces must cover the region, sent in row order"
        )
        self.x, self.y, self.early = x, y, early


def band_height(
    width: int, context: int, stride: int, chunk_rows: int, budget_bytes: int, bytes_per_pixel=3
) -> int:
    """Rows of region (a multiple of ``stride``) that :class:`BandCanvas` hands out at once.

    As high as one chunk of the dense network (``chunk_rows`` output rows, so chunks stay
    square), lowered so that one band of ``width + 2 * context`` columns at
    ``bytes_per_pixel`` (its uint8 copy: 3) stays within ``budget_bytes``.
    """
    cols = int(width) + 2 * int(context)
    fit = int(budget_bytes) // max(1, cols * bytes_per_pixel * int(stride))
    return int(stride) * max(1, min(int(chunk_rows), fit))


@dataclass
class Band:
    """One band of a streamed region, ready to compute.

    ``pixels``: uint8 ``[row1 - row0 + 2c, width + 2c, 3]``, the band's region rows
    ``[row0, row1)`` with ``c`` rows and columns of context on every side (missing context
    mirrored), i.e. what ``logit_heatmap(model, pixels, margin=c)`` takes.
    """

    index: int
    row0: int
    row1: int
    pixels: np.ndarray
    # State every band of one region shares (the stain transform of its first band).
    shared: dict = field(default_factory=dict)


def _reflect(index: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Positions beyond ``[lo, hi)`` reflected into it, as ``mirror_pad`` (edge not repeated)."""
    out = np.where(index < lo, 2 * lo - index, index)
    return np.where(out >= hi, 2 * (hi - 1) - out, out)


class BandCanvas:
    """A region streamed in row order and computed band by band, with bounded memory.

    Streamed regions (the server's region RPCs,
    :func:`milsil.inference.heatmap.iter_logit_bands`) fill it; the context and mirroring
    rules above make its bands give what ``logit_heatmap`` gives for the whole region.
    Pieces of uint8 RGB (``H x W x 3``) arrive with their region-pixel top-left (negative in the context) and land in a window of rows; the region is handed
    out in bands of ``band`` rows (:class:`Band`), each with its context, and a band's rows
    leave the window once no later band needs them. The window holds at most ``band + 2c``
    rows plus the tallest piece, so memory is bounded by the region's width, not its area.

    *Row order*: pieces come in non-decreasing order of their top row (pieces with the same
    top in any order). A piece's top tells that every row above it is complete, so a band
    is computed as soon as the window needs its room and the band and its context lie above
    the newest piece; a piece reaching into rows an already computed band used is refused.
    Everything left is computed by :meth:`finish` at the end of the stream (so a region
    that fits in the window may come in any order).

    Usage::

        box = canvas.clip(x, y, w, h)          # None: wholly beyond the context, ignore it
        for band in canvas.make_room(box):     # bands to compute before the piece fits
            compute(band)
        canvas.place(pixels, x, y)
        ...
        for band in canvas.finish():
            compute(band)

    Mirroring, band by band: rows above (below) the region count as real as far as they
    were supplied across the region's whole width; columns left (right) of it as far as
    they were supplied along every real row the band uses; beyond that the image is
    reflected, as ``logit_heatmap`` pads an image given without margin. ``reserve(bytes)``
    is called with the canvas's total size before its window is allocated or grown (a
    memory budget may refuse by raising).
    """

    def __init__(
        self,
        width: int,
        height: int,
        context: int,
        band: int,
        reserve: Callable[[int], None] | None = None,
        held_bands: int = 1,
    ) -> None:
        if width < 1 or height < 1 or context < 0 or band < 1 or held_bands < 1:
            raise ValueError(f"bad canvas {width}x{height}, context {context}, band {band}")
        self.width, self.height, self.context, self.band = width, height, context, band
        self.held_bands = held_bands  # bands of their own alive at once (:meth:`own`)
        self.cols = width + 2 * context
        self.reserve = reserve
        self.window: np.ndarray | None = None  # uint8 [capacity, cols, 3]
        self.supplied: np.ndarray | None = None  # bool [capacity, cols]
        self.base = -context  # region row of window row 0
        self.next_row = 0  # first region row of the next band
        self.sealed = -context  # rows a computed band used: no piece may reach them
        self.bands = 0
        self.placed = 0
        self.shared: dict = {}  # every band's Band.shared

    # ------------------------------------------------------------------ geometry

    @property
    def capacity(self) -> int:
        return 0 if self.window is None else self.window.shape[0]

    def nbytes(self, capacity: int) -> int:
        """Bytes held with a window of ``capacity`` rows: pixels, the supplied mask and
        ``held_bands`` bands' copies."""
        band_bytes = (self.band + 2 * self.context) * self.cols * 3
        return capacity * self.cols * 4 + self.held_bands * band_bytes

    def clip(self, x: int, y: int, width: int, height: int) -> tuple[int, int, int, int] | None:
        """The part of a piece at region pixel ``(x, y)`` within the region and its context,
        as region-pixel ``(x0, y0, x1, y1)``; ``None`` when it lies wholly beyond."""
        c = self.context
        x0, y0 = max(x, -c), max(y, -c)
        x1, y1 = min(x + width, self.width + c), min(y + height, self.height + c)
        if x0 >= x1 or y0 >= y1:
            return None
        return x0, y0, x1, y1

    # ------------------------------------------------------------------ intake

    def make_room(self, box: tuple[int, int, int, int]) -> Iterator[Band]:
        """Bands to compute before the piece ``box`` (from :meth:`clip`) fits the window.

        Refuses (:class:`MilsilError`) a piece that reaches rows an already computed band
        used: it came out of row order.
        """
        _, y0, _, y1 = box
        if y0 < self.sealed:
            raise MilsilError(
                f"a tile reaching region row {y0} arrived after the rows above region row "
                f"{self.sealed} were computed: send tiles in row order (sorted by their top "
                "edge; tiles of one row in any order)"
            )
        c = self.context
        if self.window is None:
            self._resize(min(self.height + 2 * c, self.band + 2 * c + (y1 - y0)))
        elif self.capacity < self.band + 2 * c + (y1 - y0):
            self._resize(min(self.height + 2 * c, self.band + 2 * c + (y1 - y0)))
        while y1 > self.base + self.capacity and self.next_row < self.height:
            end = min(self.next_row + self.band, self.height)
            if end + c > y0:
                break  # the next band's rows are not complete yet
            try:
                band = self._take(end)
            except UncoveredError as exc:
                raise UncoveredError(exc.x, exc.y, early=True) from None
            yield band
            self._release(self.next_row - c)  # the band is computed: its rows may go
        if y1 > self.base + self.capacity:
            self._resize(y1 - self.base)

    def place(self, pixels: np.ndarray, x: int, y: int) -> tuple[int, int, int, int]:
        """Put uint8 ``[h, w, 3]`` pixels whose top-left is region pixel ``(x, y)``; call
        :meth:`make_room` for its box first. Returns the interior part covered, ``(x0, y0,
        x1, y1)`` in region pixels (empty when the piece is context only)."""
        h, w = pixels.shape[:2]
        box = self.clip(x, y, w, h)
        if box is None:
            return 0, 0, 0, 0
        x0, y0, x1, y1 = box
        if y0 < self.sealed or y1 > self.base + self.capacity:
            raise ValueError("make_room() must be called for this piece before place()")
        c, r0 = self.context, y0 - self.base
        self.window[r0 : r0 + y1 - y0, x0 + c : x1 + c] = pixels[y0 - y : y1 - y, x0 - x : x1 - x]
        self.supplied[r0 : r0 + y1 - y0, x0 + c : x1 + c] = True
        self.placed += 1
        ix0, iy0 = max(x0, 0), max(y0, 0)
        ix1, iy1 = min(x1, self.width), min(y1, self.height)
        if ix0 >= ix1 or iy0 >= iy1:
            return 0, 0, 0, 0
        return ix0, iy0, ix1, iy1

    def own(self, band: Band) -> Band:
        """``band`` with pixels of its own: one handed out as a view of the window (nothing to
        mirror) is copied, so the window may take the next pieces while the band is computed
        on another thread (a caller doing so holds ``held_bands`` such bands at once)."""
        if self.window is not None and np.may_share_memory(band.pixels, self.window):
            band.pixels = band.pixels.copy()
        return band

    def finish(self) -> Iterator[Band]:
        """The bands not computed yet (the stream has ended: every row is complete)."""
        if self.placed == 0:
            raise MilsilError("no tiles were sent; send tiles covering the region")
        while self.next_row < self.height:
            yield self._take(min(self.next_row + self.band, self.height))
            self._release(self.next_row - self.context)
        self.close()

    def close(self) -> None:
        """Free the window (also on error or cancellation)."""
        self.window = self.supplied = None

    # ------------------------------------------------------------------ internals

    def _resize(self, capacity: int) -> None:
        if capacity <= self.capacity:
            return
        if self.reserve is not None:
            self.reserve(self.nbytes(capacity))
        window = np.zeros((capacity, self.cols, 3), dtype=np.uint8)
        supplied = np.zeros((capacity, self.cols), dtype=bool)
        if self.window is not None:
            window[: self.capacity] = self.window
            supplied[: self.capacity] = self.supplied
        self.window, self.supplied = window, supplied

    def _release(self, row: int) -> None:
        """Drop the window rows above region row ``row`` (moving the rest up)."""
        drop = min(row - self.base, self.capacity)
        if drop <= 0:
            return
        keep = self.capacity - drop
        for start in range(0, keep, drop):  # in steps of `drop`: no overlapping copies
            stop = min(start + drop, keep)
            self.window[start:stop] = self.window[start + drop : stop + drop]
            self.supplied[start:stop] = self.supplied[start + drop : stop + drop]
        self.supplied[keep:] = False
        self.base += drop

    def _depth(self, lines: Iterator[np.ndarray]) -> int:
        d = 0
        for line in lines:
            if not line.all():
                break
            d += 1
        return d

    def _take(self, end: int) -> Band:
        """The band of region rows ``[next_row, end)``, its rows then released."""
        c, h, w = self.context, self.height, self.width
        a, s, base = self.next_row, self.supplied, self.base
        first, last = a - c, end + c  # the rows the band uses: [first, last)
        interior = s[a - base : end - base, c : c + w]
        if not interior.all():
            y, x = np.argwhere(~interior)[0]
            raise UncoveredError(int(x), int(a + y))

        def row(r: int) -> np.ndarray:
            return s[r - base, c : c + w]

        top = self._depth(row(r) for r in range(-1, max(first, -c) - 1, -1))
        bottom = self._depth(row(r) for r in range(h, min(last, h + c)))
        lo, hi = max(first, -top), min(last, h + bottom)  # the real rows the band uses
        rows = s[lo - base : hi - base]
        left = self._depth(rows[:, c - 1 - k] for k in range(c))
        right = self._depth(rows[:, c + w + k] for k in range(c))
        r_src = _reflect(np.arange(first, last), -top, h + bottom)
        c_src = _reflect(np.arange(-c, w + c), -left, w + right)
        if (
            r_src.min() < -top
            or r_src.max() >= h + bottom
            or c_src.min() < -left
            or c_src.max() >= w + right
        ):  # the real image is too small to mirror the missing context from
            raise MilsilError(
                f"the region is {w}x{h} px with {min(top, bottom, left, right)} px of context on "
                f"its narrowest side; a heatmap needs at least {2 * c + 1}x{2 * c + 1} pixels "
                "(the receptive field): send a larger region or context around it"
            )
        if left == right == c and (r_src == np.arange(first, last)).all():
            pixels = self.window[first - base : last - base]  # a view: nothing to mirror
        else:
            pixels = self.window[np.ix_(r_src - base, c_src + c)]  # one copy, mirrored
        band = Band(self.bands, a, end, pixels, self.shared)
        self.bands += 1
        self.next_row = end
        self.sealed = max(self.sealed, last)
        return band
