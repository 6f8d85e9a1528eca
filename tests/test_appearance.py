"""The appearance part of the familiarity score (issue 20): pixel sums that add band by
band, the descriptor and Gaussian a checkpoint carries, its calibration on held-out
patients, and what it catches that the model's features miss (blur, magnification)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from familiarity_support import hand_appearance_score, hand_sums
from PIL import Image, ImageFilter

from milsil.data import patient_split, read_manifest
from milsil.data.appearance import appearance_sums
from milsil.data.synth import synthesize_dataset
from milsil.engine.familiarity import fit_records_appearance, record_appearance
from milsil.errors import CheckpointError, MilsilError
from milsil.models.familiarity import (
    APPEARANCE_FALSE_ALARMS,
    DESCRIPTOR,
    OCTAVES,
    PART,
    SUMS,
    AppearanceReference,
    FamiliarityReference,
    appearance_descriptor,
    fit_appearance,
)


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(3)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((37, 53), (64, 64))]


def test_sums_equal_the_hand_computation(images):
    for image in images:
        np.testing.assert_allclose(appearance_sums(image), hand_sums(image), rtol=1e-6)
    # A read-only, non-contiguous view is taken as it is.
    view = images[1][::2, ::-1]
    view.flags.writeable = False
    np.testing.assert_allclose(appearance_sums(view), hand_sums(view), rtol=1e-6)


def test_sums_of_bands_add_up(images):
    image = images[1]
    whole = appearance_sums(image)
    banded = appearance_sums(image[:24]) + appearance_sums(image[24:])
    for part in (0, PART):  # tissue pixels, all pixels
        colour = slice(part, part + 10)
        np.testing.assert_allclose(banded[colour], whole[colour], rtol=1e-12)  # exact
    # Detail: only the seam's neighbourhoods differ, and every octave is still counted.
    counts = slice(SUMS - OCTAVES, SUMS)
    assert (banded[counts] > 0).all() and (banded[counts] < whole[counts]).all()


def test_tissue_is_judged_without_the_glass_around_it(images):
    """Glass added beside tissue leaves the descriptor of the tissue (its colour exactly);
    a region of glass alone, or under 5% tissue, is judged on all its pixels."""
    rng = np.random.default_rng(5)
    tissue = rng.integers(60, 200, (48, 48, 3), dtype=np.uint8)
    glass = np.clip(rng.normal(240, 2, (48, 48, 3)), 0, 255).astype(np.uint8)
    alone = appearance_descriptor(appearance_sums(tissue))
    beside = appearance_descriptor(appearance_sums(np.concatenate([tissue, glass], axis=1)))
    np.testing.assert_allclose(beside[:9], alone[:9], rtol=1e-9)
    glass_only = appearance_sums(glass)
    assert glass_only[0] == 0 and glass_only[PART] == 48 * 48
    assert appearance_descriptor(glass_only) is not None
    speck = np.concatenate([glass] * 5, axis=1)
    speck[:8, :10] = tissue[:8, :10]  # 80 of 11,520 pixels
    sums = appearance_sums(speck)
    np.testing.assert_allclose(
        appearance_descriptor(sums)[:3], sums[PART + 1 : PART + 4] / sums[PART], rtol=1e-12
    )


def test_a_small_piece_adds_nothing_to_coarse_octaves():
    pink = np.zeros((10, 40, 3), dtype=np.uint8) + np.array([200, 120, 180], dtype=np.uint8)
    sums = appearance_sums(pink)  # all tissue
    assert sums[SUMS - OCTAVES :].tolist() == [8 * 38, 3 * 18, 0, 0]  # 10 -> 5 -> 2 rows
    np.testing.assert_array_equal(sums[:PART], sums[PART:])
    descriptor = appearance_descriptor(sums)
    assert np.isnan(descriptor[-2:]).all() and np.isfinite(descriptor[:-2]).all()
    assert appearance_descriptor(np.zeros(SUMS)) is None


@pytest.mark.parametrize(
    "bad",
    [np.zeros((8, 8), np.uint8), np.zeros((8, 8, 4), np.uint8), np.zeros((8, 8, 3), np.float32)],
)
def test_bad_pixels_are_refused_naming_what_is_allowed(bad):
    with pytest.raises(MilsilError, match=r"uint8 RGB pixels \[height, width, 3\]"):
        appearance_sums(bad)


def _descriptors(rng: np.random.Generator, patients: int, per: int, shift: float = 0.0):
    """Descriptors with a patient effect: each patient's mean drawn, its images around it."""
    centres = rng.normal(0, 1, (patients, DESCRIPTOR))
    rows = [c + 0.3 * rng.normal(0, 1, (per, DESCRIPTOR)) + shift for c in centres]
    return np.concatenate(rows), [f"p{p}" for p in range(patients) for _ in range(per)]


