"""Nucleus-level localization in the evaluation: localization() with instance masks, ADMIL's
attention map, the printed table and `milsil evaluate`."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from milsil.cli import main as cli_main
from milsil.data import load_dataset, load_rgb
from milsil.data.instances import load_instances, read_instance_index
from milsil.data.synth import synthesize_dataset
from milsil.experiments.ablation import format_nucleus_table, summarize
from milsil.experiments.localization import attention_map, localization
from milsil.experiments.nuclei import score_nuclei, summarize_nuclei
from milsil.models import create_model, save_checkpoint


@pytest.fixture(scope="module")
def mixed_small(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixed")
    manifest = synthesize_dataset(
        root, patients=3, images_per_patient=2, size=48, seed=2, scenario="mixed"
    )
    records, classes = load_dataset(manifest)
    return manifest, records, classes


def hand_count(records, instances, border=4, min_pixels=4):
    """(nuclei, malignant nuclei) with at least ``min_pixels`` pixels inside the border,
    counted with np.bincount on the label images (not with the code under test)."""
    nuclei = malignant = 0
    for r in records:
        labels, table = load_instances(instances[r.path])
        counts = np.bincount(labels[border:-border, border:-border].ravel())
        for n in table:
            big = n["id"] < len(counts) and counts[n["id"]] >= min_pixels
            nuclei += big
            malignant += big and n["class"] == "malignant"
    return nuclei, malignant


def test_localization_scores_every_nucleus(mixed_small):
    manifest, records, classes = mixed_small
    instances = read_instance_index(manifest)
    torch.manual_seed(0)
    model = create_model("bagnet9", 2, width=4, class_names=classes)
    loc = localization(model, records, classes, instances=instances, border=4)
    without = localization(model, records, classes, border=4)
    nuclei, malignant = hand_count(records, instances)
    assert nuclei > malignant > 0
    assert set(loc) == {"logit", "cam", "gradcam"}
    for name, v in loc.items():
        assert v["object_images"] == len(records)  # benign images count too
        assert (v["nuclei"], v["target_nuclei"]) == (nuclei, malignant)
        # the pixel-level numbers are the same with or without instances
        assert v["pixel_auroc"] == pytest.approx(without[name]["pixel_auroc"])
        assert "object_auroc" not in without[name]


def test_nucleus_auroc_of_a_hand_built_case():
    """Two label images drawn by hand. Image 1: malignant nuclei scored 3 and 1, benign
    2 and 0, and a 2-pixel malignant speck (under min_pixels: left out); image 2: one
    benign nucleus scored 2.5. Pooled: of the 2 x 3 (malignant, benign) pairs, 3 beats
    2, 0, 2.5 and 1 beats 0: AUROC 4/6. Within image 1: 3 of 4 pairs, 0.75. Pointing:
    image 1's top nucleus (3) is malignant: 1.0 (image 2 has no malignant nucleus)."""
    labels = np.zeros((8, 8), dtype=np.int32)
    heat = np.zeros((8, 8))
    for nid, (y, x), value in ((1, (0, 0), 3), (2, (0, 4), 2), (3, (4, 0), 1), (4, (4, 4), 0)):
        labels[y : y + 2, x : x + 2] = nid
        heat[y : y + 2, x : x + 2] = value
    labels[7, 6:8], heat[7, 6:8] = 5, 9.0
    classes = {1: "malignant", 2: "benign", 3: "malignant", 4: "benign", 5: "malignant"}
    table = [{"id": i, "class": c} for i, c in classes.items()]
    second = np.zeros((4, 4), dtype=np.int32)
    second[1:3, 1:3] = 1
    one = score_nuclei(heat, labels, table, "malignant")
    two = score_nuclei(np.full((4, 4), 2.5), second, [{"id": 1, "class": "benign"}], "malignant")
    assert one[0].tolist() == [3, 2, 1, 0] and one[1].tolist() == [True, False, True, False]
    summary = summarize_nuclei([one, two])
    assert summary["object_auroc"] == pytest.approx(4 / 6)
    assert summary["object_auroc_within"] == pytest.approx(0.75)
    assert summary["object_pointing"] == 1.0
    assert (summary["nuclei"], summary["target_nuclei"]) == (5, 2)


