"""Synthetic H&E-like histology with pixel ground truth, for tests, demos and benchmarks.

Real data (CRC HistoPhenotypes, CAMELYON16) cannot be shipped or downloaded, yet training,
heatmap localisation and the QuPath round trip all need images whose malignant nuclei are
known to the pixel. This module draws them.

Images are rendered in optical density (Beer-Lambert), the way stains absorb light, so that
colours mix like real haematoxylin and eosin: ``OD = background + H * h_vec + E * e_vec`` and
``RGB = 255 * exp(-OD)``. The eosin map holds stroma (smooth density, wavy fibres) and
unstained lumen; the haematoxylin map holds nuclei:

* benign: small round epithelial/stromal nuclei (light to mid purple), spindle-shaped
  fibroblast nuclei along the fibres, small dark lymphocytes, and nuclei lining lumina.
  They occur in every image, malignant or not, so "has a nucleus" is not the label.
* malignant (only in malignant images): larger, darker, irregular outlines, coarse chromatin
  and a thickened rim, crowded in one or a few clusters.

The label of an image is whether it contains malignant nuclei; the mask marks their pixels.
Patient-level effects (stain vectors, stain strength, background tint, nuclear density,
amount of lumen) make a patient-level split meaningful: a model must generalise across them.

Everything is vectorised numpy/scipy (nuclei are drawn all at once, no per-pixel loops) and
deterministic given the ``numpy.random.Generator``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from milsil.data.bags import write_manifest
from milsil.errors import MilsilError

CLASS_NAMES = ("benign", "malignant")

# Ruifrok & Johnston stain optical-density vectors (unit length): the standard H&E basis.
_H_VEC = np.array([0.650, 0.704, 0.286])
_E_VEC = np.array([0.072, 0.990, 0.105])

# Nucleus kinds, drawn into the haematoxylin map. Radii in pixels (semi-axes), density in
# stain concentration units. Malignant nuclei are ~2x the diameter of benign ones and darker,
# so a 9x9 window (BagNet-9's receptive field) can tell them apart; lymphocytes are as dark
# as the lighter malignant nuclei but small, so darkness alone is not the answer.
_KINDS = {
    #              radius      aspect      density      irregular texture rim
    "round": ((2.2, 3.3), (1.0, 1.3), (0.45, 0.85), 0.03, 0.15, 0.0),
    "spindle": ((3.2, 4.8), (2.2, 3.2), (0.50, 0.85), 0.02, 0.10, 0.0),
    "lymph": ((1.7, 2.3), (1.0, 1.15), (0.85, 1.15), 0.02, 0.08, 0.0),
    "malignant": ((3.9, 5.8), (1.0, 1.5), (1.05, 1.65), 0.11, 0.30, 0.35),
}


@dataclass(frozen=True)
class StainStyle:
    """Per-patient (per-slide) appearance: what differs between labs, scanners and staining runs."""

    h_vec: tuple[float, float, float]
    e_vec: tuple[float, float, float]
    h_scale: float
    e_scale: float
    background: tuple[float, float, float]
    nuclear_density: float
    lumen: float


def patient_style(rng: np.random.Generator) -> StainStyle:
    """Draw a patient's stain tint, stain strength, background and tissue tendencies."""

    def jitter(vec: np.ndarray, sd: float) -> tuple[float, float, float]:
        v = np.clip(vec + rng.normal(0.0, sd, 3), 0.01, None)
        v = v / np.linalg.norm(v)
        return (float(v[0]), float(v[1]), float(v[2]))

    return StainStyle(
        h_vec=jitter(_H_VEC, 0.05),
        e_vec=jitter(_E_VEC, 0.04),
        h_scale=float(np.exp(rng.normal(0.0, 0.10))),
        e_scale=float(np.exp(rng.normal(0.0, 0.15))),
        background=tuple(float(b) for b in rng.uniform(0.01, 0.06, 3)),
        nuclear_density=float(np.exp(rng.normal(0.0, 0.2))),
        lumen=float(rng.uniform(0.0, 1.0)),
    )


