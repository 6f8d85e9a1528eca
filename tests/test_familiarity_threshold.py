"""The familiarity threshold (issue 20): a bound on a new patient's false alarms, from
patients whose images come in correlated groups, and the training patients' shift."""

from __future__ import annotations

import numpy as np
import pytest

from milsil.errors import MilsilError
from milsil.models.familiarity import (
    calibrated_threshold,
    patient_threshold,
    training_score_shift,
)


def bound_by_hand(scores, alarms, patients, target=0.05):
    """Every candidate threshold in ascending order, each patient's share of alarmed
    images counted in a plain loop: the first at which ``(sum + 1) / (n + 1) <= target``
    (the new patient counted as all alarms); else the highest score."""
    names = sorted(set(patients))
    quiet = sorted({s for s, a in zip(scores, alarms, strict=True) if not a})
    for t in quiet:
        total = 0.0
        for p in names:
            mine = [i for i, q in enumerate(patients) if q == p]
            total += sum(alarms[i] or scores[i] > t for i in mine) / len(mine)
        if (total + 1) / (len(names) + 1) <= target:
            return t
    return max(scores)


def test_a_worked_example():
    """39 patients of two images, scores 0..77, patient k holding 2k and 2k + 1: the bound
    (sum + 1) / 40 <= 5% allows one patient's worth of alarms, i.e. both images of the
    highest patient (76, 77): the threshold is 75."""
    scores = [float(v) for v in range(78)]
    patients = [f"p{v // 2}" for v in range(78)]
    threshold, rates = patient_threshold(scores, [False] * 78, patients)
    assert threshold == 75.0
    assert rates == {
        "bound": pytest.approx(0.05),
        "patient_false_alarm_rate": pytest.approx(1 / 39),
        "false_alarm_rate": pytest.approx(2 / 78),
    }
    # One image the appearance part already flags (half of patient 0): half a patient left,
    # one image of the highest patient.
    alarms = [True] + [False] * 77
    threshold, rates = patient_threshold(scores, alarms, patients)
    assert threshold == 76.0 and rates["bound"] == pytest.approx(0.05)
    # The appearance part alone over the budget: no feature alarm (the highest score).
    alarms = [True, True, True] + [False] * 75
    threshold, rates = patient_threshold(scores, alarms, patients)
    assert threshold == 77.0 and rates["false_alarm_rate"] == pytest.approx(3 / 78)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_the_threshold_matches_a_plain_loop(seed):
    """Patients with 1-6 images, shared offsets, ties and a few appearance alarms."""
    rng = np.random.default_rng(seed)
    patients, scores = [], []
    for p in range(int(rng.integers(20, 45))):
        offset = rng.normal(0, 1)
        for _ in range(int(rng.integers(1, 7))):
            patients.append(f"p{p}")
            scores.append(round(offset + rng.normal(0, 0.5), 1))  # rounding makes ties
    alarms = list(rng.random(len(scores)) < 0.01)
    threshold, rates = patient_threshold(scores, alarms, patients)
    assert threshold == bound_by_hand(scores, alarms, patients)
    names = sorted(set(patients))
    shares = [
        np.mean([alarms[i] or scores[i] > threshold for i, q in enumerate(patients) if q == p])
        for p in names
    ]
    assert rates["bound"] == pytest.approx((sum(shares) + 1) / (len(names) + 1))
    assert rates["patient_false_alarm_rate"] == pytest.approx(np.mean(shares))


def test_too_few_patients_raise_no_feature_alarm():
    """With ten patients even no alarm gives (0 + 1) / 11 > 5%: the highest score."""
    scores = [float(v) for v in range(30)]
    patients = [f"p{v % 10}" for v in range(30)]
    threshold, rates = patient_threshold(scores, [False] * 30, patients)
    assert threshold == 29.0
    assert rates["bound"] == pytest.approx(1 / 11) and rates["false_alarm_rate"] == 0.0


