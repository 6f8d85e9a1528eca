"""Nucleus-level localization: does a map score malignant nuclei above benign ones?

The paper's claim for the logit heatmap is fine detail at nucleus level. Pixel metrics
(:mod:`milsil.experiments.localization`) reward smooth maps that cover whole clusters; here
every nucleus of the ground-truth instance masks (:mod:`milsil.data.instances`) is scored by
the mean of a map over its pixels (:func:`milsil.inference.objects.measure_objects`), and

* ``object_auroc``: AUROC of malignant vs benign nuclei, pooled over all nuclei of all
  evaluated images (benign images included: that is where look-alikes live);
* ``object_auroc_within``: the same within each target-class image that holds both
  classes, averaged over images (can the map separate touching neighbours?);
* ``object_pointing``: the nucleus-level pointing game, on target-class images: is the
  nucleus with the highest score malignant (ties count only when all tied are)?
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from milsil.engine.metrics import auroc
from milsil.inference.objects import measure_objects

OBJECT_KEYS = ("object_auroc", "object_auroc_within", "object_pointing")


def score_nuclei(
    heat: np.ndarray,
    labels: np.ndarray,
    table: Sequence[dict[str, Any]],
    target_name: str,
    min_pixels: int = 4,
) -> tuple[np.ndarray, np.ndarray]:
    """``(scores, is_target)`` of the nuclei holding at least ``min_pixels`` pixels of
    ``labels`` (already cropped like ``heat``), each scored by the mean of ``heat`` over them.
    Nuclei with a non-finite score are left out."""
    ids = [int(n["id"]) for n in table]
    if not ids:
        return np.zeros(0), np.zeros(0, dtype=bool)
    m = measure_objects(heat, labels, ids=ids)
    scores = m.mean_logit[:, 0]
    target = np.array([n["class"] == target_name for n in table], dtype=bool)
    keep = (m.pixels >= min_pixels) & np.isfinite(scores)
    return scores[keep], target[keep]


class NucleusScores:
    """Collects per-image nucleus scores of several maps and summarizes them."""

    def __init__(self) -> None:
        self.images: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}

    def add(self, name: str, scores: np.ndarray, is_target: np.ndarray) -> None:
        self.images.setdefault(name, []).append((scores, is_target))

    def summary(self) -> dict[str, dict[str, float]]:
        """Per map: ``object_auroc``, ``object_auroc_within``, ``object_pointing`` and the
        number of ``nuclei`` and of target ``target_nuclei`` scored."""
        return {name: summarize_nuclei(per_image) for name, per_image in self.images.items()}


def summarize_nuclei(per_image: Sequence[tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    """The three measures of the module docstring from per-image ``(scores, is_target)``."""
    if not per_image:
        return {k: math.nan for k in OBJECT_KEYS} | {"nuclei": 0, "target_nuclei": 0}
    scores = np.concatenate([s for s, _ in per_image])
    target = np.concatenate([t for _, t in per_image])
    within, pointing = [], []
    for s, t in per_image:
        if not t.any():
            continue
        if (~t).any():
            within.append(auroc(s, t.astype(int)))
        pointing.append(float(np.all(t[s == s.max()])))
    return {
        "object_auroc": auroc(scores, target.astype(int)) if len(scores) else math.nan,
        "object_auroc_within": float(np.mean(within)) if within else math.nan,
        "object_pointing": float(np.mean(pointing)) if pointing else math.nan,
        "nuclei": int(len(scores)),
        "target_nuclei": int(target.sum()),
    }
