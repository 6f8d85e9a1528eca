"""Fit the familiarity reference at the end of training (:mod:`milsil.models.familiarity`).

The projection is fitted on the windows of the training bags (no augmentation), the
appearance part on their images' pixels (:func:`fit_records_appearance`); the
threshold is calibrated on held-out patients (the validation records when the run has
them, else a patient-level split of the training records; the fit then leaves those
patients out) and on the training patients beside them, by a bound on a new patient's
false alarms (:func:`milsil.models.familiarity.patient_threshold`). A run with a single
patient calibrates on its own training images and says so (``held_out: false``). Every
checkpoint the run leaves (``best.pt``, ``last.pt``) gets the reference fitted on its own
weights; a file that already carries one (a finished run resumed) is left as it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from milsil.data import load_bag, load_npz_tiles, load_rgb, patient_split, to_tensor
from milsil.data.appearance import appearance_sums
from milsil.data.bags import BagRecord
from milsil.models import atomic_torch_save, load_checkpoint, read_checkpoint
from milsil.models.familiarity import (
    DEFAULT_COMPONENTS,
    DESCRIPTOR,
    FALSE_ALARM_TARGET,
    FAMILIARITY_KEY,
    AppearanceReference,
    FamiliarityReference,
    appearance_descriptor,
    fit_appearance,
    fit_projection,
    patient_threshold,
    payload_familiarity,
    supports_familiarity,
    training_score_shift,
)
from milsil.models.mil import ConfiguredModel

MAX_FIT_WINDOWS = 50_000  # windows the projection is fitted on (a random subset beyond;
# 400 MB of features at full width)
_PATCHES_PER_PASS = 256


@torch.inference_mode()
def record_windows(
    model: ConfiguredModel, record: BagRecord, patch_size: int, device: torch.device
) -> torch.Tensor:
    """Features ``[windows, D]`` of the receptive-field windows of the record's patches,
    on a grid of half the model's stride (each patch also shifted by half a stride, where
    it stays at least a window wide): four times the windows of one pass, same cost per
    window."""
    mean, std = model.normalization
    patches = load_bag(record, patch_size)
    half = getattr(model.backbone, "output_stride", 8) // 2
    shifts = [0, half] if patches.shape[1] - half >= model.min_patch_size else [0]
    out = []
    for start in range(0, len(patches), _PATCHES_PER_PASS):
        x = to_tensor(patches[start : start + _PATCHES_PER_PASS], mean, std).to(device)
        for dy in shifts:
            for dx in shifts:
                features = model.feature_map(x[:, :, dy:, dx:])  # [n, D, h, w]
                flat = features.permute(0, 2, 3, 1).reshape(-1, features.shape[1])
                out.append(flat.float().cpu())
    return torch.cat(out)


def fit_familiarity(
    model: ConfiguredModel,
    fit_records: Sequence[BagRecord],
    calibration_records: Sequence[BagRecord],
    patch_size: int,
    device: torch.device | str = "cpu",
    seed: int = 0,
    held_out: bool = True,
    split: str = "validation",
    components: int = DEFAULT_COMPONENTS,
) -> FamiliarityReference:
    """The reference of ``model``: projection from ``fit_records``' windows, threshold
    from ``calibration_records`` (one score per image: the mean window distance)."""
    device = torch.device(device)
    model.eval().to(device)
    rng = np.random.default_rng(seed)
    per_record = max(1, MAX_FIT_WINDOWS // max(1, len(fit_records)))
    chunks = []
    for record in fit_records:
        windows = record_windows(model, record, patch_size, device)
        if len(windows) > per_record:
            windows = windows[torch.from_numpy(rng.choice(len(windows), per_record, False))]
        chunks.append(windows)
    features = torch.cat(chunks)
    with torch.inference_mode():
        classes = torch.cat(
            [model.fc(part.to(device)).argmax(dim=1).cpu() for part in features.split(8192)]
        )
    weight, bias, centres = fit_projection(features, classes, components)
    draft = FamiliarityReference(
        method=f"mahalanobis-pca{weight.shape[0]}-zscore",
        threshold=0.0,
        weight=weight,
        bias=bias,
        centres=centres,
    )

    def mean_distance(windows: torch.Tensor) -> float:
        return float(draft.distances(draft.project(windows, dim=1), dim=1).mean())

    # The typical image: its mean window distance over the training images (each from its
    # sampled windows, an unbiased estimate of its mean).
    means = torch.tensor([mean_distance(chunk) for chunk in chunks], dtype=torch.float64)
    typical = float(means.mean())
    spread = float(means.std()) if len(means) > 1 else 0.0
    spread = max(spread, 1e-3 * abs(typical), 1e-9)
    reference = replace(draft, typical=typical, spread=spread)
    scores = [
        reference.region_score(mean_distance(record_windows(model, record, patch_size, device)))
        for record in calibration_records
    ]
    alarms = [False] * len(scores)
    training_alarms = [False] * len(fit_records)
    appearance = None
    if len(fit_records) >= 3:  # the parts share the 5%: appearance first, features the rest
        held = [record_appearance(r) for r in calibration_records]  # each image read once
        appearance, left_out = fit_records_appearance(fit_records, held if held_out else [])
        looks = [appearance.score(sums) for sums in held]
        alarms = [a is not None and a > appearance.threshold for a in looks]
        training_alarms = [bool(a > appearance.threshold) for a in left_out]
    patients = [r.patient for r in calibration_records]
    feature_scores, judged, groups, shift = list(scores), list(alarms), list(patients), 0.0
    if held_out:  # the training patients calibrate too (the bound needs many patients),
        # each image scored from its sampled windows (an unbiased estimate of its mean)
        training = [reference.region_score(float(m)) for m in means]
        shift = training_score_shift(training, scores)
        feature_scores = [t + shift for t in training] + feature_scores
        judged = training_alarms + judged
        groups = [r.patient for r in fit_records] + groups
    threshold, rates = patient_threshold(feature_scores, judged, groups)
    held_alarms = [a or s > threshold for s, a in zip(scores, alarms, strict=True)]
    return replace(
        reference,
        threshold=threshold,
        appearance=appearance,
        calibration={
            "split": split,
            "held_out": held_out,
            "patients": len(set(patients)),
            "images": len(calibration_records),
            "false_alarm_rate": sum(held_alarms) / len(held_alarms),
            "target_false_alarm_rate": FALSE_ALARM_TARGET,
            "rule": "patient-level conformal bound",
            "calibration_patients": len(set(groups)),
            "calibration_images": len(groups),
            "training_score_shift": shift,
            "new_patient_bound": rates["bound"],
            "calibration_false_alarm_rate": rates["false_alarm_rate"],
        },
        fit={
            "patients": len({r.patient for r in fit_records}),
            "images": len(fit_records),
            "windows": len(features),
            "classes": [model.class_names[int(c)] for c in torch.unique(classes)],
        },
    )


def record_appearance(record: BagRecord) -> np.ndarray:
    """The appearance sums of one training image (all its pixels), or of a ``.npz`` bag's
    tiles (each tile a piece of its own, as ClassifyBag judges them)."""
    if record.path.lower().endswith(".npz"):
        return sum(appearance_sums(tile) for tile in load_npz_tiles(record.path))
    return appearance_sums(load_rgb(record.path))


def fit_records_appearance(
    fit_records: Sequence[BagRecord], held_out: Sequence[np.ndarray]
) -> tuple[AppearanceReference, np.ndarray]:
    """The appearance part: fitted on ``fit_records``' images (at least 3: a Gaussian), its
    threshold from those images with their own patient left out and the held-out patients'
    appearance sums ``held_out`` (:func:`record_appearance`; none when there are none);
    and the records' scores, each with its patient left out (:func:`fit_appearance`)."""
    descriptors = np.stack([appearance_descriptor(record_appearance(r)) for r in fit_records])
    held = [appearance_descriptor(sums) for sums in held_out]
    return fit_appearance(
        descriptors,
        [r.patient for r in fit_records],
        np.stack(held) if held else np.empty((0, DESCRIPTOR)),
    )


