"""The familiarity score (issue 20): fitted at the end of training, carried by checkpoints,
computed by the dense pass, judged per region, and shown by the CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from familiarity_support import hand_score, hand_sums
from PIL import Image

from milsil.data import load_rgb, patient_split, read_manifest
from milsil.data.synth import synthesize_dataset
from milsil.engine.config import TrainConfig
from milsil.engine.familiarity import attach_familiarity, record_windows
from milsil.engine.loop import train_model
from milsil.errors import CheckpointError, MilsilError
from milsil.inference.familiarity import (
    FamiliarityAccumulator,
    FamiliarityScore,
    distance_map,
    images_familiarity,
    region_score,
)
from milsil.inference.heatmap import iter_logit_bands, logit_heatmap
from milsil.models import (
    FAMILIARITY_KEY,
    FamiliarityReference,
    atomic_torch_save,
    create_model,
    load_checkpoint,
    model_familiarity,
    read_checkpoint,
    save_checkpoint,
    set_model_familiarity,
)


def grayscale(rgb: np.ndarray) -> np.ndarray:
    luma = rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return np.repeat(luma.astype(np.uint8)[..., None], 3, axis=2)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny MIL-SIL BagNet-9 trained by the real loop, with test patients it never saw."""
    root = tmp_path_factory.mktemp("familiarity")
    manifest = synthesize_dataset(root / "data", patients=8, images_per_patient=3, size=48)
    records, classes = read_manifest(manifest)
    rest, test = patient_split(records, 0.25, seed=0)
    train, val = patient_split(rest, 0.34, seed=1)
    config = TrainConfig(
        width=8, epochs=2, lr=2e-3, patch_size=16, batch_size=4, seed=0, device="cpu"
    )
    result = train_model(config, train, val, classes, root / "run", resume=False)
    return {
        "root": root,
        "best": result.best_checkpoint,
        "last": result.last_checkpoint,
        "train": train,
        "val": val,
        "test": test,
    }


@pytest.fixture(scope="module")
def model(trained):
    return load_checkpoint(trained["best"])


@pytest.fixture(scope="module")
def old_checkpoint(trained):
    """The trained checkpoint as a model trained before the reference existed wrote it."""
    payload = read_checkpoint(trained["best"])
    del payload[FAMILIARITY_KEY]
    path = trained["root"] / "old.pt"
    atomic_torch_save(payload, path)
    return path


# ------------------------------------------------------------------- the checkpoint


def test_training_writes_the_reference_into_best_and_last(trained, model):
    reference = model_familiarity(model)
    assert reference is not None
    assert reference.method.startswith("mahalanobis-pca")
    assert reference.spread > 0
    assert reference.feature_dim == model.fc.in_features
    calibration = reference.calibration
    assert calibration["split"] == "validation" and calibration["held_out"] is True
    assert calibration["images"] == len(trained["val"])
    assert calibration["patients"] == len({r.patient for r in trained["val"]})
    # The training patients calibrate beside the held-out ones; six patients are too few
    # to bound a new patient's false alarms by 5% (19 are needed), so no calibration image
    # raises a feature alarm and the bound says 1 / (patients + 1) (the 2.5% appearance
    # threshold of ~18 images is their highest: no appearance alarm either).
    pooled = trained["train"] + trained["val"]
    patients = {r.patient for r in pooled}
    assert calibration["rule"] == "patient-level conformal bound"
    assert calibration["calibration_patients"] == len(patients) < 19
    assert calibration["calibration_images"] == len(pooled)
    assert calibration["false_alarm_rate"] == calibration["calibration_false_alarm_rate"] == 0
    assert calibration["new_patient_bound"] == pytest.approx(1 / (len(patients) + 1))

    # So the threshold is the highest feature score of the pooled images, the training
    # ones raised by the shift (the medians' difference, never below 0), computed here.
    def score(record):
        w = record_windows(model, record, 16, "cpu")
        return reference.region_score(
            float(reference.distances(reference.project(w, dim=1), dim=1).mean())
        )

    training = [score(r) for r in trained["train"]]
    held = [score(r) for r in trained["val"]]
    shift = max(0.0, float(np.median(held) - np.median(training)))
    assert calibration["training_score_shift"] == pytest.approx(shift, abs=1e-9)
    assert reference.threshold == pytest.approx(max(held + [t + shift for t in training]))
    assert reference.fit["images"] == len(trained["train"])
    last = read_checkpoint(trained["last"])
    assert last[FAMILIARITY_KEY] is not None and "training_state" in last  # still resumable
    run = json.loads((trained["best"].parent / "run.json").read_text())
    assert run["familiarity"]["threshold"] == pytest.approx(reference.threshold)


