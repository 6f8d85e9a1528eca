"""Dataset adapters on small files in the exact published layouts, and ``milsil reproduce``."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
from scipy.io import loadmat, savemat

from milsil.data import load_bag, load_mask, patient_kfold
from milsil.data import public as datasets
from milsil.errors import MilsilError


def run_cli(argv, monkeypatch) -> int:
    from milsil import cli

    modules = tuple(dict.fromkeys(cli.COMMAND_MODULES + ("milsil.cli.reproduce",)))
    monkeypatch.setattr(cli, "COMMAND_MODULES", modules)
    return cli.main(argv)


@pytest.fixture(scope="module")
def crc_root(tmp_path_factory) -> Path:
    return datasets.write_crc_like(tmp_path_factory.mktemp("crc"), images=20, size=64, seed=0)


def test_crc_layout_is_the_published_one(crc_root):
    folder = crc_root / "Classification" / "img3"
    assert sorted(p.name for p in folder.iterdir()) == [
        "img3.bmp",
        "img3_epithelial.mat",
        "img3_fibroblast.mat",
        "img3_inflammatory.mat",
        "img3_others.mat",
    ]
    det = loadmat(folder / "img3_epithelial.mat")["detection"]
    assert det.ndim == 2 and det.shape[1] == 2 and det.min() >= 1  # 1-based (x, y)


def test_crc_records_label_by_epithelial_nuclei(crc_root, tmp_path):
    records, names, note = datasets.crc_records(crc_root, tmp_path)
    assert names == ["benign", "malignant"] and len(records) == 20
    assert "assumed" in note
    for r in records:
        n = int(Path(r.path).stem[3:])
        assert r.label == n % 2  # write_crc_like makes odd images malignant
        assert r.patient == f"slide{(n - 1) // 10 + 1:02d}"
        assert load_mask(r.mask).any() == bool(r.label)
    assert load_bag(records[0], 32).shape == (4, 32, 32, 3)  # the paper's 4 patches per image
    assert len(patient_kfold(records, k=2)) == 2
    # an explicit patients table wins
    table = crc_root / "patients.csv"
    with table.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "patient"])
        w.writerows([[f"img{n}", f"p{n % 5}"] for n in range(1, 21)])
    try:
        records, _, note = datasets.crc_records(crc_root, tmp_path / "b")
        assert {r.patient for r in records} == {
            f"p{k}" for k in range(5)
        } and "patients.csv" in note
    finally:
        table.unlink()
    bags = datasets.crc_nuclei_bags(records, tmp_path)
    tiles = np.load(bags[0].path)["tiles"]
    assert tiles.shape[1:] == (27, 27, 3) and bags[0].label == records[0].label


def test_crc_bad_files(tmp_path):
    with pytest.raises(MilsilError, match="imgN"):
        datasets.crc_records(tmp_path, tmp_path / "c")
    savemat(tmp_path / "x.mat", {"other": np.zeros((2, 2))})
    with pytest.raises(MilsilError, match="detection"):
        datasets.read_detections(tmp_path / "x.mat")
    (tmp_path / "y.mat").write_text("junk")
    with pytest.raises(MilsilError, match="MATLAB"):
        datasets.read_detections(tmp_path / "y.mat")


def test_camelyon16_sampling_and_resume(tmp_path):
    root = datasets.write_camelyon_like(
        tmp_path / "cam", tumour_slides=2, normal_slides=1, size=(384, 256)
    )
    assert (root / "training" / "lesion_annotations" / "tumor_001.xml").is_file()
    out = tmp_path / "patches"
    records, names = datasets.camelyon16_records(
        root, out, patch=64, max_patches_per_slide=8, log=lambda _m: None
    )
    assert names == ["benign", "malignant"]
    assert {r.patient for r in records} == {"tumor_001", "tumor_002", "normal_001"}
    assert all(r.label == 0 for r in records if r.patient.startswith("normal"))
    assert any(r.label == 1 for r in records)
    for r in records:
        assert load_mask(r.mask).any() == bool(r.label)
    # a rerun reuses finished slides
    stamp = os.stat(out / "done" / "tumor_001.json").st_mtime_ns
    datasets.prepare_camelyon16(root, out, patch=64, max_patches_per_slide=8, log=lambda _m: None)
    assert os.stat(out / "done" / "tumor_001.json").st_mtime_ns == stamp


def test_reproduce_synthetic_prints_both_tables(tmp_path, monkeypatch, capsys):
    argv = [
        "reproduce",
        "--dataset",
        "synthetic",
        "--root",
        str(tmp_path / "data"),
        "--out",
        str(tmp_path / "out"),
        "--patients",
        "4",
        "--images",
        "4",
        "--size",
        "64",
        "--folds",
        "2",
        "--width",
        "8",
        "--epochs",
        "1",
        "--lr",
        "1e-3",
        "--batch-size",
        "4",
        "--device",
        "cpu",
        "--max-localization-images",
        "1",
    ]
    assert run_cli(argv, monkeypatch) == 0
    text = capsys.readouterr().out
    assert "Table 1" in text and "Table 2" in text and "Logit heatmap" in text
    t1 = text.split("Table 1")[1].split("Table 2")[0]
    assert "BagNet" in t1 and "MILBagNet" in t1 and "Proposed" in t1 and "+-" in t1
    t2 = text.split("Table 2")[1]
    for name in ("ADMW", "ADMP", "RN50", "DN161"):
        assert name in t2
    results = json.loads((tmp_path / "out" / "reproduce.json").read_text())
    assert len(results["methods"]["proposed"]["folds"]) == 2
    assert results["methods"]["admp"]["folds"] == []  # N/A without nucleus annotations


def test_reproduce_crc_and_camelyon16_protocols(crc_root, tmp_path, monkeypatch, capsys):
    common = [
        "--width",
        "8",
        "--epochs",
        "1",
        "--lr",
        "1e-3",
        "--batch-size",
        "4",
        "--device",
        "cpu",
        "--no-localization",
    ]
    argv = [
        "reproduce",
        "--dataset",
        "crc",
        "--root",
        str(crc_root),
        "--out",
        str(tmp_path / "crc"),
        "--methods",
        "proposed,admp",
        "--folds",
        "2",
        "--patch-size",
        "32",
        *common,
    ]
    assert run_cli(argv, monkeypatch) == 0
    results = json.loads((tmp_path / "crc" / "reproduce.json").read_text())
    assert results["splits"] == 2 and len(results["methods"]["admp"]["folds"]) == 2
    cam = datasets.write_camelyon_like(
        tmp_path / "cam", tumour_slides=2, normal_slides=2, size=(256, 192)
    )
    argv = [
        "reproduce",
        "--dataset",
        "camelyon16",
        "--root",
        str(cam),
        "--out",
        str(tmp_path / "c16"),
        "--methods",
        "proposed",
        "--cam-patch",
        "64",
        "--patches-per-slide",
        "4",
        *common,
    ]
    assert run_cli(argv, monkeypatch) == 0
    results = json.loads((tmp_path / "c16" / "reproduce.json").read_text())
    assert results["splits"] == 1 and "80/20" in results["protocol"]
    assert "CAM16" in capsys.readouterr().out