def calibration_split(
    train_records: Sequence[BagRecord], val_records: Sequence[BagRecord], seed: int
) -> tuple[list[BagRecord], list[BagRecord], bool, str]:
    """``(fit, calibration, held_out, split)``: which records fit, which calibrate."""
    if val_records:
        return list(train_records), list(val_records), True, "validation"
    if len({r.patient for r in train_records}) >= 2:
        fit, calibration = patient_split(train_records, 0.2, seed)
        return fit, calibration, True, "patient split of the training data"
    return list(train_records), list(train_records), False, "training images (one patient)"


def attach_familiarity(
    paths: Sequence[Path],
    train_records: Sequence[BagRecord],
    val_records: Sequence[BagRecord],
    patch_size: int,
    device: torch.device | str,
    seed: int,
) -> dict[str, Any] | None:
    """Fit and write the reference into every checkpoint in ``paths`` that exists and has
    none; the summary (method, threshold, calibration) of the first one (``best.pt``, the
    run's model), for ``run.json``.
    None for models without per-window features (attention MIL, ResNet-50, DenseNet)."""
    fit, calibration, held_out, split = calibration_split(train_records, val_records, seed)
    summary = None
    fitted: list[tuple[dict[str, torch.Tensor], FamiliarityReference]] = []
    for path in paths:
        if not Path(path).is_file():
            continue
        payload = read_checkpoint(path)
        reference = payload_familiarity(payload, str(path))
        if reference is None:
            model = load_checkpoint(path)
            if not supports_familiarity(model):
                return None
            state = payload["state_dict"]
            # best.pt and last.pt hold the same weights when the last epoch was the best.
            reference = next((ref for s, ref in fitted if _same_weights(s, state)), None)
            if reference is None:
                reference = fit_familiarity(
                    model, fit, calibration, patch_size, device, seed, held_out, split
                )
                fitted.append((state, reference))
            payload[FAMILIARITY_KEY] = reference.to_payload()
            atomic_torch_save(payload, path)
        if summary is None:  # the first file's (best.pt: the run's model)
            summary = {
                "method": reference.method,
                "threshold": reference.threshold,
                "calibration": reference.calibration,
            }
    return summary


def _same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