def test_reference_round_trips_through_a_checkpoint(trained, model, tmp_path):
    save_checkpoint(model, tmp_path / "copy.pt")
    again = model_familiarity(load_checkpoint(tmp_path / "copy.pt"))
    original = model_familiarity(model)
    assert again.method == original.method and again.threshold == original.threshold
    for name in ("weight", "bias", "centres"):
        assert torch.equal(getattr(again, name), getattr(original, name))
    assert again.calibration == original.calibration and again.fit == original.fit


def test_a_finished_run_is_not_refitted(trained):
    before = read_checkpoint(trained["best"])[FAMILIARITY_KEY]
    attach_familiarity(
        [trained["best"]], trained["train"], trained["val"], 16, "cpu", seed=5
    )  # another seed would give another fit
    after = read_checkpoint(trained["best"])[FAMILIARITY_KEY]
    assert torch.equal(before["weight"], after["weight"])


def test_old_checkpoint_loads_and_reports_nothing(trained, old_checkpoint):
    old = load_checkpoint(old_checkpoint)
    assert model_familiarity(old) is None
    image = load_rgb(trained["test"][0].path)
    assert distance_map(old, image) is None
    assert images_familiarity(old, [image]) is None
    assert region_score(old, np.zeros((4, 4))) is None
    accumulator = FamiliarityAccumulator(old)
    accumulator.add(np.zeros((4, 4)))
    assert accumulator.result() is None
    *_, (_, maps) = iter_logit_bands(old, image, stride=4, familiarity=True)
    assert maps.shape[0] == old.config.num_classes + 1
    assert torch.isnan(maps[-1]).all()
    assert torch.equal(maps[:-1], logit_heatmap(old, image, stride=4))
    save_checkpoint(old, old_checkpoint.parent / "resaved.pt")
    assert FAMILIARITY_KEY not in read_checkpoint(old_checkpoint.parent / "resaved.pt")


def test_attention_mil_gets_no_reference(trained, tmp_path, model):
    admil = create_model("admil", 2, width=8, class_names=["benign", "malignant"])
    save_checkpoint(admil, tmp_path / "admil.pt")
    summary = attach_familiarity(
        [tmp_path / "admil.pt"], trained["train"], trained["val"], 27, "cpu", 0
    )
    assert summary is None
    assert FAMILIARITY_KEY not in read_checkpoint(tmp_path / "admil.pt")
    with pytest.raises(MilsilError, match="no per-window features"):
        set_model_familiarity(admil, model_familiarity(model))


def test_a_damaged_reference_is_refused_naming_the_file(trained, tmp_path):
    payload = read_checkpoint(trained["best"])
    payload[FAMILIARITY_KEY]["centres"] = payload[FAMILIARITY_KEY]["centres"][:, :3]
    atomic_torch_save(payload, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=r"bad\.pt has an invalid 'familiarity' entry"):
        load_checkpoint(tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="missing threshold"):
        FamiliarityReference.from_payload({"method": "x", "weight": 1}, "m.pt")


# ------------------------------------------------------------------- the dense pass


@pytest.mark.parametrize("stride", [1, 3])
def test_extra_channels_leave_the_logits_unchanged(model, trained, stride):
    image = load_rgb(trained["test"][0].path)
    *_, (_, plain) = iter_logit_bands(model, image, stride=stride)
    *_, (_, both) = iter_logit_bands(model, image, stride=stride, familiarity=True)
    assert both.shape[0] == plain.shape[0] + 1
    assert torch.equal(both[:-1], plain)
    assert torch.isfinite(both[-1]).all()


