"""The familiarity score's appearance part computed by hand (numpy only, from the stored
checkpoint values), so tests check the library against an independent computation."""

from __future__ import annotations

import numpy as np

PAIRS = ((0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2))


def hand_sums(rgb: np.ndarray) -> np.ndarray:
    """The tissue pixels' sums, then all pixels': count, OD sums, OD product sums, then
    squared-Laplacian sums and counts per octave (centres mostly in the set)."""
    od = -np.log((rgb.astype(np.float64) + 1.0) / 256.0)
    colour = od.max(axis=2) - od.min(axis=2)
    tissue = ((od.sum(axis=2) > 0.25) & (colour > 0.08)).astype(np.float64)
    return np.concatenate([_part(od, tissue), _part(od, np.ones_like(tissue))])


def _pool(a: np.ndarray) -> np.ndarray:
    h, w = a.shape[0] // 2, a.shape[1] // 2
    return a[: 2 * h, : 2 * w].reshape(h, 2, w, 2).mean(axis=(1, 3))


def _part(od: np.ndarray, weight: np.ndarray) -> np.ndarray:
    flat, w = od.reshape(-1, 3), weight.reshape(-1)
    energy, counts = [0.0] * 4, [0.0] * 4
    detail, inside = od.sum(axis=2), weight
    for octave in range(4):
        if octave:
            detail, inside = _pool(detail), _pool(inside)
        if min(detail.shape) < 3:
            break
        c = detail[1:-1, 1:-1]
        lap = detail[:-2, 1:-1] + detail[2:, 1:-1] + detail[1:-1, :-2] + detail[1:-1, 2:] - 4 * c
        centre = inside[1:-1, 1:-1] >= 0.5
        energy[octave], counts[octave] = float((lap[centre] ** 2).sum()), float(centre.sum())
    products = [float((flat[:, i] * flat[:, j] * w).sum()) for i, j in PAIRS]
    return np.array([w.sum(), *(flat * w[:, None]).sum(axis=0), *products, *energy, *counts])


def hand_appearance_score(stored: dict, sums: np.ndarray) -> float:
    """The appearance score of ``sums`` against a checkpoint's stored appearance part."""
    part = stored["appearance"]
    tissue, everything = sums[:18], sums[18:]
    sums = tissue if tissue[0] > 0 and tissue[0] >= 0.05 * everything[0] else everything
    n = sums[0]
    mean = sums[1:4] / n
    cov = np.zeros((3, 3))
    for k, (i, j) in enumerate(PAIRS):
        cov[i, j] = cov[j, i] = sums[4 + k] / n - mean[i] * mean[j]
    sd = np.sqrt(np.diag(cov))
    corr = [cov[0, 1] / sd[0] / sd[1], cov[0, 2] / sd[0] / sd[2], cov[1, 2] / sd[1] / sd[2]]
    detail = [np.log(sums[10 + o] / sums[14 + o] + 1e-6) for o in range(4)]
    descriptor = np.array([*mean, *np.log(sd), *corr, *detail])
    z = (descriptor - part["mean"].numpy()) / part["scale"].numpy()
    distance = z @ part["precision"].numpy() @ z / len(z)
    return (distance - part["typical"]) / part["spread"]


def hand_score(stored: dict, feature_score: float, sums: np.ndarray | None) -> float:
    """The region score: the feature score, or the larger of it and the appearance score
    moved onto the feature threshold."""
    if sums is None or "appearance" not in stored:
        return feature_score
    looks = hand_appearance_score(stored, sums)
    shifted = looks - stored["appearance"]["threshold"] + stored["threshold"]
    return max(feature_score, shifted)
