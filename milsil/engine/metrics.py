"""Classification and localization metrics, with no dependency beyond numpy.

The paper reports patch-level (SIL) and bag-level (MIL) accuracy; we add AUROC (threshold
free, so it does not hide a badly calibrated model) and, for the heatmaps, three measures
of how well a map points at the annotated malignant nuclei:

* ``pixel_auroc``  -- does the map rank mask pixels above the rest (threshold free)?
* ``pointing_game`` -- is the single hottest pixel inside the mask?
* ``dice``         -- overlap of the thresholded map with the mask.

AUROC is computed from ranks (the Mann-Whitney U statistic, ties get average ranks), which
is exact and needs no sklearn. Where a metric is undefined (only one class present) it is
``nan``, so that fold averages can skip it explicitly instead of silently counting 0.5.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from milsil.errors import MilsilError


def _as_numpy(x: Any, name: str) -> np.ndarray:
    """Accept numpy arrays, torch tensors and sequences; always return a numpy array."""
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch here
        x = x.detach().cpu().float().numpy() if x.is_floating_point() else x.detach().cpu().numpy()
    try:
        return np.asarray(x)
    except Exception as exc:  # pragma: no cover - exotic inputs
        raise MilsilError(f"{name} is not array-like: {exc}") from None


def _labels(labels: Any, n: int) -> np.ndarray:
    y = _as_numpy(labels, "labels")
    if y.ndim != 1 or len(y) != n:
        raise MilsilError(
            f"labels must be a 1-d sequence of {n} class indices, got shape {y.shape}"
        )
    if y.size and (not np.issubdtype(y.dtype, np.integer) and not np.all(y == np.round(y))):
        raise MilsilError("labels must be integer class indices")
    return y.astype(np.int64)


def accuracy(predictions: Any, labels: Any) -> float:
    """Fraction of correct predictions.

    ``predictions``: class indices ``[M]`` or scores/logits/probabilities ``[M, C]`` (arg-max
    is taken). ``nan`` for an empty set.
    """
    p = _as_numpy(predictions, "predictions")
    if p.ndim == 2:
        p = p.argmax(axis=1)
    elif p.ndim != 1:
        raise MilsilError(
            f"predictions must be [M] class indices or [M, C] scores, got shape {p.shape}"
        )
    y = _labels(labels, len(p))
    if len(y) == 0:
        return math.nan
    return float(np.mean(p.astype(np.int64) == y))


def _rank_auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Binary AUROC via average ranks: P(score of a positive > score of a negative), ties 1/2."""
    n_pos = int(positive.sum())
    n_neg = int(positive.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        return math.nan
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(scores.size, dtype=np.float64)
    # Average rank (1-based) of each run of equal scores.
    boundaries = np.flatnonzero(np.diff(sorted_scores)) + 1
    starts = np.concatenate(([0], boundaries))
    ends = np.concatenate((boundaries, [scores.size]))
    run_rank = (starts + ends + 1) / 2.0  # mean of (start+1 .. end)
    ranks[order] = np.repeat(run_rank, ends - starts)
    u = ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def auroc(scores: Any, labels: Any) -> float:
    """Area under the ROC curve.

    Binary: ``scores`` ``[M]`` (higher = class 1) or ``[M, 2]`` class probabilities (column 1
    is used; pass softmax probabilities, not raw logits, whose column 1 alone does not rank
    like the probability does).
    Multi-class ``[M, C]``: one-vs-rest AUROC per class present in ``labels`` (and absent
    from none), macro-averaged. ``nan`` when fewer than two classes are present.
    """
    s = _as_numpy(scores, "scores").astype(np.float64)
    if s.ndim not in (1, 2):
        raise MilsilError(f"scores must be [M] or [M, C], got shape {s.shape}")
    y = _labels(labels, s.shape[0])
    if s.ndim == 1:
        if y.size and (y.min() < 0 or y.max() > 1):
            raise MilsilError("1-d scores need binary labels (0/1)")
        return _rank_auroc(s, y == 1)
    c = s.shape[1]
    if c < 2:
        raise MilsilError(f"[M, C] scores need C >= 2 classes, got C={c}")
    if y.size and (y.min() < 0 or y.max() >= c):
        raise MilsilError(f"labels must lie in 0..{c - 1} for {c}-column scores")
    if c == 2:
        return _rank_auroc(s[:, 1], y == 1)
    per_class = [_rank_auroc(s[:, k], y == k) for k in range(c)]
    defined = [a for a in per_class if not math.isnan(a)]
    return float(np.mean(defined)) if defined else math.nan


def _heatmap_and_mask(heatmap: Any, mask: Any) -> tuple[np.ndarray, np.ndarray]:
    h = _as_numpy(heatmap, "heatmap").astype(np.float64)
    m = _as_numpy(mask, "mask")
    if h.ndim != 2:
        raise MilsilError(f"heatmap must be a 2-d HxW map, got shape {h.shape}")
    if m.shape != h.shape:
        raise MilsilError(
            f"heatmap {h.shape} and mask {m.shape} differ in size; resample one to the other first"
        )
    if not np.all(np.isfinite(h)):
        raise MilsilError("heatmap contains NaN or infinite values")
    return h, m.astype(bool)


def pixel_auroc(heatmap: Any, mask: Any) -> float:
    """AUROC of heatmap values as a pixel classifier of ``mask``; ``nan`` if the mask is
    empty or full (nothing to separate)."""
    h, m = _heatmap_and_mask(heatmap, mask)
    return _rank_auroc(h.ravel(), m.ravel())


def pointing_game(heatmap: Any, mask: Any, tolerance: int = 0) -> bool:
    """True when the heatmap's maximum lies inside the mask (or within ``tolerance`` pixels).

    Only meaningful for images that contain the target: an empty mask is an error. When
    several pixels share the maximum, the hit counts only if all of them are inside, so a
    flat (uninformative) map never scores.
    """
    h, m = _heatmap_and_mask(heatmap, mask)
    if not m.any():
        raise MilsilError("pointing_game needs a non-empty mask (skip images without a target)")
    if tolerance < 0:
        raise MilsilError(f"tolerance must be >= 0 pixels, got {tolerance}")
    if tolerance > 0:
        from scipy.ndimage import distance_transform_edt

        m = distance_transform_edt(~m) <= tolerance
    peaks = h == h.max()
    return bool(np.all(m[peaks]))


def dice(heatmap: Any, mask: Any, threshold: float) -> float:
    """Dice overlap ``2|A n B| / (|A| + |B|)`` of ``heatmap >= threshold`` with ``mask``.

    Both empty counts as perfect agreement (1.0).
    """
    h, m = _heatmap_and_mask(heatmap, mask)
    if not math.isfinite(float(threshold)):
        raise MilsilError(f"threshold must be a finite number, got {threshold!r}")
    a = h >= threshold
    total = int(a.sum()) + int(m.sum())
    if total == 0:
        return 1.0
    return float(2.0 * np.logical_and(a, m).sum() / total)


def normalize_map(heatmap: Any) -> np.ndarray:
    """Min-max scale a map to [0, 1] (constant maps become all zeros).

    Used to put logit heatmaps, CAM and Grad-CAM on one scale before a common Dice threshold.
    """
    h = _as_numpy(heatmap, "heatmap").astype(np.float64)
    lo, hi = float(h.min()), float(h.max())
    if hi - lo <= 0:
        return np.zeros_like(h)
    return (h - lo) / (hi - lo)


def mean_std(values: list[float]) -> tuple[float, float, int]:
    """Mean and sample standard deviation (n - 1 in the denominator, as the paper's
    "mean +- std": its 98.00 +- 2.74 is {100, 100, 95, 100, 95}) over the defined (non-nan)
    values, and how many there were. The std is ``nan`` with fewer than two values."""
    finite = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not finite:
        return math.nan, math.nan, 0
    arr = np.asarray(finite)
    std = float(arr.std(ddof=1)) if len(finite) > 1 else math.nan
    return float(arr.mean()), std, len(finite)


def format_mean_std(mean: float, std: float, n: int, scale: float = 1.0, digits: int = 2) -> str:
    """``"mean +- std"`` (sample std), the mean alone when there is one value, ``N/A`` for none."""
    if n == 0 or mean is None or math.isnan(mean):
        return "N/A"
    if std is None or math.isnan(std):
        return f"{scale * mean:.{digits}f}"
    return f"{scale * mean:.{digits}f} +- {scale * std:.{digits}f}"
