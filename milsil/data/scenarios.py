"""Scenarios of the synthetic generator: the default task and three harder ones.

On the default task (clusters of large, dark, irregular malignant nuclei among small benign
ones) every model saturates, even at nucleus level. The harder scenarios are built so that
only a map as fine as one nucleus, and a model that learned what makes a nucleus malignant
(irregular outline, coarse chromatin, a thick rim, nucleoli) rather than "large and dark" or
"crowded", can do well:

* ``sparse``: a few (2-4) isolated malignant nuclei among hundreds of benign ones per 128 px
  field. Most of a malignant image's patches hold no malignant nucleus at all, so every
  patch carrying its bag's label (the SIL loss) is mostly wrong.
* ``mimic``: benign look-alikes in every image, malignant or not: dense clusters of small
  dark lymphocytes, and large benign nuclei (as large as malignant ones and overlapping
  them in darkness, alone and in groups) with smooth outlines and fine chromatin.
* ``mixed``: crowded clusters in every image; in malignant images a cluster's malignant
  nuclei are interleaved with benign epithelial ones (no two malignant nuclei touch; most
  touch benign neighbours), so a map that smears over a cluster cannot tell them apart.

The three harder scenarios also vary stain and blur strongly across patients
(:func:`vary_style`); ``default`` does not, and draws exactly what it always drew.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from milsil.data.nuclei import cluster_points, nucleus_params, poisson_points, spaced_points
from milsil.errors import MilsilError


@dataclass(frozen=True)
class Scenario:
    """What a scenario changes: benign nuclei per 128x128 field, extra layouts, variation."""

    name: str
    description: str
    # expected round / lymphocyte / spindle nuclei per 128x128 field (times the patient's
    # nuclear density)
    benign_rates: tuple[float, float, float] = (16.0, 5.0, 9.0)
    variation: bool = False  # strong stain and blur variation across patients by default


SCENARIOS = {
    "default": Scenario(
        "default",
        "clusters of large, dark, irregular malignant nuclei among small benign ones",
    ),
    "sparse": Scenario(
        "sparse",
        "2-4 isolated malignant nuclei among hundreds of benign ones per 128 px field",
        benign_rates=(90.0, 25.0, 20.0),
        variation=True,
    ),
    "mimic": Scenario(
        "mimic",
        "benign look-alikes everywhere: dark lymphocyte clusters, large benign nuclei",
        variation=True,
    ),
    "mixed": Scenario(
        "mixed",
        "crowded clusters where benign and malignant nuclei touch",
        variation=True,
    ),
}


def get_scenario(name: str) -> Scenario:
    if name not in SCENARIOS:
        raise MilsilError(f"unknown scenario {name!r}; allowed: {', '.join(SCENARIOS)}")
    return SCENARIOS[name]


@dataclass
class Layout:
    """Nuclei a scenario adds: benign groups ``(kind label, params)`` drawn over the
    default benign nuclei, and the malignant nuclei (None: the default clusters)."""

    benign: list[tuple[str, dict]] = field(default_factory=list)
    malignant: dict | None = None


def scenario_layout(
    rng: np.random.Generator,
    scenario: Scenario,
    shape: tuple[int, int],
    area: float,
    tissue: np.ndarray,
    malignant: bool,
) -> Layout:
    """The extra nuclei of ``scenario`` for one image (the default scenario draws nothing
    here, so its random stream is unchanged). ``area`` is the image area in 128x128 fields,
    ``tissue`` the bool map where nuclei may lie."""
    return _LAYOUTS[scenario.name](rng, shape, area, tissue, malignant)


QUARTER_MARGIN = 12  # px between a quarter's malignant nucleus centres and its edges


def check_sil_noise(sil_noise: float | None) -> None:
    """``sil_noise``: None, or the fraction of a malignant bag's four quarters that hold
    no malignant nucleus: 0, 0.25, 0.5 or 0.75 (one quarter at least must be malignant)."""
    if sil_noise is None:
        return
    if sil_noise not in (0, 0.25, 0.5, 0.75):
        raise MilsilError(
            f"sil_noise must be 0, 0.25, 0.5 or 0.75 (quarters of a malignant bag without a "
            f"malignant nucleus), got {sil_noise!r}"
        )


def quarter_clusters(
    rng: np.random.Generator, shape: tuple[int, int], sil_noise: float
) -> tuple[np.ndarray, list[int]]:
    """Malignant nucleus centres for a bag of four quarters with SIL label noise
    ``sil_noise``: one malignant cluster in each of ``4 - 4 * sil_noise`` quarters chosen
    at random (numbered 0-3 row by row, the bag order of :func:`milsil.data.image_to_bag`),
    its centres :data:`QUARTER_MARGIN` px inside the quarter so no malignant pixel crosses
    into another one. Returns the centres and the chosen quarters.

    Why: on CRC a bag is four quarters of a 500 px image rich in epithelium, so most of a
    malignant bag's quarters really are malignant; the SIL loss gives every quarter its
    bag's label, and this makes how often that label is wrong a controlled variable.
    """
    check_sil_noise(sil_noise)
    h, w = shape
    qh, qw = h // 2, w // 2
    m = QUARTER_MARGIN
    if min(qh, qw) <= 2 * m + 4:
        raise MilsilError(f"sil_noise needs quarters over {2 * m + 4} px, got a {w}x{h} image")
    chosen = sorted(int(q) for q in rng.permutation(4)[: 4 - round(4 * sil_noise)])
    points = []
    for q in chosen:
        # Small quarters (32 px: 8 px of room for centres) can draw a cluster whose every
        # candidate falls outside; keep the fullest of the attempts, never an empty one.
        local = np.zeros((0, 2))
        for _attempt in range(10):
            drawn = cluster_points(rng, (qh - 2 * m, qw - 2 * m), 1, count=(6, 14))
            if len(drawn) > len(local):
                local = drawn
            if len(local) >= 3:
                break
        if not len(local):  # ten empty draws: one nucleus in the middle of the room
            local = np.array([[(qh - 2 * m) / 2, (qw - 2 * m) / 2]])
        points.append(local + np.array([(q // 2) * qh + m, (q % 2) * qw + m], float))
    return np.concatenate(points), chosen


def _in(points: np.ndarray, tissue: np.ndarray) -> np.ndarray:
    h, w = tissue.shape
    iy = np.clip(points[:, 0].astype(int), 0, h - 1)
    ix = np.clip(points[:, 1].astype(int), 0, w - 1)
    return points[tissue[iy, ix]]


def _default(rng, shape, area, tissue, malignant) -> Layout:
    return Layout()


def _sparse(rng, shape, area, tissue, malignant) -> Layout:
    # the benign crowd comes from the scenario's benign_rates
    if not malignant:
        return Layout()
    count = int(rng.integers(2, 5)) * max(1, round(area))
    margin = min(6.0, min(shape) / 4)
    pts = spaced_points(rng, shape, count, tissue, margin, min_distance=12.0)
    if len(pts) == 0:  # tissue too scarce for the margin: anywhere inside the margin
        pts = spaced_points(rng, shape, count, np.ones(shape, bool), margin, 12.0)
    return Layout(malignant=nucleus_params(rng, "malignant", pts))


def _mimic(rng, shape, area, tissue, malignant) -> Layout:
    groups = []
    n_lymph = 1 + int(rng.poisson(0.7 * area))
    lymph = cluster_points(rng, shape, n_lymph, spread=(4.5, 7.5), count=(20, 36), min_distance=3.6)
    groups.append(("lymph_cluster", nucleus_params(rng, "lymph", _in(lymph, tissue))))
    n_groups = 1 + int(rng.poisson(0.5 * area))
    large = cluster_points(rng, shape, n_groups, spread=(4.0, 8.0), count=(5, 10), min_distance=7.5)
    scattered = poisson_points(rng, int(rng.poisson(4 * area)), shape)
    large = _in(np.concatenate([large, scattered]), tissue)
    groups.append(("large_benign", nucleus_params(rng, "large_benign", large)))
    return Layout(benign=groups)


def _mixed(rng, shape, area, tissue, malignant) -> Layout:
    n_clusters = 1 + int(rng.poisson(0.6 * area))
    pts = np.zeros((0, 2))
    for _attempt in range(10):
        pts = cluster_points(rng, shape, n_clusters, count=(14, 28), min_distance=6.0)
        if len(pts) >= 4:
            break
    if len(pts) < 2:  # a tiny image: two touching nuclei in its middle
        pts = np.array(shape, float)[None] / 2 + np.array([[0.0, -3.0], [0.0, 3.0]])
    if not malignant:
        return Layout(benign=[("epithelial", nucleus_params(rng, "epithelial", pts))])
    # interleave: a nucleus turns malignant only when no neighbour (centres < 8.5 px apart,
    # so touching) is malignant yet, so malignant nuclei sit among benign neighbours
    is_mal = np.zeros(len(pts), dtype=bool)
    for i in rng.permutation(len(pts)):
        near = np.hypot(*(pts - pts[i]).T) < 8.5
        near[i] = False
        if not is_mal[near].any() and rng.random() < 0.7:
            is_mal[i] = True
    if not is_mal.any():
        is_mal[0] = True
    if is_mal.all():
        is_mal[0] = False
    return Layout(
        benign=[("epithelial", nucleus_params(rng, "epithelial", pts[~is_mal]))],
        malignant=nucleus_params(rng, "malignant", pts[is_mal]),
    )


_LAYOUTS: dict[str, Callable[..., Layout]] = {
    "default": _default,
    "sparse": _sparse,
    "mimic": _mimic,
    "mixed": _mixed,
}
