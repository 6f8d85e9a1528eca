"""Dataset adapters on files in the exact published formats.

The annotations here are written by hand (nucleus centres in MATLAB ``detection`` arrays,
rectangles in ASAP XML as text), and the labels each test expects are worked out by hand
from those annotations (which image holds an epithelial centre; which patch box overlaps a
rectangle, by interval arithmetic), never by calling the label rule under test.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.io import loadmat, savemat

from milsil.data import load_bag, load_mask, patient_kfold
from milsil.data.dataset import instance_labels
from milsil.errors import MilsilError
from milsil.experiments import public as datasets

# ------------------------------------------------------------------ CRC HistoPhenotypes

# Hand-written annotations, as MATLAB writes them: 1-based (x, y) nucleus centres.
CRC_ANNOTATIONS = {
    "img1": {"epithelial": [[10, 20], [50.5, 45]], "fibroblast": [[30, 30]]},
    "img2": {"fibroblast": [[5, 5]], "inflammatory": [[60, 12]], "others": [[33, 60]]},
    "img3": {"epithelial": [], "inflammatory": [[40, 40]]},  # an empty epithelial file
    "img4": {"epithelial": [[64, 64]]},  # no other files at all
    "img11": {"others": [[2, 63]]},
    "img12": {"epithelial": [[33, 3]]},
}
# Worked out by hand: malignant = the image holds at least one epithelial nucleus.
CRC_EXPECTED = {"img1": 1, "img2": 0, "img3": 0, "img4": 1, "img11": 0, "img12": 1}
# Each 64x64 image is a bag of four 32x32 instances (row-major); an instance is malignant
# when an epithelial nucleus disc (radius 5) reaches into it. img1: centres (9, 19) and
# (49.5, 44) 0-based -> top-left and bottom-right; img4: (63, 63) -> bottom-right only;
# img12: (32, 2), disc x 27..37 -> top-left and top-right.
CRC_INSTANCES = {
    "img1": [1, 0, 0, 1],
    "img2": [0, 0, 0, 0],
    "img3": [0, 0, 0, 0],
    "img4": [0, 0, 0, 1],
    "img11": [0, 0, 0, 0],
    "img12": [1, 1, 0, 0],
}


def write_crc_published(root: Path, patients: dict[str, str] | None) -> Path:
    """``CRCHistoPhenotypes_2016_04_28/Classification/imgN/imgN.bmp`` and ``imgN_<class>.mat``."""
    base = root / "CRCHistoPhenotypes_2016_04_28" / "Classification"
    rng = np.random.default_rng(0)
    for image, parts in CRC_ANNOTATIONS.items():
        folder = base / image
        folder.mkdir(parents=True)
        pixels = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{image}.bmp")
        for kind, centres in parts.items():
            det = np.asarray(centres, dtype=np.float64).reshape(-1, 2)
            savemat(folder / f"{image}_{kind}.mat", {"detection": det})
    top = root / "CRCHistoPhenotypes_2016_04_28"
    if patients is not None:
        with (top / "patients.csv").open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["image", "patient"])
            w.writerows(patients.items())
    return top


def test_crc_labels_masks_and_instances_from_hand_written_detections(tmp_path):
    patients = {"img1": "A", "img2": "A", "img3": "B", "img4": "B", "img11": "C", "img12": "C"}
    root = write_crc_published(tmp_path, patients)
    det = loadmat(root / "Classification" / "img1" / "img1_epithelial.mat")["detection"]
    assert det.shape == (2, 2)  # what the reader reads is what MATLAB wrote
    records, names, note = datasets.crc_records(root, tmp_path / "cache")
    assert names == ["benign", "malignant"] and "patients.csv" in note
    by_image = {Path(r.path).stem: r for r in records}
    assert {k: r.label for k, r in by_image.items()} == CRC_EXPECTED
    assert {k: r.patient for k, r in by_image.items()} == patients
    mask = load_mask(by_image["img1"].mask)
    assert mask[19, 9] and mask[44, 49] and mask.sum() == 2 * 81  # two discs of radius 5
    assert not load_mask(by_image["img2"].mask).any()  # fibroblasts are not malignant
    for image, expected in CRC_INSTANCES.items():
        got = instance_labels(by_image[image], 32, positive=1, negative=0)
        assert got.tolist() == expected, image
    assert load_bag(by_image["img1"], 32).shape == (4, 32, 32, 3)
    # ADMP: one 27x27 patch centred on every annotated nucleus, of any class
    bags = datasets.crc_nuclei_bags(records, tmp_path / "cache")
    counts = {Path(b.path).stem: len(np.load(b.path)["tiles"]) for b in bags}
    assert counts == {"img1": 3, "img2": 3, "img3": 1, "img4": 1, "img11": 1, "img12": 1}
    image = np.asarray(Image.open(root / "Classification" / "img2" / "img2.bmp"))
    tiles = np.load(next(b.path for b in bags if "img2" in b.path))["tiles"]
    assert np.array_equal(tiles[0][13, 13], image[4, 4])  # (5, 5) 1-based at the centre


def test_crc_without_patients_refuses_unless_slide_blocks_are_assumed(tmp_path):
    root = write_crc_published(tmp_path, None)
    with pytest.raises(MilsilError, match="leak") as info:
        datasets.crc_records(root, tmp_path / "cache")
    assert "--assume-slide-blocks" in str(info.value) and "patients.csv" in str(info.value)
    records, _, note = datasets.crc_records(root, tmp_path / "cache", assume_slide_blocks=True)
    assert "ASSUMED" in note
    # img1-10 -> slide01, img11-20 -> slide02
    assert {Path(r.path).stem: r.patient for r in records} == {
        "img1": "slide01",
        "img2": "slide01",
        "img3": "slide01",
        "img4": "slide01",
        "img11": "slide02",
        "img12": "slide02",
    }


def test_crc_bad_files(tmp_path):
    with pytest.raises(MilsilError, match="imgN"):
        datasets.crc_records(tmp_path, tmp_path / "c")
    savemat(tmp_path / "x.mat", {"other": np.zeros((2, 2))})
    with pytest.raises(MilsilError, match="detection"):
        datasets.read_detections(tmp_path / "x.mat")
    (tmp_path / "y.mat").write_text("junk")
    with pytest.raises(MilsilError, match="MATLAB"):
        datasets.read_detections(tmp_path / "y.mat")


def test_crc_like_writer_is_the_published_layout(tmp_path):
    root = datasets.write_crc_like(tmp_path / "crc", images=12, size=64, seed=0)
    folder = root / "Classification" / "img3"
    assert sorted(p.name for p in folder.iterdir()) == [
        "img3.bmp",
        "img3_epithelial.mat",
        "img3_fibroblast.mat",
        "img3_inflammatory.mat",
        "img3_others.mat",
    ]
    records, _, note = datasets.crc_records(root, tmp_path / "cache")
    assert "patients.csv" in note and len(patient_kfold(records, k=2)) == 2


# --------------------------------------------------------------------------- CAMELYON16

# ASAP XML as CAMELYON16 ships it, written as text: a tumour rectangle (group _0), a
# second tumour polygon (group _1) and an exclusion rectangle inside the first (_2).
ASAP_XML = """<?xml version="1.0"?>
<ASAP_Annotations>
\t<Annotations>
\t\t<Annotation Name="Annotation 0" Type="Polygon" PartOfGroup="_0" Color="#F4FA58">
\t\t\t<Coordinates>
\t\t\t\t<Coordinate Order="0" X="70" Y="70" />
\t\t\t\t<Coordinate Order="1" X="1.70e+02" Y="70" />
\t\t\t\t<Coordinate Order="2" X="170" Y="170" />
\t\t\t\t<Coordinate Order="3" X="70" Y="170" />
\t\t\t</Coordinates>
\t\t</Annotation>
\t\t<Annotation Name="Annotation 1" Type="Polygon" PartOfGroup="_1" Color="#F4FA58">
\t\t\t<Coordinates>
\t\t\t\t<Coordinate Order="0" X="300" Y="20" />
\t\t\t\t<Coordinate Order="1" X="330" Y="20" />
\t\t\t\t<Coordinate Order="2" X="330" Y="40" />
\t\t\t\t<Coordinate Order="3" X="300" Y="40" />
\t\t\t</Coordinates>
\t\t</Annotation>
\t\t<Annotation Name="Annotation 2" Type="Polygon" PartOfGroup="_2" Color="#64FE2E">
\t\t\t<Coordinates>
\t\t\t\t<Coordinate Order="0" X="128" Y="128" />
\t\t\t\t<Coordinate Order="1" X="170" Y="128" />
\t\t\t\t<Coordinate Order="2" X="170" Y="170" />
\t\t\t\t<Coordinate Order="3" X="128" Y="170" />
\t\t\t</Coordinates>
\t\t</Annotation>
\t</Annotations>
\t<AnnotationGroups>
\t\t<Group Name="_0" PartOfGroup="None" Color="#FF0000"><Attributes /></Group>
\t\t<Group Name="_1" PartOfGroup="None" Color="#FF0000"><Attributes /></Group>
\t\t<Group Name="_2" PartOfGroup="None" Color="#00FF00"><Attributes /></Group>
\t</AnnotationGroups>
</ASAP_Annotations>
"""
TUMOUR = [(70, 170, 70, 170), (300, 330, 20, 40)]  # x0, x1, y0, y1
EXCLUDED = (128, 170, 128, 170)


def _overlap(a: tuple, b: tuple) -> float:
    """Area of two axis-aligned boxes' intersection (x0, x1, y0, y1)."""
    w = min(a[1], b[1]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[2], b[2])
    return max(w, 0) * max(h, 0)


