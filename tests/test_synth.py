"""The synthetic H&E generator: determinism, ground truth, and that its classes differ the
way the model is meant to learn (malignant nuclei darker and larger; benign nuclei everywhere)."""

from __future__ import annotations

import argparse
import csv
import time

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from milsil.cli.synth import register_cli
from milsil.data.augment import rgb_to_hed
from milsil.data.synth import patient_style, synth_image, synthesize_dataset
from milsil.errors import MilsilError


def _images(seed: int, n: int, malignant: bool, size: int = 128):
    rng = np.random.default_rng(seed)
    return [synth_image(rng, size, malignant) for _ in range(n)]


def _nuclear_pixels(rgb: np.ndarray) -> np.ndarray:
    """Pixels with clearly more haematoxylin than stroma: nuclei of any kind."""
    return rgb_to_hed(rgb)[..., 0] > 0.35


def test_same_seed_same_image_and_other_seed_differs():
    a = synth_image(np.random.default_rng(7), 96, True)
    b = synth_image(np.random.default_rng(7), 96, True)
    c = synth_image(np.random.default_rng(8), 96, True)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_output_types_shapes_and_rectangular_size():
    rgb, mask = synth_image(np.random.default_rng(0), (80, 112), True)
    assert rgb.dtype == np.uint8 and rgb.shape == (80, 112, 3)
    assert mask.dtype == bool and mask.shape == (80, 112)


def test_mask_is_exactly_the_label():
    for _rgb, mask in _images(1, 6, malignant=True, size=64):
        assert mask.sum() >= 30
    for _rgb, mask in _images(2, 6, malignant=False, size=64):
        assert not mask.any()


def test_malignant_nuclei_darker_than_benign_nuclei():
    mal_grey, ben_grey = [], []
    for rgb, mask in _images(3, 6, malignant=True):
        grey = rgb.mean(axis=2)
        mal_grey.append(grey[mask])
        ben_grey.append(grey[_nuclear_pixels(rgb) & ~ndimage.binary_dilation(mask, iterations=2)])
    mal, ben = np.concatenate(mal_grey), np.concatenate(ben_grey)
    # benign nuclei exist in malignant images too, so the label is not "has nuclei"
    assert len(ben) > 500
    assert mal.mean() < ben.mean() - 25, (mal.mean(), ben.mean())


def test_malignant_nuclei_larger_than_benign_nuclei():
    """Opening with a 7-px disc keeps large nuclei and removes small ones."""
    disc = np.hypot(*np.mgrid[-3:4, -3:4]) <= 3
    mal_kept, ben_kept = [], []
    for rgb, mask in _images(4, 4, malignant=True) + _images(5, 4, malignant=False):
        benign = _nuclear_pixels(rgb) & ~ndimage.binary_dilation(mask, iterations=2)
        mal_kept.append(ndimage.binary_opening(mask, disc)[mask].mean() if mask.any() else None)
        ben_kept.append(ndimage.binary_opening(benign, disc)[benign].mean())
    mal = np.mean([k for k in mal_kept if k is not None])
    ben = np.mean(ben_kept)
    assert mal > 0.6 and ben < 0.25, (mal, ben)


def test_benign_images_have_nuclei_and_stroma():
    for rgb, _ in _images(6, 3, malignant=False):
        nuclear = _nuclear_pixels(rgb).mean()
        assert 0.02 < nuclear < 0.35
        # stroma is pink: red and blue above green (eosin absorbs green most)
        pink = (rgb[..., 0] > rgb[..., 1] + 20) & (rgb[..., 2] > rgb[..., 1] + 10)
        assert pink.mean() > 0.4


def test_patients_differ_more_than_images_of_one_patient():
    rng = np.random.default_rng(9)
    means = []
    for _ in range(6):
        style = patient_style(rng)
        means.append([synth_image(rng, 64, False, style=style)[0].mean((0, 1)) for _ in range(4)])
    means = np.array(means)  # patients x images x 3
    within = means.var(axis=1).mean()
    between = means.mean(axis=1).var(axis=0).mean()
    assert between > 2 * within, (between, within)


def test_fast_enough():
    rng = np.random.default_rng(0)
    synth_image(rng, 128, True)  # warm-up
    start = time.perf_counter()
    for i in range(10):
        synth_image(rng, 128, i % 2 == 0)
    per_image = (time.perf_counter() - start) / 10
    assert per_image < 0.1, f"{per_image * 1000:.1f} ms per 128x128 image"


def test_bad_size_is_rejected():
    with pytest.raises(MilsilError, match="size"):
        synth_image(np.random.default_rng(0), 8, True)


def test_synthesize_dataset_writes_consistent_files(tmp_path):
    manifest = synthesize_dataset(
        tmp_path / "ds", patients=3, images_per_patient=4, size=64, malignant_fraction=0.25, seed=1
    )
    with manifest.open(newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == ["image", "label", "patient", "mask"]
        rows = list(reader)
    assert len(rows) == 12
    assert sum(r["label"] == "malignant" for r in rows) == 3
    assert {r["patient"] for r in rows} == {"p000", "p001", "p002"}
    for r in rows:
        img = np.asarray(Image.open(manifest.parent / r["image"]))
        mask = np.asarray(Image.open(manifest.parent / r["mask"])).astype(bool)
        assert img.shape == (64, 64, 3)
        assert mask.any() == (r["label"] == "malignant")
        assert r["image"].split("/")[-1].startswith(r["patient"] + "_")


def test_synthesize_dataset_is_deterministic(tmp_path):
    kw = dict(patients=2, images_per_patient=2, size=48, seed=5)
    a = synthesize_dataset(tmp_path / "a", **kw)
    b = synthesize_dataset(tmp_path / "b", **kw)
    assert a.read_text() == b.read_text()
    for name in ("p000_000", "p001_001"):
        assert (a.parent / "images" / f"{name}.png").read_bytes() == (
            b.parent / "images" / f"{name}.png"
        ).read_bytes()


@pytest.mark.parametrize(
    "kwargs, word",
    [
        ({"patients": 0}, "patients"),
        ({"images_per_patient": -1}, "images_per_patient"),
        ({"malignant_fraction": 1.5}, "malignant_fraction"),
        ({"size": 4}, "size"),
    ],
)
def test_synthesize_dataset_rejects_bad_arguments(tmp_path, kwargs, word):
    with pytest.raises(MilsilError, match=word):
        synthesize_dataset(tmp_path / "x", **kwargs)


def _run_cli(argv: list[str]) -> int:
    """Parse and run ``milsil synth`` through its own registration (independent of other commands)."""
    parser = argparse.ArgumentParser(prog="milsil")
    register_cli(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_writes_dataset_and_reports(tmp_path, capsys):
    out = tmp_path / "cli"
    code = _run_cli(
        ["synth", str(out), "--patients", "2", "--images-per-patient", "2", "--size", "48"]
        + ["--malignant-fraction", "0.5", "--seed", "3"]
    )
    assert code == 0
    assert (out / "manifest.csv").is_file() and len(list((out / "images").glob("*.png"))) == 4
    text = capsys.readouterr().out
    assert "4 images (2 malignant, 2 benign)" in text


def test_cli_bad_input_raises_milsil_error(tmp_path):
    with pytest.raises(MilsilError, match="malignant_fraction"):
        _run_cli(["synth", str(tmp_path / "y"), "--malignant-fraction", "2"])
