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

Scenarios (:mod:`milsil.data.scenarios`) make the task harder in the ways real slides are
hard: ``sparse`` (a few malignant nuclei among hundreds of benign ones), ``mimic`` (benign
look-alikes: dark lymphocyte clusters, large benign nuclei), ``mixed`` (clusters where benign
and malignant nuclei touch), each with stain and blur varying across patients. ``default``
is the original task, bit-identical for a seed. Every image also gets a per-nucleus instance
label map with each nucleus's class (:mod:`milsil.data.instances`).

Everything is vectorised numpy/scipy (nuclei are drawn all at once, no per-pixel loops) and
deterministic given the ``numpy.random.Generator``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage

from milsil.data.bags import write_manifest
from milsil.data.instances import assemble_instances, write_instance_index, write_instances
from milsil.data.nuclei import (
    cluster_points,
    draw_nuclei,
    nucleus_params,
    poisson_points,
    smooth_noise,
)
from milsil.data.scenarios import (
    SCENARIOS,
    check_sil_noise,
    get_scenario,
    quarter_clusters,
    scenario_layout,
)
from milsil.errors import MilsilError

CLASS_NAMES = ("benign", "malignant")

# Ruifrok & Johnston stain optical-density vectors (unit length): the standard H&E basis.
_H_VEC = np.array([0.650, 0.704, 0.286])
_E_VEC = np.array([0.072, 0.990, 0.105])


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
    blur: float = 0.5  # optical blur, Gaussian sigma in pixels


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


