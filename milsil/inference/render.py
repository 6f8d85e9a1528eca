"""Pictures in the style of the paper's figures: a diverging logit map over the tissue."""

from __future__ import annotations

import numpy as np

# Red = evidence for the class, blue = against, white/transparent = neutral (logit 0).
DIVERGING_CMAP = "RdBu_r"


def colorize(
    values: np.ndarray, limit: float | None = None, cmap: str = DIVERGING_CMAP
) -> np.ndarray:
    """Map a 2-D array to RGBA uint8 with a colour map symmetric around 0.

    ``limit``: the value shown at full colour (default: the 99th percentile of |values|),
    so a few extreme pixels do not wash the picture out.
    """
    from matplotlib import colormaps

    values = np.asarray(values, dtype=np.float32)
    if limit is None:
        limit = float(np.percentile(np.abs(values), 99)) if values.size else 1.0
    limit = max(limit, 1e-6)
    scaled = np.clip(values / (2 * limit) + 0.5, 0.0, 1.0)
    return (colormaps[cmap](scaled) * 255).round().astype(np.uint8)


def overlay(
    image: np.ndarray, values: np.ndarray, alpha: float = 0.6, limit: float | None = None
) -> np.ndarray:
    """Blend a logit map over an RGB image; the tissue stays visible where the map is neutral.

    The blend weight grows with |value|, so strongly positive or negative regions are
    coloured and neutral regions show the H&E underneath. ``values`` may be coarser than
    the image (a strided heatmap): it is repeated up to the image size.
    """
    image = np.asarray(image, dtype=np.uint8)
    values = upsample_nearest(np.asarray(values, dtype=np.float32), image.shape[:2])
    if limit is None:
        limit = float(np.percentile(np.abs(values), 99)) if values.size else 1.0
    rgba = colorize(values, limit)
    weight = alpha * np.clip(np.abs(values) / max(limit, 1e-6), 0.0, 1.0)[..., None]
    blended = image.astype(np.float32) * (1 - weight) + rgba[..., :3].astype(np.float32) * weight
    return blended.round().astype(np.uint8)


def upsample_nearest(values: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Repeat a strided map so that sample ``[i, j]`` covers pixels from ``(i*s, j*s)``."""
    h, w = values.shape
    if (h, w) == tuple(shape):
        return values
    sy, sx = -(-shape[0] // h), -(-shape[1] // w)
    return np.repeat(np.repeat(values, sy, axis=0), sx, axis=1)[: shape[0], : shape[1]]


def side_by_side(panels: list[np.ndarray], gap: int = 4) -> np.ndarray:
    """Panels of equal height next to each other on white, for figure-style comparisons."""
    height = max(p.shape[0] for p in panels)
    width = sum(p.shape[1] for p in panels) + gap * (len(panels) - 1)
    canvas = np.full((height, width, 3), 255, dtype=np.uint8)
    x = 0
    for panel in panels:
        if panel.ndim == 2:
            panel = np.repeat(panel[..., None], 3, axis=2)
        canvas[: panel.shape[0], x : x + panel.shape[1]] = panel[..., :3]
        x += panel.shape[1] + gap
    return canvas


def comparison_figure(image: np.ndarray, maps: list[np.ndarray], min_side: int = 384) -> np.ndarray:
    """The paper's Fig. 1 layout: top row the image and each map over it, bottom row the
    maps alone (the image's place left white). Small images are enlarged by an integer
    factor (nearest neighbour, so single pixels stay visible) to at least ``min_side``.
    """
    scale = max(1, -(-min_side // max(image.shape[:2])))
    h, w = image.shape[:2]

    def big(rgb: np.ndarray) -> np.ndarray:
        return np.repeat(np.repeat(rgb, scale, axis=0), scale, axis=1)

    top = [big(image)] + [big(overlay(image, m)) for m in maps]
    bottom = [np.full((h * scale, w * scale, 3), 255, np.uint8)] + [
        big(colorize(upsample_nearest(np.asarray(m, np.float32), (h, w)))[..., :3]) for m in maps
    ]
    first, second = side_by_side(top), side_by_side(bottom)
    gap = np.full((4, first.shape[1], 3), 255, np.uint8)
    return np.concatenate([first, gap, second], axis=0)