def test_dense_distance_equals_the_window_by_window_computation(model, trained):
    """The naive reference: every window of the mirror-padded image through the model's
    feature extractor, then the distance by hand from the tensors the checkpoint stores."""
    image = load_rgb(trained["test"][1].path)[:20, :22]
    stored = read_checkpoint(trained["best"])[FAMILIARITY_KEY]
    weight, bias, centres = stored["weight"], stored["bias"], stored["centres"]
    rf = model.receptive_field
    half = rf // 2
    padded = np.pad(image, ((half, half), (half, half), (0, 0)), mode="reflect")
    mean, std = model.normalization
    expected = np.empty(image.shape[:2])
    with torch.no_grad():
        for i in range(image.shape[0]):
            for j in range(image.shape[1]):
                window = padded[i : i + rf, j : j + rf].astype(np.float32) / 255.0
                x = torch.from_numpy((window - mean) / std).float().permute(2, 0, 1)[None]
                feature = model.feature_map(x)[0, :, 0, 0].double()
                z = weight.double() @ feature + bias.double()
                squared = ((z[None, :] - centres.double()) ** 2).sum(dim=1)
                expected[i, j] = float(squared.min()) / weight.shape[0]
    dense = distance_map(model, image, stride=1).numpy()
    np.testing.assert_allclose(dense, expected, rtol=2e-4, atol=2e-4)
    np.testing.assert_allclose(
        distance_map(model, image, stride=2).numpy(), expected[::2, ::2], rtol=2e-4, atol=2e-4
    )


def negative(rgb: np.ndarray) -> np.ndarray:
    return 255 - rgb


def test_shifted_images_score_above_the_threshold_and_held_out_mostly_below(model, trained):
    """Held-out patients (never fitted, calibrated or validated on) mostly below; a flat
    DAB-brown field and the photographic negative of the same images above. (The tiny
    model of this test does not separate subtler shifts; bench/ood_bench.py measures them.)"""
    held_out = [load_rgb(r.path) for r in trained["test"]]
    familiar = [judge(model, im) for im in held_out]
    below = sum(not s.unlike_training for s in familiar)
    assert below >= 0.5 * len(held_out), [s.score for s in familiar]
    for image in held_out[:3]:
        for shifted in (np.full_like(image, (120, 70, 30)), negative(image)):
            score = judge(model, shifted)
            assert score.unlike_training, (score, [s.score for s in familiar])


def judge(model, image: np.ndarray) -> FamiliarityScore:
    """An image judged as the library judges one: its distance map and its pixels."""
    return region_score(model, distance_map(model, image, stride=2), pixels=image)


def test_band_accumulator_equals_region_score(model, trained):
    image = load_rgb(trained["test"][2].path)
    distance = distance_map(model, image, stride=1)
    rng = np.random.default_rng(0)
    mask = rng.random(distance.shape) < 0.7
    distance[3, 4] = float("nan")  # a sample never computed never counts
    whole = region_score(model, distance, mask)
    accumulator = FamiliarityAccumulator(model)
    for r0 in range(0, distance.shape[0], 7):
        accumulator.add(distance[r0 : r0 + 7], mask[r0 : r0 + 7])
    banded = accumulator.result()
    assert banded.score == pytest.approx(whole.score, rel=1e-12)
    values = distance.numpy().astype(np.float64)
    keep = mask & np.isfinite(values)
    stored = read_checkpoint(trained["best"])[FAMILIARITY_KEY]
    mean = values[keep].sum() / keep.sum()
    expected = (mean - stored["typical"]) / stored["spread"]
    assert whole.score == pytest.approx(expected, rel=1e-9)
    assert whole.threshold == stored["threshold"]
    with pytest.raises(MilsilError, match="mask has shape"):
        accumulator.add(distance[:4], mask[:3])


