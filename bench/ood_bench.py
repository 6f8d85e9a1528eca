#!/usr/bin/env python
"""Does the familiarity score say when an input is unlike the training data? (issue 20)

Design (one seed, CPU-sized): a ``milsil synth`` dataset (default scenario) split by
patient into training, calibration and test patients. A small MIL-SIL BagNet is trained
on the training patients with the calibration patients as its validation split, so the
training loop fits the reference on the training bags and calibrates the threshold on
the calibration patients (:mod:`milsil.engine.familiarity`), exactly as ``milsil train``
does. In distribution = the test patients' images (never used for fitting, calibration
or early stopping). Out of distribution = the same test images shifted: an IHC-like
stain (haematoxylin counterstain + DAB brown), grayscale, strong blur, magnification x2
and x0.5, blank glass, pen marks; and new patients drawn with ``milsil synth
--stain-variation`` (strong stain and blur variation).

Every seed (``--seeds``, default five) makes its own data, model, calibration and shifts;
the table is the mean and sample standard deviation over them. Reported per shift: the
detection AUROC of the score (shifted vs in-distribution test
images) and the share of in-distribution test images above the stored threshold (the
false-alarm rate; goal <= 5%), for the score the library uses (:func:`milsil.inference.
familiarity.distance_map` + ``region_score`` with the image's pixels: the larger of the
feature part and the appearance part, :mod:`milsil.data.appearance`), and the AUROC of
candidates: the per-window feature distance averaged on the valid windows (the feature
part alone, Lee et al. 2018), the appearance part alone, the same feature average judged
two-sided against the training images' typical value (a
typicality test), the distance of the image's mean feature, and the energy
score ``-logsumexp(logits)`` averaged over windows (each candidate's own threshold
calibrated on the calibration patients the same way, for its false alarms).

Usage::

    python bench/ood_bench.py --out bench_out/ood          # 5 seeds, a few min on 2 CPU cores
    python bench/ood_bench.py --smoke --out /tmp/ood       # seconds (tests run it)
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter

from milsil.data import load_rgb, patient_split, read_manifest
from milsil.data.appearance import appearance_sums
from milsil.data.augment import hed_to_rgb, rgb_to_hed
from milsil.data.synth import synthesize_dataset
from milsil.engine.config import TrainConfig
from milsil.engine.loop import train_model
from milsil.engine.metrics import auroc
from milsil.inference.familiarity import distance_map, region_score
from milsil.models import load_checkpoint, model_familiarity
from milsil.models.familiarity import calibrated_threshold

PRESETS = {
    # patients, images per patient, image side, epochs, width, map stride
    "full": {"patients": 40, "images": 4, "size": 64, "epochs": 6, "width": 16, "stride": 4},
    "smoke": {"patients": 6, "images": 2, "size": 48, "epochs": 1, "width": 8, "stride": 8},
}
SHIFTS = (
    "ihc_dab",
    "grayscale",
    "blur",
    "magnification_x2",
    "magnification_x0.5",
    "blank_glass",
    "pen_marks",
    "stain_variation",
)


# ------------------------------------------------------------------------ the shifts


def ihc_like(rgb: np.ndarray) -> np.ndarray:
    """Haematoxylin counterstain (lighter) + DAB brown on the most stained nuclei, no eosin."""
    hed = rgb_to_hed(rgb)
    h = hed[..., 0]
    out = np.zeros_like(hed)
    out[..., 0] = 0.5 * h
    out[..., 2] = np.where(h > np.quantile(h, 0.8), 1.2 * h, 0.05)
    return hed_to_rgb(out)


def grayscale(rgb: np.ndarray) -> np.ndarray:
    luma = rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return np.repeat(np.clip(luma + 0.5, 0, 255).astype(np.uint8)[..., None], 3, axis=2)


def blur(rgb: np.ndarray) -> np.ndarray:
    radius = max(2.0, rgb.shape[0] / 32)
    return np.asarray(Image.fromarray(rgb).filter(ImageFilter.GaussianBlur(radius))).copy()


def rescale(rgb: np.ndarray, factor: float) -> np.ndarray:
    h, w = rgb.shape[:2]
    size = (max(1, round(w * factor)), max(1, round(h * factor)))
    return np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BICUBIC)).copy()


def blank_glass(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Empty glass: near-white with a faint tint, gradient and sensor noise."""
    h, w = shape[:2]
    base = rng.uniform(225, 245) + rng.uniform(-4, 4, 3)
    ramp = np.linspace(-3, 3, w)[None, :, None]
    noise = rng.normal(0, 2.5, (h, w, 3))
    return np.clip(base + ramp + noise, 0, 255).astype(np.uint8)