def test_fit_judges_each_patient_left_out_and_calibrates_on_held_out():
    rng = np.random.default_rng(0)
    x, patients = _descriptors(rng, 12, 4)
    held, _ = _descriptors(rng, 5, 4)
    part, left_out = fit_appearance(x, patients, held)
    # typical/spread: each training patient's images against a fit without that patient,
    # computed here with numpy's own covariance.
    own = np.empty(len(x))  # in the images' order
    for p in sorted(set(patients)):
        keep = np.array([q != p for q in patients])
        rest = x[keep]
        mean, scale = rest.mean(axis=0), rest.std(axis=0)
        corr = np.cov(((rest - mean) / scale).T)
        precision = np.linalg.inv(corr + 1e-3 * np.eye(DESCRIPTOR))
        for i in np.flatnonzero(~keep):
            z = (x[i] - mean) / scale
            own[i] = z @ precision @ z / DESCRIPTOR
    assert part.typical == pytest.approx(np.mean(own), rel=1e-9)
    assert part.spread == pytest.approx(np.std(own, ddof=1), rel=1e-9)
    # The training images' scores, each with its patient left out (they calibrate too).
    np.testing.assert_allclose(left_out, (own - part.typical) / part.spread, rtol=1e-9)
    # The threshold: over the left-out training distances and the held-out images' (against
    # the fit on all), the lowest score at most 2.5% of them exceed.
    mean, scale = x.mean(axis=0), x.std(axis=0)
    precision = np.linalg.inv(np.cov(((x - mean) / scale).T) + 1e-3 * np.eye(DESCRIPTOR))
    z = (held - mean) / scale
    judged = np.concatenate([own, np.einsum("ni,ij,nj->n", z, precision, z) / DESCRIPTOR])
    scores = np.sort((judged - part.typical) / part.spread)
    k = int(np.ceil((1 - APPEARANCE_FALSE_ALARMS) * len(scores))) - 1
    assert part.threshold == pytest.approx(scores[k], rel=1e-9)
    assert part.calibration["false_alarm_rate"] == np.mean(scores > scores[k])
    assert part.calibration["held_out_images"] == len(held)
    assert part.score_descriptor(held[0]) == pytest.approx(
        (judged[len(x)] - part.typical) / part.spread
    )
    with pytest.raises(MilsilError, match="at least 3 descriptors"):
        fit_appearance(x[:2], patients[:2], held)


def test_payload_round_trips_and_damage_is_refused():
    rng = np.random.default_rng(1)
    x, patients = _descriptors(rng, 6, 3)
    part, _ = fit_appearance(x, patients, np.empty((0, DESCRIPTOR)))
    again = AppearanceReference.from_payload(part.to_payload(), CheckpointError)
    for d in x[:3]:
        assert again.score_descriptor(d) == part.score_descriptor(d)
    broken = part.to_payload() | {"precision": torch.zeros(3, 3)}
    with pytest.raises(CheckpointError, match=r"appearance precision must be a tensor"):
        AppearanceReference.from_payload(broken, CheckpointError)
    with pytest.raises(CheckpointError, match="appearance spread must be positive"):
        AppearanceReference.from_payload(part.to_payload() | {"spread": 0.0}, CheckpointError)


def test_the_two_parts_share_one_threshold(images):
    part = AppearanceReference(
        mean=torch.zeros(DESCRIPTOR, dtype=torch.float64),
        scale=torch.ones(DESCRIPTOR, dtype=torch.float64),
        precision=torch.eye(DESCRIPTOR, dtype=torch.float64),
        typical=1.0,
        spread=0.5,
        threshold=4.0,
    )
    reference = FamiliarityReference(
        method="m",
        threshold=2.0,
        weight=torch.eye(2),
        bias=torch.zeros(2),
        centres=torch.zeros(1, 2),
        appearance=part,
    )
    sums = appearance_sums(images[1])
    looks = hand_appearance_score({"appearance": part.to_payload()}, hand_sums(images[1]))
    assert reference.combined(0.5, sums) == pytest.approx(max(0.5, looks - 4.0 + 2.0))
    assert reference.combined(0.5, None) == 0.5  # no pixels: the feature part alone
    plain = FamiliarityReference("m", 2.0, torch.eye(2), torch.zeros(2), torch.zeros(1, 2))
    assert plain.combined(0.5, sums) == 0.5  # a reference written before the appearance part


def blur(rgb: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(rgb).filter(ImageFilter.GaussianBlur(2.0)))


def zoom(rgb: np.ndarray) -> np.ndarray:
    h, w = rgb.shape[:2]
    return np.asarray(Image.fromarray(rgb).resize((2 * w, 2 * h), Image.Resampling.BICUBIC))


def test_blur_and_magnification_are_unlike_the_training_images(tmp_path):
    """What the features missed (bench/ood_bench.py): on synthetic H&E of 16 patients the
    appearance part scores every blurred and x2 image above every held-out image, calls
    the blurred ones unlike, and most held-out images not. (With 36 calibration images the
    2.5% threshold is their highest score; bench/ood_bench.py measures detection rates.)"""
    manifest = synthesize_dataset(tmp_path, patients=16, images_per_patient=3, size=64, seed=2)
    records, _ = read_manifest(manifest)
    rest, test = patient_split(records, 0.25, seed=0)
    train, val = patient_split(rest, 0.25, seed=1)
    part, _ = fit_records_appearance(train, [record_appearance(r) for r in val])
    assert part.calibration["held_out_images"] == len(val)

    def score(rgb: np.ndarray) -> float:
        return part.score(appearance_sums(rgb))

    from milsil.data import load_rgb

    held = [load_rgb(r.path) for r in test]
    familiar = [score(im) for im in held]
    assert sum(s <= part.threshold for s in familiar) >= 0.75 * len(held)
    blurred, zoomed = [score(blur(im)) for im in held], [score(zoom(im)) for im in held]
    assert min(blurred) > max(familiar) and min(zoomed) > max(familiar)
    assert min(blurred) > part.threshold
