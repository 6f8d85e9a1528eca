"""Drawing nuclei for the synthetic generator: kinds, layouts, rendering, instance ownership.

:mod:`milsil.data.synth` composes images from these pieces and :mod:`milsil.data.scenarios`
arranges them into harder tasks. Everything is vectorised numpy and deterministic given the
``numpy.random.Generator`` (the default scenario's draws are kept in their original order,
so its images stay bit-identical for a seed).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

# Nucleus kinds, drawn into the haematoxylin map. Radii in pixels (semi-axes), density in
# stain concentration units. Malignant nuclei are ~2x the diameter of benign ones and darker,
# so a 9x9 window (BagNet-9's receptive field) can tell them apart; lymphocytes are as dark
# as the lighter malignant nuclei but small, so darkness alone is not the answer.
# ``large_benign`` (the mimic scenario's look-alikes) are as large as malignant nuclei and
# overlap them in darkness, but have smooth outlines, fine chromatin and no rim or nucleolus;
# ``epithelial`` are the benign members of the mixed scenario's crowded clusters.
KINDS = {
    #              radius      aspect      density      irregular texture rim
    "round": ((2.2, 3.3), (1.0, 1.3), (0.45, 0.85), 0.03, 0.15, 0.0),
    "spindle": ((3.2, 4.8), (2.2, 3.2), (0.50, 0.85), 0.02, 0.10, 0.0),
    "lymph": ((1.7, 2.3), (1.0, 1.15), (0.85, 1.15), 0.02, 0.08, 0.0),
    "malignant": ((3.9, 5.8), (1.0, 1.5), (1.05, 1.65), 0.11, 0.30, 0.35),
    "large_benign": ((3.7, 5.4), (1.0, 1.4), (0.95, 1.45), 0.03, 0.12, 0.0),
    "epithelial": ((2.8, 3.8), (1.0, 1.3), (0.55, 0.95), 0.03, 0.15, 0.0),
}


def _interp_matrix(n_out: int, n_in: int, scale: float, offset: float) -> np.ndarray:
    """Linear-interpolation weights mapping ``n_in`` samples to ``n_out`` (dense, tiny)."""
    pos = np.arange(n_out) / scale + offset
    i0 = np.clip(np.floor(pos).astype(int), 0, n_in - 2)
    frac = pos - i0
    m = np.zeros((n_out, n_in))
    m[np.arange(n_out), i0] = 1.0 - frac
    m[np.arange(n_out), i0 + 1] = frac
    return m


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    """Zero-mean, unit-std noise with features about ``scale`` pixels across.

    Drawn at low resolution and upsampled with two small matrix products: a large Gaussian
    filter (or ``ndimage.zoom``) at full size would cost most of the image's time budget.
    """
    h, w = shape
    low = rng.standard_normal((math.ceil(h / scale) + 3, math.ceil(w / scale) + 3))
    low = ndimage.gaussian_filter(low, 0.8, mode="wrap")
    field = _interp_matrix(h, low.shape[0], scale, 1.0) @ low
    field = field @ _interp_matrix(w, low.shape[1], scale, 1.0).T
    return (field - field.mean()) / (field.std() + 1e-8)


def nucleus_params(rng: np.random.Generator, kind: str, centers: np.ndarray, angle=None) -> dict:
    """Per-nucleus shape and stain parameters for ``len(centers)`` nuclei of one kind."""
    (r0, r1), (a0, a1), (d0, d1), irregular, texture, rim = KINDS[kind]
    n = len(centers)
    radius = rng.uniform(r0, r1, n)
    aspect = rng.uniform(a0, a1, n)
    if angle is None:
        angle = rng.uniform(0, np.pi, n)
    return {
        "cy": centers[:, 0],
        "cx": centers[:, 1],
        # semi-axes with the same area as a circle of `radius`
        "a": radius * np.sqrt(aspect),
        "b": radius / np.sqrt(aspect),
        "angle": np.asarray(angle, dtype=float) + rng.normal(0, 0.15, n),
        "harm_amp": rng.uniform(0.3, 1.0, (n, 4)) * irregular,
        "harm_phase": rng.uniform(0, 2 * np.pi, (n, 4)),
        "density": rng.uniform(d0, d1, n),
        "texture": np.full(n, texture),
        "rim": np.full(n, rim),
        "nucleolus": (rng.random(n) < 0.5) * (rim > 0) * rng.uniform(0.2, 0.5, n),
    }


def draw_nuclei(
    shape: tuple[int, int], nuclei: dict, grain: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Render all nuclei at once: haematoxylin density, hard inside-mask, and who owns a pixel.

    Each nucleus is an ellipse whose boundary radius is modulated by a few harmonics
    (irregular outline), with chromatin texture from ``grain`` and an optional darker rim
    and nucleolus. Overlaps take the maximum density, as stacked nuclei do not add up in a
    thin section as much as they occlude; the nucleus whose density is that maximum owns the
    pixel. Returns ``(density, inside, owner, owner_value)``: ``owner`` is the index of the
    owning nucleus (-1 outside every nucleus), ``owner_value`` its density there (-inf).
    """
    h, w = shape
    dens = np.zeros(shape)
    inside_any = np.zeros(shape, dtype=bool)
    owner = np.full(h * w, -1, dtype=np.int64)
    owner_value = np.full(h * w, -np.inf)
    if len(nuclei["cy"]) == 0:
        return dens, inside_any, owner.reshape(shape), owner_value.reshape(shape)
    reach = int(np.ceil(np.max(nuclei["a"] * (1 + nuclei["harm_amp"].sum(1))))) + 2
    off = np.arange(-reach, reach + 1)
    iy = np.floor(nuclei["cy"]).astype(int)
    ix = np.floor(nuclei["cx"]).astype(int)
    # pixel coordinates of every box cell, relative to the sub-pixel centre: [n, B, B]
    py = (iy[:, None, None] + off[None, :, None]).astype(float)
    px = (ix[:, None, None] + off[None, None, :]).astype(float)
    yy = py + 0.5 - nuclei["cy"][:, None, None]
    xx = px + 0.5 - nuclei["cx"][:, None, None]
    cos, sin = np.cos(nuclei["angle"])[:, None, None], np.sin(nuclei["angle"])[:, None, None]
    u = (yy * cos + xx * sin) / nuclei["a"][:, None, None]
    v = (-yy * sin + xx * cos) / nuclei["b"][:, None, None]
    r = np.hypot(u, v)
    theta = np.arctan2(v, u)
    k = np.arange(2, 6)
    harmonics = nuclei["harm_amp"][:, :, None, None] * np.cos(
        k[None, :, None, None] * theta[:, None] + nuclei["harm_phase"][:, :, None, None]
    )
    boundary = 1.0 + harmonics.sum(1)
    mean_radius = np.sqrt(nuclei["a"] * nuclei["b"])[:, None, None]
    depth = (boundary - r) * mean_radius  # pixels inside the outline (negative outside)
    inside = depth > 0
    cover = np.clip(depth + 0.5, 0.0, 1.0)  # ~1 px anti-aliased edge

    # clip box cells to the image, then read the chromatin grain there
    valid = (py >= 0) & (py < h) & (px >= 0) & (px < w)
    pyi = np.clip(py.astype(int), 0, h - 1)
    pxi = np.clip(px.astype(int), 0, w - 1)
    tex = grain[pyi, pxi]
    value = nuclei["density"][:, None, None] * (1.0 + nuclei["texture"][:, None, None] * tex)
    value = value * (1.0 + nuclei["rim"][:, None, None] * np.exp(-(((depth - 0.8) / 0.9) ** 2)))
    nucleolus = nuclei["nucleolus"][:, None, None] * np.exp(-((r / 0.3) ** 2))
    value = np.clip(value + nucleolus, 0.0, None) * cover

    flat = (pyi * w + pxi)[valid]
    np.maximum.at(dens.reshape(-1), flat, value[valid])
    np.logical_or.at(inside_any.reshape(-1), flat, inside[valid])

    # ownership: among the nuclei whose outline holds a pixel, the one drawn darkest there
    held = valid & inside
    pix = (pyi * w + pxi)[held]
    vals = value[held]
    ids = np.broadcast_to(np.arange(len(nuclei["cy"]))[:, None, None], held.shape)[held]
    order = np.lexsort((vals, pix))  # by pixel, then by value (ties: drawing order)
    pix, vals, ids = pix[order], vals[order], ids[order]
    last = np.ones(len(pix), dtype=bool)
    last[:-1] = pix[1:] != pix[:-1]
    owner[pix[last]] = ids[last]
    owner_value[pix[last]] = vals[last]
    return dens, inside_any, owner.reshape(shape), owner_value.reshape(shape)