def test_a_map_that_is_the_truth_scores_perfectly(mixed_small, monkeypatch):
    """Swap the logit map for the ground-truth instance classes: AUROC 1, pointing 1."""
    manifest, records, classes = mixed_small
    instances = read_instance_index(manifest)
    truth = {}
    for r in records:
        labels, table = load_instances(instances[r.path])
        malignant = np.array([0] + [n["class"] == "malignant" for n in table], dtype=float)
        truth[load_rgb(r.path).tobytes()] = malignant[labels]

    def oracle(model, image, target, maps=("logit",)):
        return {"logit": truth[image.tobytes()]}

    monkeypatch.setattr("milsil.experiments.localization.image_maps", oracle)
    model = create_model("bagnet9", 2, width=4, class_names=classes)
    loc = localization(model, records, classes, maps=["logit"], instances=instances)
    assert loc["logit"]["object_auroc"] == 1.0
    assert loc["logit"]["object_auroc_within"] == 1.0
    assert loc["logit"]["object_pointing"] == 1.0
    # and its opposite (malignant 0, benign 1) ranks every pair wrong: 0, no hit
    truth = {k: 1.0 - v for k, v in truth.items()}
    loc = localization(model, records, classes, maps=["logit"], instances=instances)
    assert loc["logit"]["object_auroc"] == 0.0 and loc["logit"]["object_pointing"] == 0.0


def test_attention_map_paints_patches(mixed_small):
    _, records, classes = mixed_small
    torch.manual_seed(0)
    model = create_model("admil", 2, width=16, class_names=classes)
    image = load_rgb(records[0].path)  # 48 x 48
    amap = attention_map(model, image, patch_size=16)
    assert amap.shape == (48, 48)
    blocks = amap.reshape(3, 16, 3, 16).transpose(0, 2, 1, 3).reshape(9, -1)
    assert np.all(blocks == blocks[:, :1])  # constant on each patch
    assert blocks[:, 0].sum() == pytest.approx(1.0, abs=1e-5)  # softmax weights
    odd = attention_map(model, image, patch_size=20)  # a 2 x 2 grid: the strips get 0
    assert np.all(odd[40:] == 0) and np.all(odd[:, 40:] == 0)
    loc = localization(
        model, records, classes, instances=read_instance_index(mixed_small[0]), border=4
    )
    assert set(loc) == {"attention"} and loc["attention"]["nuclei"] > 0


def test_nucleus_table_and_cli(mixed_small, tmp_path, capsys):
    folds = [
        {
            "pixel_auroc": 0.9,
            "pointing_game": 1.0,
            "dice": 0.4,
            "images": 3,
            "object_auroc": a,
            "object_auroc_within": 0.7,
            "object_pointing": 0.5,
            "nuclei": 100,
            "object_images": 6,
            "fold": k,
        }
        for k, a in enumerate((0.8, 0.9))
    ]
    results = summarize({"folds": 2, "methods": {}, "localization": {"milsil": {"logit": folds}}})
    table = format_nucleus_table(results)
    assert "200 nuclei in 12 held-out images" in table
    assert "Logit heatmap" in table and "0.85 +-" in table
    empty = summarize({"folds": 2, "methods": {}, "localization": {}})
    assert "no instance masks" in format_nucleus_table(empty)

    manifest, _, classes = mixed_small
    model = create_model("bagnet9", 2, width=4, class_names=classes)
    ckpt = tmp_path / "m.pt"
    save_checkpoint(model, ckpt)
    assert (
        cli_main(["evaluate", str(manifest), "--checkpoint", str(ckpt), "--patch-size", "24"]) == 0
    )
    out = capsys.readouterr().out
    assert "instance masks for 6 images" in out
    assert "nucleus AUROC" in out and "nucleus pointing" in out