def expected_label(x: int, y: int, size: int) -> int:
    """By hand: tumour area inside the box minus the excluded area, positive or not."""
    box = (x, x + size, y, y + size)
    area = sum(_overlap(box, t) for t in TUMOUR) - _overlap(box, EXCLUDED)
    return int(area > 0)


def write_camelyon_published(root: Path) -> Path:
    """``training/tumor/tumor_001.tif`` + ``training/lesion_annotations/tumor_001.xml``,
    ``training/normal/normal_00{1,2}.tif`` and a ``testing/images/test_001.tif``: pyramidal
    TIFFs of 384x256 pixels that are tissue (pink, textured) everywhere."""
    from milsil.wsi.tiff import write_pyramidal_tiff

    for sub in (
        "training/tumor",
        "training/normal",
        "training/lesion_annotations",
        "testing/images",
    ):
        (root / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for path in (
        root / "training/tumor/tumor_001.tif",
        root / "training/normal/normal_001.tif",
        root / "training/normal/normal_002.tif",
        root / "testing/images/test_001.tif",
    ):
        pink = np.array([225, 140, 195]) + rng.integers(-25, 25, (256, 384, 3))
        write_pyramidal_tiff(path, pink.clip(0, 255).astype(np.uint8), mpp=0.5)
    (root / "training/lesion_annotations/tumor_001.xml").write_text(ASAP_XML)
    return root


def test_camelyon16_labels_from_hand_written_asap_xml(tmp_path):
    root = write_camelyon_published(tmp_path / "CAMELYON16")
    out = tmp_path / "patches"
    records, names, summary = datasets.camelyon16_records(
        root, out, patch=64, max_patches_per_slide=1000, normal_slides=1, log=lambda _m: None
    )
    assert names == ["benign", "malignant"]
    # the first normal slide by name, no test slide; one slide = one patient
    assert summary["tumour_slides"] == ["tumor_001"] and summary["normal_slides"] == ["normal_001"]
    assert any("test_001" in n for n in summary["notes"])
    assert any("only 1 tumour slides" in n for n in summary["notes"])
    assert {r.patient for r in records} == {"tumor_001", "normal_001"}
    tumour = [r for r in records if r.patient == "tumor_001"]
    assert len(tumour) > 6
    labels = {}
    for r in tumour:
        _, x, y = Path(r.path).stem.rsplit("_", 2)
        labels[(int(x), int(y))] = r.label
        assert r.label == expected_label(int(x), int(y), 64), (x, y)
    # the cases that matter are there: inside, at an edge, one whose tumour is all
    # excluded (benign), the small second polygon across two patches
    assert labels[(64, 64)] == 1 and labels[(128, 64)] == 1 and labels[(128, 128)] == 0
    assert labels[(256, 0)] == 1 and labels[(320, 0)] == 1 and labels[(0, 0)] == 0
    assert all(r.label == 0 for r in records if r.patient == "normal_001")
    # instances (32x32 quarters, row-major) carry their own label from the contours:
    # the second polygon (x 300-330, y 20-40) touches the right quarters of (256, 0)
    by_xy = {tuple(int(v) for v in Path(r.path).stem.rsplit("_", 2)[1:]): r for r in tumour}
    for (x, y), quarters in (((256, 0), [0, 1, 0, 1]), ((320, 0), [1, 0, 1, 0])):
        got = instance_labels(by_xy[(x, y)], 32, positive=1, negative=0).tolist()
        assert (
            got
            == quarters
            == [expected_label(x + dx, y + dy, 32) for dy in (0, 32) for dx in (0, 32)]
        )
    assert instance_labels(by_xy[(128, 128)], 32, 1, 0).tolist() == [0, 0, 0, 0]


def test_camelyon16_budget_and_resume(tmp_path):
    root = write_camelyon_published(tmp_path / "CAMELYON16")
    out = tmp_path / "patches"
    _, _, summary = datasets.camelyon16_records(
        root, out, patch=64, total_patches=12, log=lambda _m: None
    )
    # 12 patches over 1 tumour + 2 normal slides: a quota of 4 each
    assert summary["quota_per_slide"] == 4 and summary["patches"] == 12
    assert summary["target_patches"] == 12
    stamp = os.stat(out / "done" / "tumor_001.json").st_mtime_ns
    datasets.prepare_camelyon16(root, out, patch=64, total_patches=12, log=lambda _m: None)
    assert os.stat(out / "done" / "tumor_001.json").st_mtime_ns == stamp  # reused
    datasets.prepare_camelyon16(root, out, patch=64, total_patches=6, log=lambda _m: None)
    assert os.stat(out / "done" / "tumor_001.json").st_mtime_ns != stamp  # new settings