def _as_shape(size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        shape = (int(size), int(size))
    else:
        try:
            shape = (int(size[0]), int(size[1]))
        except (TypeError, IndexError, ValueError):
            raise MilsilError(f"size must be an integer or (height, width), got {size!r}") from None
    if min(shape) < 16 or max(shape) > 8192:
        raise MilsilError(f"image size must be from 16 to 8192 pixels per side, got {shape}")
    return shape


def _interp_matrix(n_out: int, n_in: int, scale: float, offset: float) -> np.ndarray:
    """Linear-interpolation weights mapping ``n_in`` samples to ``n_out`` (dense, tiny)."""
    pos = np.arange(n_out) / scale + offset
    i0 = np.clip(np.floor(pos).astype(int), 0, n_in - 2)
    frac = pos - i0
    m = np.zeros((n_out, n_in))
    m[np.arange(n_out), i0] = 1.0 - frac
    m[np.arange(n_out), i0 + 1] = frac
    return m


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
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


def _nucleus_params(rng: np.random.Generator, kind: str, centers: np.ndarray, angle=None) -> dict:
    """Per-nucleus shape and stain parameters for ``len(centers)`` nuclei of one kind."""
    (r0, r1), (a0, a1), (d0, d1), irregular, texture, rim = _KINDS[kind]
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


def _draw_nuclei(
    shape: tuple[int, int], nuclei: dict, grain: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Render all nuclei at once: haematoxylin density map and hard inside-mask.

    Each nucleus is an ellipse whose boundary radius is modulated by a few harmonics
    (irregular outline), with chromatin texture from ``grain`` and an optional darker rim
    and nucleolus. Overlaps take the maximum density, as stacked nuclei do not add up in a
    thin section as much as they occlude.
    """
    h, w = shape
    dens = np.zeros(shape)
    inside_any = np.zeros(shape, dtype=bool)
    if len(nuclei["cy"]) == 0:
        return dens, inside_any
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
    return dens, inside_any


def _poisson_points(rng: np.random.Generator, count: int, shape: tuple[int, int]) -> np.ndarray:
    return rng.uniform((0, 0), shape, (count, 2))


def _cluster_points(
    rng: np.random.Generator, shape: tuple[int, int], n_clusters: int
) -> np.ndarray:
    """Crowded malignant nuclei: Gaussian clusters, thinned so nuclei touch but rarely stack."""
    h, w = shape
    margin = min(14, min(shape) // 4)
    points = []
    for _ in range(n_clusters):
        centre = rng.uniform((margin, margin), (h - margin, w - margin))
        spread = rng.uniform(5.0, 10.0)
        count = int(rng.integers(10, 22))
        cand = centre + rng.normal(0, spread, (count * 2, 2))
        cand = cand[(cand[:, 0] >= 0) & (cand[:, 0] < h) & (cand[:, 1] >= 0) & (cand[:, 1] < w)]
        points.extend(cand[:count])
    pts = np.array(points).reshape(-1, 2)
    # greedy thinning (per nucleus, not per pixel): keep points at least 6.5 px apart
    keep: list[int] = []
    for i in range(len(pts)):
        if not keep or np.min(np.hypot(*(pts[keep] - pts[i]).T)) >= 6.5:
            keep.append(i)
    return pts[keep]


def synth_image(
    rng: np.random.Generator,
    size: int | tuple[int, int],
    malignant: bool,
    style: StainStyle | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """One H&E-like image and the mask of its malignant nuclei.

    Returns ``(rgb uint8 HxWx3, mask bool HxW)``. ``mask.any()`` is exactly ``malignant``.
    ``style`` is the patient's appearance (drawn from ``rng`` when omitted).
    """
    shape = _as_shape(size)
    h, w = shape
    area = h * w / (128.0 * 128.0)  # nucleus counts are given per 128x128 field
    if style is None:
        style = patient_style(rng)

    # --- eosin: stroma density, wavy fibres, lumen ------------------------------------
    stroma = 0.42 + 0.10 * _smooth_noise(rng, shape, 16.0)
    yy, xx = np.mgrid[0:h, 0:w].astype(float)
    theta = rng.uniform(0, np.pi) + 0.5 * _smooth_noise(rng, shape, 24.0)
    period = rng.uniform(5.0, 8.0)
    phase = (xx * np.cos(theta) + yy * np.sin(theta)) * (2 * np.pi / period)
    phase += 3.0 * _smooth_noise(rng, shape, 9.0)
    fibres = (0.5 + 0.5 * np.cos(phase)) ** 4
    fibres *= np.clip(0.6 + 0.6 * _smooth_noise(rng, shape, 6.0), 0, 1)  # broken, not endless
    fibre_strength = np.clip(0.5 + 0.5 * _smooth_noise(rng, shape, 20.0), 0, 1)
    eosin = stroma + 0.28 * fibres * fibre_strength
    lumen_field = _smooth_noise(rng, shape, 14.0)
    lumen_threshold = 1.9 - 0.9 * style.lumen  # 0-10 % of the area is lumen
    lumen = 1.0 / (1.0 + np.exp(-(lumen_field - lumen_threshold) / 0.08))
    eosin = eosin * (1.0 - 0.93 * lumen)
    grain = ndimage.gaussian_filter(rng.standard_normal(shape), 0.7)
    grain /= grain.std() + 1e-8
    eosin = np.clip(eosin * (1.0 + 0.12 * grain), 0.0, None)

    # --- nuclei -----------------------------------------------------------------------
    tissue = lumen < 0.5
    rate = style.nuclear_density * area

    def in_tissue(points: np.ndarray) -> np.ndarray:
        iy = np.clip(points[:, 0].astype(int), 0, h - 1)
        ix = np.clip(points[:, 1].astype(int), 0, w - 1)
        return points[tissue[iy, ix]]

    groups = []
    round_pts = in_tissue(_poisson_points(rng, int(rng.poisson(16 * rate)), shape))
    groups.append(_nucleus_params(rng, "round", round_pts))
    lymph_pts = in_tissue(_poisson_points(rng, int(rng.poisson(5 * rate)), shape))
    groups.append(_nucleus_params(rng, "lymph", lymph_pts))
    spindle_pts = in_tissue(_poisson_points(rng, int(rng.poisson(9 * rate)), shape))
    sy = np.clip(spindle_pts[:, 0].astype(int), 0, h - 1)
    sx = np.clip(spindle_pts[:, 1].astype(int), 0, w - 1)
    # Fibroblasts lie along the fibres. The wave runs along (y, x) = (sin t, cos t); the fibres
    # are perpendicular to it, and a nucleus' major axis points along (cos a, sin a) in (y, x),
    # so a = -t (mod pi).
    groups.append(_nucleus_params(rng, "spindle", spindle_pts, angle=-theta[sy, sx]))
    # epithelium lining lumina: round nuclei on the lumen border
    border = ndimage.binary_dilation(~tissue, iterations=2) & tissue
    by, bx = np.nonzero(border)
    if len(by):
        n_lining = min(len(by), int(rng.poisson(len(by) / 16.0)))
        pick = rng.choice(len(by), n_lining, replace=False)
        lining = np.stack([by[pick], bx[pick]], 1) + rng.uniform(0, 1, (n_lining, 2))
        groups.append(_nucleus_params(rng, "round", lining))
    # one call per kind: each kind's box is only as large as its largest nucleus
    h_benign = np.zeros(shape)
    for group in groups:
        h_benign = np.maximum(h_benign, _draw_nuclei(shape, group, grain)[0])

    mask = np.zeros(shape, dtype=bool)
    h_malignant = np.zeros(shape)
    if malignant:
        n_clusters = 1 + int(rng.poisson(0.6 * area))
        for _attempt in range(10):
            pts = _cluster_points(rng, shape, n_clusters)
            mal = _nucleus_params(rng, "malignant", pts)
            h_malignant, mask = _draw_nuclei(shape, mal, grain)
            if mask.sum() >= 150:  # at least a few whole nuclei
                break
        if not mask.any():  # pragma: no cover - ten empty draws in a >=16 px image cannot happen
            raise MilsilError("could not place malignant nuclei in the image")
    hema = np.maximum(h_benign, h_malignant)
    # malignant nuclei occlude benign ones they overlap, so the mask is honest
    hema = np.where(mask, h_malignant, hema)

    # --- optical density -> RGB -------------------------------------------------------
    h_scale = style.h_scale * float(np.exp(rng.normal(0, 0.05)))
    e_scale = style.e_scale * float(np.exp(rng.normal(0, 0.05)))
    od = (
        np.asarray(style.background)[None, None, :]
        + (hema * h_scale)[..., None] * np.asarray(style.h_vec)[None, None, :]
        + (eosin * e_scale)[..., None] * np.asarray(style.e_vec)[None, None, :]
    )
    od = ndimage.gaussian_filter(od, (0.5, 0.5, 0))  # optical blur
    rgb = 255.0 * np.exp(-od) + rng.normal(0, 2.0, od.shape)
    return np.clip(rgb + 0.5, 0, 255).astype(np.uint8), mask


def synthesize_dataset(
    out_dir: str | Path,
    patients: int = 10,
    images_per_patient: int = 6,
    size: int = 128,
    malignant_fraction: float = 0.5,
    seed: int = 0,
    verbose: bool = False,
) -> Path:
    """Write ``images/*.png``, ``masks/*.png`` and ``manifest.csv`` (image,label,patient,mask).

    Exactly ``round(malignant_fraction * patients * images_per_patient)`` images are
    malignant, spread over patients at random, so a patient may hold both classes. Each
    patient has one :class:`StainStyle`. Returns the manifest path.
    """
    if not isinstance(patients, int) or patients < 1:
        raise MilsilError(f"patients must be a positive integer, got {patients!r}")
    if not isinstance(images_per_patient, int) or images_per_patient < 1:
        raise MilsilError(
            f"images_per_patient must be a positive integer, got {images_per_patient!r}"
        )
    if not 0.0 <= float(malignant_fraction) <= 1.0:
        raise MilsilError(f"malignant_fraction must be from 0 to 1, got {malignant_fraction!r}")
    shape = _as_shape(size)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise MilsilError(f"output {out} exists and is not a folder")
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)

    total = patients * images_per_patient
    n_malignant = int(round(float(malignant_fraction) * total))
    master = np.random.default_rng(seed)
    labels = np.zeros(total, dtype=bool)
    labels[master.permutation(total)[:n_malignant]] = True
    patient_seeds = master.integers(0, 2**63 - 1, patients)

    rows = []
    for p in range(patients):
        rng = np.random.default_rng(int(patient_seeds[p]))
        style = patient_style(rng)
        patient = f"p{p:03d}"
        for i in range(images_per_patient):
            malignant = bool(labels[p * images_per_patient + i])
            rgb, mask = synth_image(rng, shape, malignant, style=style)
            stem = f"{patient}_{i:03d}"
            Image.fromarray(rgb).save(out / "images" / f"{stem}.png", compress_level=1)
            Image.fromarray(mask).save(out / "masks" / f"{stem}.png")
            rows.append(
                (f"images/{stem}.png", CLASS_NAMES[malignant], patient, f"masks/{stem}.png")
            )
        if verbose:
            print(f"  patient {patient}: {images_per_patient} images written", flush=True)

    return write_manifest(out, rows)
