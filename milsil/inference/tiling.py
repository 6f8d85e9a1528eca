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
from collections.abc import Iterator
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


def mirror_pad(image: torch.Tensor, left: int, right: int, top: int, bottom: int) -> torch.Tensor:
    """Reflect ``[3, H, W]`` outwards (without repeating the edge pixel) by the given widths."""
    if left == right == top == bottom == 0:
        return image
    height, width = image.shape[-2:]
    if max(top, bottom) >= height or max(left, right) >= width:
        raise MilsilError(
            f"an image of {width}x{height} pixels cannot be mirrored by "
            f"{max(left, right)}x{max(top, bottom)} pixels of context; it must be larger than "
            "the context on each axis: send a larger region or real context around it"
        )
    return F.pad(image.unsqueeze(0), (left, right, top, bottom), mode="reflect")[0]


@dataclass
class ContextCanvas:
    """A normalized ``[3, height + 2c, width + 2c]`` region with ``c`` pixels of context,
    filled piece by piece (:meth:`place`), then completed by :meth:`mirror_missing_context`.

    Context nobody supplied is the mirror image, so a region sent without context gives
    exactly ``logit_heatmap(region)``, and one sent with context the numbers the whole
    image would give.
    """

    width: int
    height: int
    context: int
    canvas: torch.Tensor = field(init=False)
    covered: np.ndarray = field(init=False)  # region pixels supplied
    supplied: np.ndarray = field(init=False)  # canvas pixels supplied (region and context)

    def __post_init__(self) -> None:
        h, w, c = self.height, self.width, self.context
        self.canvas = torch.zeros(3, h + 2 * c, w + 2 * c, dtype=torch.float32)
        self.covered = np.zeros((h, w), dtype=bool)
        self.supplied = np.zeros((h + 2 * c, w + 2 * c), dtype=bool)

    def clip(self, x: int, y: int, width: int, height: int) -> tuple[int, int, int, int] | None:
        """The part of a piece at region pixel ``(x, y)`` that lands on the canvas, as
        region-pixel ``(x0, y0, x1, y1)``; ``None`` when it lies wholly beyond the context."""
        c = self.context
        x0, y0 = max(x, -c), max(y, -c)
        x1, y1 = min(x + width, self.width + c), min(y + height, self.height + c)
        if x0 >= x1 or y0 >= y1:
            return None
        return x0, y0, x1, y1

    def place(self, pixels: torch.Tensor, x: int, y: int) -> tuple[int, int, int, int]:
        """Put normalized ``[3, h, w]`` pixels whose top-left is region pixel ``(x, y)``
        (negative: in the context). Returns the interior part covered, ``(x0, y0, x1, y1)``
        in region pixels (empty when the piece is context only)."""
        c = self.context
        h, w = pixels.shape[-2:]
        box = self.clip(x, y, w, h)
        if box is None:
            return 0, 0, 0, 0
        x0, y0, x1, y1 = box
        sub = pixels[:, y0 - y : y1 - y, x0 - x : x1 - x]
        self.canvas[:, y0 + c : y1 + c, x0 + c : x1 + c] = sub
        self.supplied[y0 + c : y1 + c, x0 + c : x1 + c] = True
        ix0, iy0 = max(x0, 0), max(y0, 0)
        ix1, iy1 = min(x1, self.width), min(y1, self.height)
        if ix0 < ix1 and iy0 < iy1:
            self.covered[iy0:iy1, ix0:ix1] = True
        return ix0, iy0, max(ix0, ix1), max(iy0, iy1)

    def mirror_missing_context(self) -> None:
        """Fill each side's context that was not supplied with the mirror image.

        On each side, the context rows/columns supplied all along the region count as real;
        beyond them the image (region plus real context) is reflected, exactly as
        ``logit_heatmap`` pads an image it is given without margin. A side with context but
        a corner without: everything is mirrored from the region alone.
        """
        c, h, w = self.context, self.height, self.width
        s = self.supplied

        def depth(lines: Iterator[np.ndarray]) -> int:
            d = 0
            for line in lines:
                if not line.all():
                    break
                d += 1
            return d

        top = depth(s[c - 1 - k, c : c + w] for k in range(c))
        bottom = depth(s[c + h + k, c : c + w] for k in range(c))
        left = depth(s[c : c + h, c - 1 - k] for k in range(c))
        right = depth(s[c : c + h, c + w + k] for k in range(c))
        if not s[c - top : c + h + bottom, c - left : c + w + right].all():
            top = bottom = left = right = 0
        if min(top, bottom, left, right) == c:
            return
        core = self.canvas[:, c - top : c + h + bottom, c - left : c + w + right]
        if min(core.shape[1:]) <= c:
            raise MilsilError(
                f"the region is {w}x{h} px with {min(top, bottom, left, right)} px of context on "
                f"its narrowest side; a heatmap needs at least {2 * c + 1}x{2 * c + 1} pixels "
                "(the receptive field): send a larger region or context around it"
            )
        self.canvas = mirror_pad(core, c - left, c - right, c - top, c - bottom).contiguous()


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