def vary_style(rng: np.random.Generator, style: StainStyle) -> StainStyle:
    """Strong stain and blur variation on top of ``style`` (the harder scenarios' patients).

    Stain vectors move about twice as far, stain strengths vary about twice as much, the
    background tint up to twice as strongly, and the optical blur ranges from crisp
    (sigma 0.3 px) to soft (1.2 px): different labs, stainers and scanner focus.
    """

    def jitter(vec: tuple[float, float, float], sd: float) -> tuple[float, float, float]:
        v = np.clip(np.asarray(vec) + rng.normal(0.0, sd, 3), 0.01, None)
        v = v / np.linalg.norm(v)
        return (float(v[0]), float(v[1]), float(v[2]))

    return dataclasses.replace(
        style,
        h_vec=jitter(style.h_vec, 0.08),
        e_vec=jitter(style.e_vec, 0.06),
        h_scale=style.h_scale * float(np.exp(rng.normal(0.0, 0.18))),
        e_scale=style.e_scale * float(np.exp(rng.normal(0.0, 0.25))),
        background=tuple(float(b) + float(rng.uniform(0.0, 0.06)) for b in style.background),
        blur=float(rng.uniform(0.3, 1.2)),
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


@dataclass(frozen=True)
class SynthSample:
    """One synthetic image with its ground truth.

    ``rgb`` uint8 HxWx3; ``mask`` bool HxW (the malignant nuclei; ``mask.any()`` is the
    label); ``labels`` uint32 HxW instance labels (0 background, ``k`` nucleus ``k``) and
    ``nuclei`` their table (:mod:`milsil.data.instances`): ``mask == isin(labels, malignant
    ids)``.
    """

    rgb: np.ndarray
    mask: np.ndarray
    labels: np.ndarray
    nuclei: list[dict[str, Any]]


def synth_image(
    rng: np.random.Generator,
    size: int | tuple[int, int],
    malignant: bool,
    style: StainStyle | None = None,
    scenario: str = "default",
) -> tuple[np.ndarray, np.ndarray]:
    """One H&E-like image and the mask of its malignant nuclei.

    Returns ``(rgb uint8 HxWx3, mask bool HxW)``. ``mask.any()`` is exactly ``malignant``.
    ``style`` is the patient's appearance (drawn from ``rng`` when omitted).
    :func:`synth_sample` also gives the instance labels.
    """
    sample = synth_sample(rng, size, malignant, style, scenario)
    return sample.rgb, sample.mask


def synth_sample(
    rng: np.random.Generator,
    size: int | tuple[int, int],
    malignant: bool,
    style: StainStyle | None = None,
    scenario: str = "default",
    sil_noise: float | None = None,
) -> SynthSample:
    """One image of ``scenario`` (:mod:`milsil.data.scenarios`) with mask and instances.

    With ``sil_noise`` (0, 0.25, 0.5, 0.75) a malignant image's malignant nuclei are one
    cluster in each of ``4 - 4 * sil_noise`` of its quarters and none in the others
    (:func:`milsil.data.scenarios.quarter_clusters`), instead of the scenario's own."""
    spec = get_scenario(scenario)
    shape = _as_shape(size)
    h, w = shape
    area = h * w / (128.0 * 128.0)  # nucleus counts are given per 128x128 field
    if style is None:
        style = patient_style(rng)

    # --- eosin: stroma density, wavy fibres, lumen ------------------------------------
    stroma = 0.42 + 0.10 * smooth_noise(rng, shape, 16.0)
    yy, xx = np.mgrid[0:h, 0:w].astype(float)
    theta = rng.uniform(0, np.pi) + 0.5 * smooth_noise(rng, shape, 24.0)
    period = rng.uniform(5.0, 8.0)
    phase = (xx * np.cos(theta) + yy * np.sin(theta)) * (2 * np.pi / period)
    phase += 3.0 * smooth_noise(rng, shape, 9.0)
    fibres = (0.5 + 0.5 * np.cos(phase)) ** 4
    fibres *= np.clip(0.6 + 0.6 * smooth_noise(rng, shape, 6.0), 0, 1)  # broken, not endless
    fibre_strength = np.clip(0.5 + 0.5 * smooth_noise(rng, shape, 20.0), 0, 1)
    eosin = stroma + 0.28 * fibres * fibre_strength
    lumen_field = smooth_noise(rng, shape, 14.0)
    lumen_threshold = 1.9 - 0.9 * style.lumen  # 0-10 % of the area is lumen
    lumen = 1.0 / (1.0 + np.exp(-(lumen_field - lumen_threshold) / 0.08))
    eosin = eosin * (1.0 - 0.93 * lumen)
    grain = ndimage.gaussian_filter(rng.standard_normal(shape), 0.7)
    grain /= grain.std() + 1e-8
    eosin = np.clip(eosin * (1.0 + 0.12 * grain), 0.0, None)

    # --- nuclei -----------------------------------------------------------------------
    tissue = lumen < 0.5
    rate = style.nuclear_density * area
    rate_round, rate_lymph, rate_spindle = spec.benign_rates

    def in_tissue(points: np.ndarray) -> np.ndarray:
        iy = np.clip(points[:, 0].astype(int), 0, h - 1)
        ix = np.clip(points[:, 1].astype(int), 0, w - 1)
        return points[tissue[iy, ix]]

    groups = []
    round_pts = in_tissue(poisson_points(rng, int(rng.poisson(rate_round * rate)), shape))
    groups.append(("round", nucleus_params(rng, "round", round_pts)))
    lymph_pts = in_tissue(poisson_points(rng, int(rng.poisson(rate_lymph * rate)), shape))
    groups.append(("lymph", nucleus_params(rng, "lymph", lymph_pts)))
    spindle_pts = in_tissue(poisson_points(rng, int(rng.poisson(rate_spindle * rate)), shape))
    sy = np.clip(spindle_pts[:, 0].astype(int), 0, h - 1)
    sx = np.clip(spindle_pts[:, 1].astype(int), 0, w - 1)
    # Fibroblasts lie along the fibres. The wave runs along (y, x) = (sin t, cos t); the fibres
    # are perpendicular to it, and a nucleus' major axis points along (cos a, sin a) in (y, x),
    # so a = -t (mod pi).
    groups.append(("spindle", nucleus_params(rng, "spindle", spindle_pts, angle=-theta[sy, sx])))
    # epithelium lining lumina: round nuclei on the lumen border
    border = ndimage.binary_dilation(~tissue, iterations=2) & tissue
    by, bx = np.nonzero(border)
    if len(by):
        n_lining = min(len(by), int(rng.poisson(len(by) / 16.0)))
        pick = rng.choice(len(by), n_lining, replace=False)
        lining = np.stack([by[pick], bx[pick]], 1) + rng.uniform(0, 1, (n_lining, 2))
        groups.append(("lining", nucleus_params(rng, "round", lining)))
    layout = scenario_layout(rng, spec, shape, area, tissue, malignant)
    groups += layout.benign
    # one call per kind: each kind's box is only as large as its largest nucleus
    h_benign = np.zeros(shape)
    owners = []
    for kind, group in groups:
        dens, _inside, owner, owner_value = draw_nuclei(shape, group, grain)
        h_benign = np.maximum(h_benign, dens)
        owners.append((kind, owner, owner_value))

    mask = np.zeros(shape, dtype=bool)
    h_malignant = np.zeros(shape)
    mal_owner = None
    if malignant:
        if sil_noise is not None:
            pts, _ = quarter_clusters(rng, shape, sil_noise)
            mal = nucleus_params(rng, "malignant", pts)
            h_malignant, mask, mal_owner, _ = draw_nuclei(shape, mal, grain)
        elif layout.malignant is not None:
            h_malignant, mask, mal_owner, _ = draw_nuclei(shape, layout.malignant, grain)
        else:
            n_clusters = 1 + int(rng.poisson(0.6 * area))
            for _attempt in range(10):
                pts = cluster_points(rng, shape, n_clusters)
                mal = nucleus_params(rng, "malignant", pts)
                h_malignant, mask, mal_owner, _ = draw_nuclei(shape, mal, grain)
                if mask.sum() >= 150:  # at least a few whole nuclei
                    break
        if not mask.any():  # pragma: no cover - ten empty draws in a >=16 px image cannot happen
            raise MilsilError("could not place malignant nuclei in the image")
    hema = np.maximum(h_benign, h_malignant)
    # malignant nuclei occlude benign ones they overlap, so the mask is honest
    hema = np.where(mask, h_malignant, hema)
    labels, nuclei = assemble_instances(shape, owners, mal_owner)

    # --- optical density -> RGB -------------------------------------------------------
    h_scale = style.h_scale * float(np.exp(rng.normal(0, 0.05)))
    e_scale = style.e_scale * float(np.exp(rng.normal(0, 0.05)))
    od = (
        np.asarray(style.background)[None, None, :]
        + (hema * h_scale)[..., None] * np.asarray(style.h_vec)[None, None, :]
        + (eosin * e_scale)[..., None] * np.asarray(style.e_vec)[None, None, :]
    )
    od = ndimage.gaussian_filter(od, (style.blur, style.blur, 0))  # optical blur
    rgb = 255.0 * np.exp(-od) + rng.normal(0, 2.0, od.shape)
    rgb = np.clip(rgb + 0.5, 0, 255).astype(np.uint8)
    return SynthSample(rgb, mask, labels, nuclei)


def synthesize_dataset(
    out_dir: str | Path,
    patients: int = 10,
    images_per_patient: int = 6,
    size: int = 128,
    malignant_fraction: float = 0.5,
    seed: int = 0,
    verbose: bool = False,
    scenario: str = "default",
    stain_variation: bool | None = None,
    sil_noise: float | None = None,
) -> Path:
    """Write ``images/*.png``, ``masks/*.png``, ``manifest.csv`` (image,label,patient,mask),
    the instance masks (``instances/``, indexed by ``instances.csv``) and ``synth.json``.

    Exactly ``round(malignant_fraction * patients * images_per_patient)`` images are
    malignant, spread over patients at random, so a patient may hold both classes. Each
    patient has one :class:`StainStyle`, varied strongly (:func:`vary_style`) when
    ``stain_variation`` (default: the scenario's choice; off for ``default``, whose images
    and masks are bit-identical for a seed). ``sil_noise`` (None, 0, 0.25, 0.5, 0.75): the
    fraction of every malignant image's four quarters without a malignant nucleus
    (:func:`synth_sample`). Returns the manifest path.
    """
    if not isinstance(patients, int) or patients < 1:
        raise MilsilError(f"patients must be a positive integer, got {patients!r}")
    if not isinstance(images_per_patient, int) or images_per_patient < 1:
        raise MilsilError(
            f"images_per_patient must be a positive integer, got {images_per_patient!r}"
        )
    if not 0.0 <= float(malignant_fraction) <= 1.0:
        raise MilsilError(f"malignant_fraction must be from 0 to 1, got {malignant_fraction!r}")
    spec = get_scenario(scenario)
    check_sil_noise(sil_noise)
    variation = spec.variation if stain_variation is None else bool(stain_variation)
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

    rows, index = [], []
    for p in range(patients):
        rng = np.random.default_rng(int(patient_seeds[p]))
        style = patient_style(rng)
        if variation:
            style = vary_style(rng, style)
        patient = f"p{p:03d}"
        for i in range(images_per_patient):
            malignant = bool(labels[p * images_per_patient + i])
            sample = synth_sample(
                rng, shape, malignant, style=style, scenario=scenario, sil_noise=sil_noise
            )
            stem = f"{patient}_{i:03d}"
            Image.fromarray(sample.rgb).save(out / "images" / f"{stem}.png", compress_level=1)
            Image.fromarray(sample.mask).save(out / "masks" / f"{stem}.png")
            inst, table = write_instances(out, stem, sample.labels, sample.nuclei)
            rows.append(
                (f"images/{stem}.png", CLASS_NAMES[malignant], patient, f"masks/{stem}.png")
            )
            index.append((f"images/{stem}.png", inst, table))
        if verbose:
            print(f"  patient {patient}: {images_per_patient} images written", flush=True)

    write_instance_index(out, index)
    settings = {
        "scenario": scenario,
        "description": spec.description,
        "stain_variation": variation,
        "patients": patients,
        "images_per_patient": images_per_patient,
        "size": list(shape),
        "malignant_fraction": float(malignant_fraction),
        "seed": seed,
        "sil_noise": sil_noise,
    }
    (out / "synth.json").write_text(json.dumps(settings, indent=2) + "\n")
    return write_manifest(out, rows)


__all__ = [
    "CLASS_NAMES",
    "SCENARIOS",
    "StainStyle",
    "SynthSample",
    "patient_style",
    "synth_image",
    "synth_sample",
    "synthesize_dataset",
    "vary_style",
]