def test_images_familiarity_scores_tiles_and_their_bag(model, trained):
    """Each tile's valid windows (its own feature map), the bag all tiles' windows; checked
    against the distance computed by hand from the stored tensors."""
    tiles = [load_rgb(r.path)[:24, :32] for r in trained["test"][:2]]
    tiles.append(grayscale(tiles[0]))
    stored = read_checkpoint(trained["best"])[FAMILIARITY_KEY]
    mean, std = model.normalization
    per_tile = []
    with torch.no_grad():
        for tile in tiles:
            x = (tile.astype(np.float32) / 255.0 - mean) / std
            features = model.feature_map(torch.from_numpy(x).float().permute(2, 0, 1)[None])
            f = features[0].flatten(1).T.double()  # [windows, D]
            z = f @ stored["weight"].double().T + stored["bias"].double()
            squared = ((z[:, None, :] - stored["centres"].double()[None]) ** 2).sum(dim=2)
            per_tile.append(squared.min(dim=1).values.numpy() / stored["weight"].shape[0])

    def judged(d: np.ndarray, sums: np.ndarray) -> float:
        return hand_score(stored, (d.mean() - stored["typical"]) / stored["spread"], sums)

    scores, bag = images_familiarity(model, tiles)
    sums = [hand_sums(tile) for tile in tiles]
    expected = [judged(d, s) for d, s in zip(per_tile, sums, strict=True)]
    assert [s.score for s in scores] == pytest.approx(expected, rel=1e-4)
    assert bag.score == pytest.approx(judged(np.concatenate(per_tile), sum(sums)), rel=1e-4)
    assert scores[2].unlike_training  # the grayscale tile: its appearance
    # Bad bags: the one check ClassifyBag makes too (ConfiguredModel.check_tiles).
    window = model.min_patch_size
    bad = {
        "a bag needs at least one tile; none was given": [],
        r"tiles\[1\] must be an H x W x 3 uint8 RGB array, got float32 \(24, 32, 3\)": [
            tiles[0],
            tiles[1].astype(np.float32),
        ],
        r"tiles\[1\] is 32x20 but tiles\[0\] is 32x24: all tiles of a bag must have the same":
            [tiles[0], tiles[1][:20]],
        rf"tiles are 5x5; bagnet9 needs tiles of at least {window}x{window}": [tiles[0][:5, :5]],
    }  # fmt: skip
    for message, bag in bad.items():
        with pytest.raises(MilsilError, match=message):
            images_familiarity(model, bag)


def test_score_warning_format():
    assert FamiliarityScore(2.0, 1.5).warning("a.png") == (
        "milsil: a.png: unlike the training data (score 2, threshold 1.5)"
    )
    assert FamiliarityScore(1.0, 1.5).warning("a.png") is None


# ------------------------------------------------------------------------ the CLI