def poisson_points(rng: np.random.Generator, count: int, shape: tuple[int, int]) -> np.ndarray:
    return rng.uniform((0, 0), shape, (count, 2))


def cluster_points(
    rng: np.random.Generator,
    shape: tuple[int, int],
    n_clusters: int,
    spread: tuple[float, float] = (5.0, 10.0),
    count: tuple[int, int] = (10, 22),
    min_distance: float = 6.5,
) -> np.ndarray:
    """Crowded nuclei: Gaussian clusters, thinned so nuclei touch but rarely stack.

    The defaults are the malignant clusters of the default scenario: nuclei at least 6.5 px
    apart. ``count`` is the ``[low, high)`` number of candidates kept per cluster.
    """
    h, w = shape
    margin = min(14, min(shape) // 4)
    points = []
    for _ in range(n_clusters):
        centre = rng.uniform((margin, margin), (h - margin, w - margin))
        sd = rng.uniform(*spread)
        n = int(rng.integers(*count))
        cand = centre + rng.normal(0, sd, (n * 2, 2))
        cand = cand[(cand[:, 0] >= 0) & (cand[:, 0] < h) & (cand[:, 1] >= 0) & (cand[:, 1] < w)]
        points.extend(cand[:n])
    pts = np.array(points).reshape(-1, 2)
    # greedy thinning (per nucleus, not per pixel): keep points at least min_distance apart
    keep: list[int] = []
    for i in range(len(pts)):
        if not keep or np.min(np.hypot(*(pts[keep] - pts[i]).T)) >= min_distance:
            keep.append(i)
    return pts[keep]


def spaced_points(
    rng: np.random.Generator,
    shape: tuple[int, int],
    count: int,
    allowed: np.ndarray,
    margin: float,
    min_distance: float,
) -> np.ndarray:
    """Up to ``count`` uniform points where ``allowed`` (bool HxW) holds, ``margin`` px from
    the border and ``min_distance`` px apart (isolated nuclei)."""
    h, w = shape
    cand = rng.uniform((margin, margin), (h - margin, w - margin), (count * 20, 2))
    ok = allowed[cand[:, 0].astype(int), cand[:, 1].astype(int)]
    keep: list[np.ndarray] = []
    for p in cand[ok]:
        if len(keep) == count:
            break
        if not keep or np.min(np.hypot(*(np.array(keep) - p).T)) >= min_distance:
            keep.append(p)
    return np.array(keep).reshape(-1, 2)
