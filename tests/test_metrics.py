"""Metrics against hand-computed cases and a brute-force pair count."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from milsil.engine.metrics import (
    accuracy,
    auroc,
    dice,
    format_mean_std,
    mean_std,
    normalize_map,
    pixel_auroc,
    pointing_game,
)
from milsil.errors import MilsilError


def pair_auroc(scores, positive) -> float:
    """P(positive scores above negative), ties 1/2: the definition, by counting pairs."""
    pos = [s for s, p in zip(scores, positive, strict=True) if p]
    neg = [s for s, p in zip(scores, positive, strict=True) if not p]
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_accuracy_indices_and_scores():
    assert accuracy([0, 1, 1, 0], [0, 1, 0, 0]) == 0.75
    scores = np.array([[0.9, 0.1], [0.2, 0.8], [0.4, 0.6]])
    assert accuracy(scores, [0, 1, 0]) == pytest.approx(2 / 3)
    assert accuracy(torch.tensor([[1.0, 2.0]]), torch.tensor([1])) == 1.0
    assert math.isnan(accuracy([], []))


def test_accuracy_rejects_mismatched_lengths():
    with pytest.raises(MilsilError, match="labels"):
        accuracy([0, 1], [0])


def test_binary_auroc_hand_computed():
    # positives 0.35, 0.8; negatives 0.1, 0.4: pairs won 1+0 and 1+1 -> 3/4
    assert auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    assert auroc([0.1, 0.2, 0.3], [0, 1, 1]) == 1.0
    assert auroc([0.3, 0.2, 0.1], [0, 1, 1]) == 0.0
    assert auroc([0.5, 0.5, 0.5, 0.5], [0, 1, 0, 1]) == 0.5  # ties count one half
    # [M, 2] probabilities: column 1 is the positive score
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.65, 0.35], [0.2, 0.8]])
    assert auroc(probs, [0, 0, 1, 1]) == pytest.approx(0.75)


def test_binary_auroc_matches_pair_count_with_ties():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, 60).astype(float)  # many ties
    labels = rng.integers(0, 2, 60)
    assert auroc(scores, labels) == pytest.approx(pair_auroc(scores, labels == 1))


def test_auroc_single_class_is_nan():
    assert math.isnan(auroc([0.2, 0.7], [1, 1]))


def test_multiclass_auroc_is_macro_one_vs_rest():
    scores = np.array(
        [
            [0.7, 0.2, 0.1],
            [0.3, 0.4, 0.3],
            [0.2, 0.2, 0.6],
            [0.5, 0.3, 0.2],
            [0.1, 0.7, 0.2],
            [0.3, 0.3, 0.4],
        ]
    )
    labels = np.array([0, 1, 2, 1, 1, 0])
    # class 0: positives 0.7, 0.3 vs negatives 0.3, 0.2, 0.5, 0.1 -> (4 + 0.5 + 1 + 0 + 1) / 8
    assert pair_auroc(scores[:, 0], labels == 0) == pytest.approx(6.5 / 8)
    expected = np.mean([pair_auroc(scores[:, k], labels == k) for k in range(3)])
    assert auroc(scores, labels) == pytest.approx(expected)


def test_multiclass_auroc_skips_absent_class():
    scores = np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.6, 0.3, 0.1]])
    labels = [0, 1, 0]  # class 2 absent: its one-vs-rest AUROC is undefined
    expected = np.mean([pair_auroc(scores[:, 0], [1, 0, 1]), pair_auroc(scores[:, 1], [0, 1, 0])])
    assert auroc(scores, labels) == pytest.approx(expected)


def test_auroc_rejects_bad_labels():
    with pytest.raises(MilsilError, match="labels must lie"):
        auroc(np.zeros((2, 3)), [0, 3])
    with pytest.raises(MilsilError, match="binary"):
        auroc([0.1, 0.2], [0, 2])


def test_pixel_auroc():
    mask = np.array([[1, 0], [0, 0]], dtype=bool)
    assert pixel_auroc(np.array([[1.0, 0.0], [0.0, 0.0]]), mask) == 1.0
    assert pixel_auroc(np.array([[0.0, 1.0], [0.5, 0.5]]), mask) == 0.0
    heat = np.array([[0.5, 0.5], [0.2, 0.9]])  # positive 0.5 vs 0.5, 0.2, 0.9 -> (0.5+1+0)/3
    assert pixel_auroc(heat, mask) == pytest.approx(0.5)
    assert math.isnan(pixel_auroc(heat, np.zeros((2, 2), bool)))
    assert pixel_auroc(torch.tensor(heat), torch.tensor(mask)) == pytest.approx(0.5)


def test_heatmap_and_mask_must_match():
    with pytest.raises(MilsilError, match="differ in size"):
        pixel_auroc(np.zeros((4, 4)), np.zeros((4, 5), bool))
    with pytest.raises(MilsilError, match="2-d"):
        dice(np.zeros((1, 4, 4)), np.zeros((1, 4, 4), bool), 0.5)
    with pytest.raises(MilsilError, match="NaN"):
        pointing_game(np.full((2, 2), np.nan), np.ones((2, 2), bool))


def test_pointing_game():
    mask = np.zeros((5, 5), bool)
    mask[1, 1] = True
    heat = np.zeros((5, 5))
    heat[1, 1] = 2.0
    assert pointing_game(heat, mask) is True
    heat[4, 4] = 3.0
    assert pointing_game(heat, mask) is False
    heat[1, 1] = 3.0  # tie between a pixel inside and one outside: not a hit
    assert pointing_game(heat, mask) is False
    assert pointing_game(np.ones((5, 5)), np.ones((5, 5), bool)) is True
    far = np.zeros((5, 5))
    far[1, 3] = 1.0  # two pixels from the mask
    assert pointing_game(far, mask, tolerance=1) is False
    assert pointing_game(far, mask, tolerance=2) is True
    with pytest.raises(MilsilError, match="non-empty mask"):
        pointing_game(heat, np.zeros((5, 5), bool))


def test_dice():
    heat = np.array([[0.9, 0.2], [0.6, 0.1]])
    mask = np.array([[1, 1], [0, 0]], dtype=bool)
    # thresholded {(0,0), (1,0)} vs mask {(0,0), (0,1)}: 2*1 / (2+2)
    assert dice(heat, mask, 0.5) == pytest.approx(0.5)
    assert dice(heat, mask, 0.15) == pytest.approx(2 * 2 / (3 + 2))
    assert dice(heat, np.zeros((2, 2), bool), 1.0) == 1.0  # both empty
    assert dice(heat, np.zeros((2, 2), bool), 0.5) == 0.0
    with pytest.raises(MilsilError, match="threshold"):
        dice(heat, mask, float("nan"))


def test_normalize_map_and_mean_std():
    np.testing.assert_allclose(
        normalize_map(np.array([[2.0, 4.0], [3.0, 2.0]])), [[0, 1], [0.5, 0]]
    )
    assert normalize_map(np.ones((2, 2))).sum() == 0
    mean, std, n = mean_std([0.5, float("nan"), 1.0])
    assert (mean, n) == (0.75, 2) and std == pytest.approx(math.sqrt(0.125))  # n - 1
    assert math.isnan(mean_std([])[0])
    mean, std, n = mean_std([0.7])
    assert (mean, n) == (0.7, 1) and math.isnan(std)  # no spread from one value


def test_sample_std_reproduces_the_papers_own_numbers():
    """The paper's CRC MIL 98.00 +- 2.74 (Tables 1 and 2) is five folds {100, 100, 95,
    100, 95}: the sample std (n - 1) gives 2.74, the population std would give 2.45."""
    mean, std, n = mean_std([100, 100, 95, 100, 95])
    assert n == 5 and format_mean_std(mean, std, n) == "98.00 +- 2.74"
    assert f"{np.std([100, 100, 95, 100, 95]):.2f}" == "2.45"
    # 92.00 +- 2.74 (BagNet) and 94.00 +- 2.24 (MILBagNet) fit five folds of 20 images too
    assert format_mean_std(*mean_std([95, 90, 95, 90, 90])) == "92.00 +- 2.74"
    assert format_mean_std(*mean_std([95, 95, 95, 95, 90])) == "94.00 +- 2.24"
    assert format_mean_std(*mean_std([0.5])) == "0.50" and format_mean_std(*mean_std([])) == "N/A"