def test_heatmap_cli_warns_for_a_shifted_image_only(model, trained, tmp_path):
    held_out = [load_rgb(r.path) for r in trained["test"]]
    scores = [judge(model, im).score for im in held_out]
    familiar = held_out[int(np.argmin(scores))]
    Image.fromarray(familiar).save(tmp_path / "familiar.png")
    Image.fromarray(negative(familiar)).save(tmp_path / "negative.png")
    result = subprocess.run(
        [sys.executable, "-m", "milsil.cli", "heatmap", str(tmp_path / "familiar.png")]
        + [str(tmp_path / "negative.png"), "--model", str(trained["best"])]
        + ["--out", str(tmp_path / "out"), "--stride", "2", "--device", "cpu"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    lines = (result.stdout + result.stderr).splitlines()
    warnings = [line for line in lines if "unlike the training data" in line]
    assert len(warnings) == 1
    assert warnings[0].startswith("milsil: negative.png: unlike the training data (score ")
    meta = json.loads((tmp_path / "out" / "heatmap_run.json").read_text())
    by_name = {r["image"].split("/")[-1]: r["familiarity"] for r in meta["results"]}
    assert by_name["negative.png"]["unlike_training"] is True
    assert by_name["familiar.png"]["unlike_training"] is False
    assert by_name["familiar.png"]["score"] == pytest.approx(min(scores), rel=1e-5)


# ------------------------------------------------------------------ the benchmark


def test_ood_bench_smoke_runs_end_to_end(tmp_path, capsys):
    """bench/ood_bench.py --smoke: trains, fits, calibrates and scores every shift."""
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
    import ood_bench

    assert ood_bench.main(["--smoke", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    (run,) = report["runs"]
    assert set(run["shifts"]) == set(ood_bench.SHIFTS) == set(report["summary"]["shifts"])
    for row in run["shifts"].values():
        assert 0.0 <= row["library"]["auroc"] <= 1.0
    assert run["reference"]["calibration"]["held_out"] is True
    assert run["images"]["test"] >= 2
    library = report["summary"]["shifts"]["grayscale"]["library"]["auroc"]
    assert library == {"mean": run["shifts"]["grayscale"]["library"]["auroc"], "std": 0.0}
    assert "| pen_marks |" in capsys.readouterr().out


def test_slide_commands_name_the_slide_and_count_unlike_tiles(model, trained, tmp_path, capsys):
    """A pyramidal TIFF slide of four 64-px slide tiles: held-out tissue on the left, its
    negative on the right. annotate-slide and batch say the slide is unlike the training
    data as a whole and that 2 of its 4 tiles are; batch records it in <slide>.json."""
    from milsil.cli import main
    from milsil.wsi.tiff import write_pyramidal_tiff

    images = [load_rgb(r.path) for r in trained["test"]]
    left = np.concatenate([images[0][:, :32], images[1][:, :32]], axis=1)  # 48 x 64
    left = np.concatenate([left, left, left[:32]], axis=0)  # 128 x 64
    rgb = np.concatenate([left, negative(left)], axis=1)  # 128 x 128
    slides = tmp_path / "slides"
    slides.mkdir()
    write_pyramidal_tiff(slides / "half.tif", np.ascontiguousarray(rgb), mpp=0.5)
    common = ["--model", str(trained["best"]), "--stride", "4", "--tile", "64", "--all-tiles"]
    assert (
        main(
            ["annotate-slide", str(slides / "half.tif"), "-o", str(tmp_path / "a.geojson")] + common
        )
        == 0
    )
    err = capsys.readouterr().err
    assert "milsil: half.tif: unlike the training data (score " in err
    assert "milsil: half.tif: 2 of 4 slide tiles unlike the training data (highest score " in err
    assert main(["batch", str(slides), "--out", str(tmp_path / "batch")] + common) == 0
    assert "milsil: half: 2 of 4 slide tiles unlike the training data" in capsys.readouterr().err
    summary = json.loads((tmp_path / "batch" / "half.json").read_text())
    assert summary["familiarity"]["unlike_tiles"] == 2 and summary["familiarity"]["tiles"] == 4
    assert summary["familiarity"]["unlike_training"] is True


def test_without_validation_the_threshold_is_calibrated_on_a_patient_split(trained):
    from milsil.engine.familiarity import calibration_split

    records = trained["train"] + trained["val"]
    fit, calibration, held_out, split = calibration_split(records, [], seed=0)
    assert held_out and split == "patient split of the training data"
    assert {r.patient for r in fit}.isdisjoint({r.patient for r in calibration})
    assert len(fit) + len(calibration) == len(records) and calibration
    one = [r for r in records if r.patient == records[0].patient]
    fit, calibration, held_out, _ = calibration_split(one, [], seed=0)
    assert not held_out and fit == calibration == one  # said, not hidden


def test_evaluate_warns_per_unlike_image(trained, tmp_path):
    """milsil evaluate --checkpoint: a line for the negative image only, every score kept."""
    familiar = trained["test"][0]
    Image.fromarray(negative(load_rgb(familiar.path))).save(tmp_path / "negative.png")
    Image.open(familiar.path).save(tmp_path / "familiar.png")
    (tmp_path / "manifest.csv").write_text(
        "image,label,patient\nfamiliar.png,benign,a\nnegative.png,benign,b\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "milsil.cli", "evaluate", str(tmp_path / "manifest.csv")]
        + ["--checkpoint", str(trained["best"]), "--no-localization", "--device", "cpu"]
        + ["--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "unlike the training" in line]
    assert len(warnings) == 1 and warnings[0].startswith("milsil: negative.png: unlike the")
    assert "familiarity: 1 of 2 images unlike the training data" in result.stdout
    scores = json.loads((tmp_path / "out" / "evaluation.json").read_text())["familiarity"]
    assert len(scores["scores"]) == 2


def test_streamed_region_bands_carry_the_same_distances(model, trained):
    """iter_region_bands(familiarity=True): a region streamed as row-ordered pieces gives
    the distance map of the whole image, band by band, and its accumulated score."""
    from milsil.inference.heatmap import iter_region_bands

    image = np.concatenate([load_rgb(r.path) for r in trained["test"][:2]], axis=0)  # 96x48
    h, w = image.shape[:2]
    pieces = [(0, y, image[y : y + 16]) for y in range(0, h, 16)]
    whole = distance_map(model, image, stride=2)
    accumulator = FamiliarityAccumulator(model)
    rows = []
    for row0, band in iter_region_bands(model, w, h, pieces, stride=2, familiarity=True):
        assert band.shape[0] == model.config.num_classes + 1
        rows.append((row0, band[-1]))
        accumulator.add(band[-1])
    stitched = torch.cat([b for _, b in sorted(rows, key=lambda r: r[0])])
    torch.testing.assert_close(stitched, whole, rtol=1e-4, atol=1e-4)
    assert accumulator.result().score == pytest.approx(region_score(model, whole).score, rel=1e-4)