def test_a_new_patient_raises_at_most_five_percent_on_average():
    """What the bound promises, by simulation: 30 calibration patients of 4 images with a
    patient offset (correlated images), 1000 draws; a new patient's share of alarmed
    images averages within 5%, where the images' 95th percentile raises more."""
    rng = np.random.default_rng(0)
    patients = np.repeat(np.arange(30), 4).astype(str)
    bounded, percentile = [], []
    for _ in range(1000):
        offsets = rng.normal(0, 1, 31)
        calibration = (offsets[:30, None] + 0.5 * rng.normal(size=(30, 4))).ravel()
        new = offsets[30] + 0.5 * rng.normal(size=100)
        threshold, _ = patient_threshold(calibration, [False] * 120, patients)
        bounded.append(np.mean(new > threshold))
        percentile.append(np.mean(new > calibrated_threshold(list(calibration))[0]))
    assert np.mean(bounded) <= 0.05
    assert np.mean(percentile) > 0.06


def test_bad_input_says_what_is_needed():
    with pytest.raises(MilsilError, match="one patient and one appearance judgement per"):
        patient_threshold([1.0, 2.0], [False], ["a", "b"])
    with pytest.raises(MilsilError, match="at least one image"):
        patient_threshold([], [], [])


def test_training_scores_are_raised_by_how_much_held_out_ones_run_higher():
    assert training_score_shift([0.0, 1.0, 2.0], [1.5, 2.5, 3.5]) == 1.5  # medians 1, 2.5
    assert training_score_shift([1.0, 2.0, 3.0], [0.0, 1.0]) == 0.0  # never lowered
    assert training_score_shift([], [1.0]) == 0.0


def test_milsil_train_says_what_the_threshold_rests_on():
    from milsil.cli.train import familiarity_summary

    calibration = {
        "split": "validation",
        "held_out": True,
        "patients": 3,
        "images": 9,
        "calibration_patients": 12,
        "calibration_images": 36,
        "false_alarm_rate": 0.0,
        "target_false_alarm_rate": 0.05,
        "new_patient_bound": 1 / 13,
    }
    few = familiarity_summary({"method": "m", "threshold": 2.5, "calibration": calibration})
    assert few == (
        "  familiarity: m, threshold 2.5 (calibrated on 36 images of 12 patients: validation "
        "and training; 0.0% of the held-out images above it; patient-level bound 7.7%)\n"
        "  familiarity: 12 patients are too few to bound a new patient's false alarms by 5% "
        "(19 or more are needed): no calibration image's feature part is above the threshold"
    )
    # Enough patients, but the appearance part's alarms (3 of 120 images) fill the bound.
    full = calibration | {"calibration_patients": 30, "new_patient_bound": 1.75 / 31}
    assert familiarity_summary({"method": "m", "threshold": 2.5, "calibration": full}).endswith(
        "bound 5.6%)\n  familiarity: the appearance part's alarms on them already fill the 5% "
        "bound: no calibration image's feature part is above the threshold"
    )
    enough = calibration | {"calibration_patients": 30, "new_patient_bound": 0.045}
    line = familiarity_summary({"method": "m", "threshold": 2.5, "calibration": enough})
    assert line.endswith("patient-level bound 4.5%)") and "\n" not in line
    # A bound that meets the goal up to rounding is met (no second line).
    rounded = calibration | {"calibration_patients": 39, "new_patient_bound": 0.05000000000000001}
    assert "\n" not in familiarity_summary(
        {"method": "m", "threshold": 1.0, "calibration": rounded}
    )
    # One patient: calibrated on its training images, and said so.
    alone = calibration | {"held_out": False, "split": "training images (one patient)"}
    alone |= {"calibration_patients": 1, "calibration_images": 3, "new_patient_bound": 0.5}
    text = familiarity_summary({"method": "m", "threshold": 1.0, "calibration": alone})
    assert "3 images of 1 patient: training images (one patient); 0.0% of the training" in text
