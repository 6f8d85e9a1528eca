"""Augmentation that respects what H&E images are.

A tissue section has no up, down or handedness, so the eight flips/90-degree rotations
(the dihedral group) give new, equally real patches without interpolating pixels. Stain
amount and hue vary between labs and slides; jittering the haematoxylin and eosin channels
in optical-density space (Tellez et al. 2018 style) imitates that, unlike an RGB hue shift.
"""

from __future__ import annotations

import numpy as np

from milsil.errors import MilsilError

# Ruifrok & Johnston optical-density vectors for haematoxylin, eosin and DAB (rows).
_HED = np.array(
    [
        [0.650, 0.704, 0.286],
        [0.072, 0.990, 0.105],
        [0.268, 0.570, 0.776],
    ]
)
_HED = _HED / np.linalg.norm(_HED, axis=1, keepdims=True)
_HED_INV = np.linalg.inv(_HED)


def random_dihedral(patches: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Apply an independent random flip + 90-degree rotation to each of ``[N, p, p, C]`` patches."""
    if patches.ndim != 4 or patches.shape[1] != patches.shape[2]:
        raise MilsilError(f"patches must be [N, p, p, C] with square patches, got {patches.shape}")
    n = len(patches)
    rotations = rng.integers(0, 4, n)
    flips = rng.random(n) < 0.5
    out = np.empty_like(patches)
    for i in range(n):  # per patch, not per pixel: each is one strided view + copy
        view = np.rot90(patches[i], int(rotations[i]), axes=(0, 1))
        out[i] = view[:, ::-1] if flips[i] else view
    return out


def rgb_to_hed(rgb: np.ndarray) -> np.ndarray:
    """``uint8 [..., 3]`` RGB -> stain concentrations ``float [..., 3]`` (H, E, residual)."""
    od = -np.log((rgb.astype(np.float32) + 1.0) / 256.0)
    return od @ _HED_INV.astype(np.float32)


def hed_to_rgb(hed: np.ndarray) -> np.ndarray:
    """Inverse of :func:`rgb_to_hed`, clipped back to ``uint8``."""
    od = hed @ _HED.astype(np.float32)
    rgb = 256.0 * np.exp(-od) - 1.0
    return np.clip(rgb + 0.5, 0, 255).astype(np.uint8)


def hed_jitter(pixels: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Scale and shift each stain's concentration by up to ``strength`` (e.g. 0.05).

    One draw for the whole array: all patches of a bag come from one slide and were
    stained together, so they should change together.
    """
    if strength < 0 or strength > 1:
        raise MilsilError(f"colour jitter strength must be from 0 to 1, got {strength!r}")
    if strength == 0:
        return pixels
    scale = rng.uniform(1.0 - strength, 1.0 + strength, 3).astype(np.float32)
    shift = rng.uniform(-strength, strength, 3).astype(np.float32)
    hed = rgb_to_hed(pixels)
    return hed_to_rgb(hed * scale + shift)