def pen_marks(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Two or three thick marker strokes (green, blue or black) across the image."""
    image = Image.fromarray(rgb.copy())
    draw = ImageDraw.Draw(image)
    h, w = rgb.shape[:2]
    colours = [(40, 140, 60), (30, 60, 170), (25, 25, 30)]
    colour = colours[int(rng.integers(len(colours)))]
    for _ in range(int(rng.integers(2, 4))):
        points = [(float(rng.uniform(0, w)), float(rng.uniform(0, h))) for _ in range(3)]
        draw.line(points, fill=colour, width=max(4, w // 10))
    return np.asarray(image).copy()


def shifted(
    images: list[np.ndarray], rng: np.random.Generator, variation: list[np.ndarray]
) -> dict[str, list[np.ndarray]]:
    return {
        "ihc_dab": [ihc_like(im) for im in images],
        "grayscale": [grayscale(im) for im in images],
        "blur": [blur(im) for im in images],
        "magnification_x2": [rescale(im, 2.0) for im in images],
        "magnification_x0.5": [rescale(im, 0.5) for im in images],
        "blank_glass": [blank_glass(im.shape, rng) for im in images],
        "pen_marks": [pen_marks(im, rng) for im in images],
        "stain_variation": variation,
    }


# ------------------------------------------------------------------------ the scores


@torch.inference_mode()
def candidates(model: Any, image: np.ndarray) -> dict[str, float]:
    """The candidate statistics on the image's valid windows (no mirrored border)."""
    from milsil.data import to_tensor

    reference = model_familiarity(model)
    mean, std = model.normalization
    features = model.feature_map(to_tensor(image, mean, std).unsqueeze(0))[0]  # [D, h, w]
    z = reference.project(features, dim=0)  # [K, h, w]
    logits = torch.einsum("cd,dhw->chw", model.fc.weight, features) + model.fc.bias[:, None, None]
    mean_distance = float(reference.distances(z).mean())
    return {
        "typicality": abs(mean_distance - reference.typical) / reference.spread,
        "per_window_mahalanobis": mean_distance,
        "mean_feature_mahalanobis": float(reference.distances(z.mean(dim=(1, 2)))),
        "energy": float(-torch.logsumexp(logits, dim=0).mean()),
        "appearance": reference.appearance.score(appearance_sums(image)),
    }


def library_score(model: Any, image: np.ndarray, stride: int) -> float:
    score = region_score(model, distance_map(model, image, stride=stride), pixels=image)
    assert score is not None
    return score.score


def score_all(model: Any, images: list[np.ndarray], stride: int) -> dict[str, list[float]]:
    rows = [{"library": library_score(model, im, stride), **candidates(model, im)} for im in images]
    return {key: [r[key] for r in rows] for key in rows[0]}


def false_alarms(scores: list[float], threshold: float) -> float:
    return float(np.mean(np.asarray(scores) > threshold))


# ---------------------------------------------------------------------------- the run


def run(preset: str, out: Path, seed: int, device: str) -> dict[str, Any]:
    p = PRESETS[preset]
    start = time.monotonic()
    out.mkdir(parents=True, exist_ok=True)
    manifest = synthesize_dataset(
        out / "data",
        patients=p["patients"],
        images_per_patient=p["images"],
        size=p["size"],
        seed=seed,
    )
    records, class_names = read_manifest(manifest)
    rest, test = patient_split(records, 0.25, seed)
    train, calibration = patient_split(rest, 0.25, seed + 1)
    config = TrainConfig(
        width=p["width"],
        epochs=p["epochs"],
        lr=2e-3,
        lr_decay=0.8,
        patch_size=32,
        seed=seed,
        device=device,
    )
    result = train_model(config, train, calibration, class_names, out / "model", resume=False)
    trained = time.monotonic()
    model = load_checkpoint(result.best_checkpoint)
    reference = model_familiarity(model)
    assert reference is not None
    variation_manifest = synthesize_dataset(
        out / "variation",
        patients=max(2, len({r.patient for r in test})),
        images_per_patient=p["images"],
        size=p["size"],
        seed=seed + 1000,
        stain_variation=True,
    )
    variation = [load_rgb(r.path) for r in read_manifest(variation_manifest)[0]][: len(test)]
    test_images = [load_rgb(r.path) for r in test]
    rng = np.random.default_rng(seed)
    inside = score_all(model, test_images, p["stride"])
    calib = score_all(model, [load_rgb(r.path) for r in calibration], p["stride"])
    thresholds = {key: calibrated_threshold(values)[0] for key, values in calib.items()}
    thresholds["library"] = reference.threshold  # the stored one
    rows: dict[str, Any] = {}
    raw = {"test": inside, "calibration": calib}  # every image's scores, to recompute
    for name, images in shifted(test_images, rng, variation).items():
        outside = raw[name] = score_all(model, images, p["stride"])
        rows[name] = {
            key: {
                "auroc": auroc(
                    np.array(inside[key] + outside[key]),
                    np.array([0] * len(inside[key]) + [1] * len(outside[key])),
                ),
                "detected": false_alarms(outside[key], thresholds[key]),
            }
            for key in inside
        }
    return {
        "command": " ".join(sys.argv),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, {platform.processor() or platform.platform()}",
        "preset": preset,
        "seed": seed,
        "settings": p,
        "patients": {
            "train": len({r.patient for r in train}),
            "calibration": len({r.patient for r in calibration}),
            "test": len({r.patient for r in test}),
        },
        "images": {"train": len(train), "calibration": len(calibration), "test": len(test)},
        "reference": {
            "method": reference.method,
            "threshold": reference.threshold,
            "calibration": reference.calibration,
            "appearance": None
            if reference.appearance is None
            else {
                "threshold": reference.appearance.threshold,
                "calibration": reference.appearance.calibration,
            },
        },
        "thresholds": thresholds,
        "false_alarm_rate": {key: false_alarms(v, thresholds[key]) for key, v in inside.items()},
        "shifts": rows,
        "val_mil_accuracy": result.history[-1].get("val_mil_accuracy") if result.history else None,
        "scores": raw,
        "seconds": {"train": trained - start, "total": time.monotonic() - start},
    }


KEYS = [
    "library",
    "per_window_mahalanobis",
    "appearance",
    "typicality",
    "mean_feature_mahalanobis",
    "energy",
]


def summary(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and sample standard deviation over the seeds' runs of every AUROC, detection
    rate and false-alarm rate."""

    def stats(values: list[float]) -> dict[str, float]:
        a = np.asarray(values, dtype=np.float64)
        return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if len(a) > 1 else 0.0}

    shifts = reports[0]["shifts"]
    return {
        "seeds": [r["seed"] for r in reports],
        "shifts": {
            name: {
                key: {
                    what: stats([r["shifts"][name][key][what] for r in reports])
                    for what in ("auroc", "detected")
                }
                for key in KEYS
            }
            for name in shifts
        },
        "false_alarm_rate": {
            key: stats([r["false_alarm_rate"][key] for r in reports]) for key in KEYS
        },
        "library_false_alarms_per_seed": [r["false_alarm_rate"]["library"] for r in reports],
    }


def markdown(report: dict[str, Any]) -> str:
    """The summary's table: AUROC mean +- sample std over seeds, per shift and score."""
    keys = KEYS

    def cell(s: dict[str, float], pct: bool = False) -> str:
        if pct:
            return f"{s['mean']:.0%} ± {s['std']:.0%}"
        return f"{s['mean']:.3f} ± {s['std']:.3f}"

    lines = [
        "| shift | "
        + " | ".join(f"{k} AUROC" for k in keys)
        + " | library: detected at threshold |",
        "| --- |" + " --- |" * (len(keys) + 1),
    ]
    for name, row in report["shifts"].items():
        cells = [cell(row[k]["auroc"]) for k in keys]
        detected = cell(row["library"]["detected"], pct=True)
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {detected} |")
    fa = report["false_alarm_rate"]
    lines.append(
        "| in-distribution false alarms (test patients) | "
        + " | ".join(cell(fa[k], pct=True) for k in keys)
        + " | |"
    )
    per_seed = ", ".join(f"{v:.1%}" for v in report["library_false_alarms_per_seed"])
    lines.append(f"\nlibrary false alarms per seed ({report['seeds']}): {per_seed}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench_out/ood"))
    parser.add_argument("--smoke", action="store_true", help="a tiny run in seconds")
    parser.add_argument(
        "--seeds", default=None, help="comma-separated seeds (default 0,1,2,3,4; smoke: 0)"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--patients", type=int, default=None, help="patients per dataset (default: the preset's)"
    )
    args = parser.parse_args(argv)
    preset = "smoke" if args.smoke else "full"
    if args.patients is not None:  # e.g. how the false alarms depend on held-out patients
        PRESETS[preset] = {**PRESETS[preset], "patients": args.patients}
    seeds = [int(s) for s in (args.seeds or ("0" if args.smoke else "0,1,2,3,4")).split(",")]
    runs = []
    for seed in seeds:  # each seed: its own data, model, calibration and shifts
        runs.append(run(preset, args.out / f"seed{seed}", seed, args.device))
        print(f"seed {seed}: done in {runs[-1]['seconds']['total']:.0f} s", flush=True)
    report = {**{k: runs[0][k] for k in ("command", "machine", "preset", "settings")}}
    report |= {"summary": summary(runs), "runs": runs}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(markdown(report["summary"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
