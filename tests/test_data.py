"""milsil.data: reading pixels, exact bags, manifests, patient splits, datasets and batching."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from milsil.data import (
    BagDataset,
    BagRecord,
    bucket_batches,
    collate_bags,
    hed_jitter,
    image_to_bag,
    load_dataset,
    load_mask,
    load_rgb,
    patch_origins,
    patient_kfold,
    patient_split,
    read_manifest,
    scan_folder,
    to_tensor,
)
from milsil.data.synth import synthesize_dataset
from milsil.errors import MilsilError, NotFoundError

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def _random_rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _save(path: Path, arr: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(arr)
    if mode:
        img = img.convert(mode)
    img.save(path)
    return path


def _records(labels_by_patient: dict[str, list[int]]) -> list[BagRecord]:
    return [
        BagRecord(f"/x/{p}_{i}.png", lab, p)
        for p, labels in labels_by_patient.items()
        for i, lab in enumerate(labels)
    ]


@pytest.fixture(scope="module")
def synth_ds(tmp_path_factory) -> Path:
    return synthesize_dataset(
        tmp_path_factory.mktemp("synth"), patients=4, images_per_patient=3, size=64, seed=2
    )


# --- pixels ----------------------------------------------------------------------------


def test_load_rgb_round_trip_and_conversions(tmp_path):
    rgb = _random_rgb(20, 30)
    assert np.array_equal(load_rgb(_save(tmp_path / "a.png", rgb)), rgb)
    rgba = np.dstack([rgb, np.full((20, 30), 7, np.uint8)])
    out = load_rgb(_save(tmp_path / "b.png", rgba))
    assert out.shape == (20, 30, 3) and np.array_equal(out, rgb)
    grey = load_rgb(_save(tmp_path / "c.png", rgb[..., 0]))
    assert grey.dtype == np.uint8 and grey.shape == (20, 30, 3)
    assert np.array_equal(grey[..., 0], rgb[..., 0]) and np.array_equal(grey[..., 2], rgb[..., 0])
    deep = (np.arange(600, dtype=np.uint16).reshape(20, 30) * 100).astype(np.uint16)
    Image.fromarray(deep).save(tmp_path / "d.png")
    d = load_rgb(tmp_path / "d.png")
    assert d.dtype == np.uint8 and d[-1, -1, 0] > 200 and d[0, 0, 0] == 0


def test_load_rgb_errors(tmp_path):
    with pytest.raises(NotFoundError, match="not found"):
        load_rgb(tmp_path / "missing.png")
    (tmp_path / "junk.png").write_bytes(b"this is not a png")
    with pytest.raises(MilsilError, match="not a readable image"):
        load_rgb(tmp_path / "junk.png")
    good = _save(tmp_path / "t.png", _random_rgb(64, 64)).read_bytes()
    (tmp_path / "trunc.png").write_bytes(good[: len(good) // 2])
    with pytest.raises(MilsilError, match="corrupt or truncated"):
        load_rgb(tmp_path / "trunc.png")
    with pytest.raises(MilsilError, match="not a file"):
        load_rgb(tmp_path)


def test_load_mask_modes(tmp_path):
    m = np.zeros((10, 12), bool)
    m[2:5, 3:9] = True
    assert np.array_equal(load_mask(_save(tmp_path / "one.png", m)), m)
    assert np.array_equal(load_mask(_save(tmp_path / "l.png", m.astype(np.uint8) * 255)), m)
    rgba = np.zeros((10, 12, 4), np.uint8)
    rgba[..., 3] = 255  # opaque everywhere: alpha must not count as "inside"
    rgba[m, 0] = 255
    out = load_mask(_save(tmp_path / "rgba.png", rgba))
    assert out.dtype == bool and np.array_equal(out, m)


def test_to_tensor_normalises_and_moves_channels():
    px = _random_rgb(5, 7)
    t = to_tensor(px, MEAN, STD)
    assert t.shape == (3, 5, 7) and t.dtype == torch.float32
    expect = (px[2, 3, 1] / 255.0 - MEAN[1]) / STD[1]
    assert t[1, 2, 3].item() == pytest.approx(expect, abs=1e-6)
    batch = to_tensor(np.stack([px, px]), MEAN, STD)
    assert batch.shape == (2, 3, 5, 7) and torch.equal(batch[1], t)
    with pytest.raises(MilsilError, match="uint8"):
        to_tensor(px.astype(np.float32), MEAN, STD)
    with pytest.raises(MilsilError, match=r"\[\.\.\., H, W, 3\]"):
        to_tensor(px[..., :2].copy(), MEAN, STD)


# --- bags ------------------------------------------------------------------------------


def test_image_to_bag_is_exact_row_major_grid():
    img = _random_rgb(130, 200, seed=1)
    bag = image_to_bag(img, 64)
    origins = patch_origins(130, 200, 64)
    assert bag.shape == (6, 64, 64, 3) and bag.dtype == np.uint8
    assert origins == [(0, 0), (0, 64), (0, 128), (64, 0), (64, 64), (64, 128)]
    for patch, (y, x) in zip(bag, origins, strict=True):
        assert np.array_equal(patch, img[y : y + 64, x : x + 64])


def test_image_to_bag_rejects_small_images_and_bad_patch_size():
    with pytest.raises(MilsilError, match="smaller than one 64x64 patch"):
        image_to_bag(_random_rgb(63, 200), 64)
    with pytest.raises(MilsilError, match="smaller than one"):
        patch_origins(100, 10, 32)
    with pytest.raises(MilsilError, match="patch_size"):
        image_to_bag(_random_rgb(64, 64), 0)
    with pytest.raises(MilsilError, match="HxWx3"):
        image_to_bag(np.zeros((64, 64), np.uint8), 32)


# --- manifests and folders -----------------------------------------------------------------


def test_manifest_round_trip(synth_ds):
    records, names = read_manifest(synth_ds)
    assert names == ["benign", "malignant"]
    with synth_ds.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(records) == len(rows) == 12
    for rec, row in zip(records, rows, strict=True):
        assert Path(rec.path).is_absolute()
        assert Path(rec.path) == (synth_ds.parent / row["image"]).resolve()
        assert rec.mask == str((synth_ds.parent / row["mask"]).resolve())
        assert names[rec.label] == row["label"] and rec.patient == row["patient"]
        assert load_mask(rec.mask).any() == (rec.label == 1)
    # a folder holding manifest.csv and the CSV itself give the same dataset
    assert load_dataset(synth_ds.parent) == (records, names)
    assert load_dataset(synth_ds) == (records, names)


def _write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def test_manifest_one_class_keeps_binary_order_and_optional_mask(tmp_path):
    _save(tmp_path / "img" / "a.png", _random_rgb(8, 8))
    csv_path = _write_csv(
        tmp_path / "m.csv", ["image", "label", "patient"], [["img/a.png", "malignant", "p1"]]
    )
    records, names = read_manifest(csv_path)
    assert names == ["benign", "malignant"] and records[0].label == 1 and records[0].mask is None
    csv_path = _write_csv(
        tmp_path / "n.csv", ["image", "label", "patient"], [["img/a.png", "tumour", "p1"]]
    )
    assert read_manifest(csv_path)[1] == ["tumour"]


@pytest.mark.parametrize(
    "header, row, error, message",
    [
        (["image", "label"], ["img/a.png", "benign"], MilsilError, "missing column.*patient"),
        (["image", "label", "patient", "extra"], ["img/a.png", "benign", "p", "1"], MilsilError, "unknown column.*extra"),
        (["image", "label", "patient"], ["img/a.png", "", "p1"], MilsilError, "line 2: unknown label ''"),
        (["image", "label", "patient"], ["img/a.png", "benign", ""], MilsilError, "empty patient"),
        (["image", "label", "patient"], ["img/nope.png", "benign", "p1"], NotFoundError, "line 2: image not found"),
        (["image", "label", "patient", "mask"], ["img/a.png", "benign", "p1", "no.png"], NotFoundError, "mask not found"),
    ],
)  # fmt: skip
def test_manifest_errors(tmp_path, header, row, error, message):
    _save(tmp_path / "img" / "a.png", _random_rgb(8, 8))
    csv_path = _write_csv(tmp_path / "m.csv", header, [row])
    with pytest.raises(error, match=message):
        read_manifest(csv_path)


def test_manifest_unknown_label_with_given_classes(tmp_path):
    _save(tmp_path / "a.png", _random_rgb(8, 8))
    csv_path = _write_csv(tmp_path / "m.csv", ["image", "label", "patient"], [["a.png", "x", "p"]])
    with pytest.raises(MilsilError, match="unknown label 'x'; allowed: benign, malignant"):
        read_manifest(csv_path, class_names=["benign", "malignant"])
    with pytest.raises(NotFoundError, match="manifest not found"):
        read_manifest(tmp_path / "none.csv")
    _write_csv(tmp_path / "empty.csv", ["image", "label", "patient"], [])
    with pytest.raises(MilsilError, match="no rows"):
        read_manifest(tmp_path / "empty.csv")


def test_scan_folder_classes_and_patients(tmp_path):
    for name in ("malignant/p2_0.png", "malignant/p2_1.png", "benign/p1_x_y.png", "benign/p3.png"):
        _save(tmp_path / name, _random_rgb(8, 8))
    np.savez(tmp_path / "benign" / "p4_bag.npz", tiles=np.zeros((2, 8, 8, 3), np.uint8))
    (tmp_path / "benign" / "notes.txt").write_text("ignored")
    (tmp_path / ".hidden").mkdir()
    _save(tmp_path / ".hidden" / "q_0.png", _random_rgb(8, 8))
    records, names = scan_folder(tmp_path)
    assert names == ["benign", "malignant"]
    got = sorted((Path(r.path).name, r.label, r.patient) for r in records)
    assert got == [
        ("p1_x_y.png", 0, "p1"),
        ("p2_0.png", 1, "p2"),
        ("p2_1.png", 1, "p2"),
        ("p3.png", 0, "p3"),
        ("p4_bag.npz", 0, "p4"),
    ]
    assert load_dataset(tmp_path) == (records, names)
    with pytest.raises(MilsilError, match="unknown class folder"):
        scan_folder(tmp_path, class_names=["benign"])


def test_scan_and_load_errors(tmp_path):
    with pytest.raises(NotFoundError):
        load_dataset(tmp_path / "nothing")
    with pytest.raises(MilsilError, match="no images"):
        scan_folder(tmp_path)
    (tmp_path / "data.txt").write_text("x")
    with pytest.raises(MilsilError, match=r"\.csv manifest or a folder"):
        load_dataset(tmp_path / "data.txt")


# --- patient splits --------------------------------------------------------------------


def _patients(records):
    return {r.patient for r in records}


def _labelled_patients(n_benign: int, n_malignant: int) -> list[BagRecord]:
    table = {f"b{i}": [0, 0, 0, 1] for i in range(n_benign)}
    table.update({f"m{i}": [1, 1, 0] for i in range(n_malignant)})
    return _records(table)


def test_patient_split_no_leakage_deterministic_stratified():
    records = _labelled_patients(10, 5)
    train, test = patient_split(records, 0.2, seed=0)
    assert not _patients(train) & _patients(test)
    assert _patients(train) | _patients(test) == _patients(records)
    assert len(train) + len(test) == len(records)
    assert len(_patients(test)) == 3
    # stratified: 2 of the 10 mostly-benign and 1 of the 5 mostly-malignant patients
    kinds = Counter(p[0] for p in _patients(test))
    assert kinds == {"b": 2, "m": 1}
    assert patient_split(records, 0.2, seed=0) == (train, test)
    splits = {tuple(sorted(_patients(patient_split(records, 0.2, seed=s)[1]))) for s in range(6)}
    assert len(splits) > 1
    # input order is kept on both sides
    assert train == [r for r in records if r.patient in _patients(train)]


def test_patient_split_errors():
    with pytest.raises(MilsilError, match="at least 2 patients"):
        patient_split(_records({"a": [0, 1, 1]}))
    with pytest.raises(MilsilError, match="test_fraction"):
        patient_split(_labelled_patients(3, 3), test_fraction=1.0)


def test_patient_kfold_partitions_patients_and_stratifies():
    records = _labelled_patients(10, 5)
    folds = patient_kfold(records, k=5, seed=1)
    assert len(folds) == 5
    seen = []
    for train, test in folds:
        assert not _patients(train) & _patients(test)
        assert _patients(train) | _patients(test) == _patients(records)
        assert len(train) + len(test) == len(records)
        seen.extend(_patients(test))
        # 15 patients over 5 folds: 2 mostly-benign + 1 mostly-malignant each
        assert Counter(p[0] for p in _patients(test)) == {"b": 2, "m": 1}
    assert sorted(seen) == sorted(_patients(records))
    assert patient_kfold(records, k=5, seed=1) == folds
    assert patient_kfold(records, k=5, seed=2) != folds


def test_patient_kfold_errors():
    with pytest.raises(MilsilError, match="5-fold cross-validation needs at least 5 patients"):
        patient_kfold(_labelled_patients(2, 2), k=5)
    with pytest.raises(MilsilError, match="k must be"):
        patient_kfold(_labelled_patients(2, 2), k=1)


# --- dataset, augmentation, batching -------------------------------------------------------


def test_bag_dataset_items_equal_normalised_crops(tmp_path):
    img = _random_rgb(70, 140, seed=3)
    rec = BagRecord(str(_save(tmp_path / "p_0.png", img)), 1, "p")
    ds = BagDataset([rec], 32, MEAN, STD)
    assert ds.bag_sizes == [2 * 4]
    bag, label = ds[0]
    assert label == 1 and bag.shape == (8, 3, 32, 32) and bag.dtype == torch.float32
    assert torch.equal(bag, to_tensor(image_to_bag(img, 32), MEAN, STD))
    y, x = patch_origins(70, 140, 32)[5]
    assert torch.equal(bag[5], to_tensor(img[y : y + 32, x : x + 32], MEAN, STD))


def _dihedral(patch: np.ndarray) -> list[np.ndarray]:
    rots = [np.rot90(patch, k) for k in range(4)]
    return rots + [r[:, ::-1] for r in rots]


def test_augmentation_is_per_patch_dihedral_and_seeded(tmp_path):
    img = _random_rgb(64, 128, seed=4)
    rec = BagRecord(str(_save(tmp_path / "p_0.png", img)), 0, "p")
    plain = image_to_bag(img, 16)
    ds = BagDataset([rec], 16, MEAN, STD, augment=True, seed=5)
    draws = [ds.load_pixels(0) for _ in range(3)]
    for aug in draws:
        for a, p in zip(aug, plain, strict=True):
            assert any(np.array_equal(a, d) for d in _dihedral(p))
    assert not np.array_equal(draws[0], plain)  # 32 patches: some must have moved
    assert not np.array_equal(draws[0], draws[1])  # a new draw per visit
    again = BagDataset([rec], 16, MEAN, STD, augment=True, seed=5)
    assert np.array_equal(again.load_pixels(0), draws[0])
    again.set_epoch(1)
    assert not np.array_equal(again.load_pixels(0), draws[1])


def test_color_jitter_changes_stain_not_layout(tmp_path):
    rgb = np.full((32, 32, 3), (200, 120, 190), np.uint8)  # pink stroma
    rgb[8:16, 8:16] = (90, 80, 160)  # a purple nucleus
    out = hed_jitter(rgb, np.random.default_rng(0), 0.1)
    assert out.shape == rgb.shape and out.dtype == np.uint8
    assert not np.array_equal(out, rgb)
    assert np.abs(out.astype(int) - rgb).max() < 80
    # still darkest where the nucleus is
    assert out.mean(2)[8:16, 8:16].mean() < out.mean(2)[20:, 20:].mean() - 30
    assert np.array_equal(hed_jitter(rgb, np.random.default_rng(0), 0.0), rgb)
    rec = BagRecord(str(_save(tmp_path / "p_0.png", rgb)), 0, "p")
    jittered, _ = BagDataset([rec], 32, MEAN, STD, color_jitter=0.1)[0]
    assert not torch.equal(jittered[0], to_tensor(rgb, MEAN, STD))


def test_npz_bags_and_bad_inputs(tmp_path):
    tiles = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    np.savez(tmp_path / "p_bag.npz", tiles=tiles)
    np.savez(tmp_path / "big.npz", tiles=np.zeros((2, 64, 64, 3), np.uint8))
    ds = BagDataset(
        [
            BagRecord(str(tmp_path / "p_bag.npz"), 1, "p"),
            BagRecord(str(tmp_path / "big.npz"), 0, "q"),
        ],
        32,
        MEAN,
        STD,
    )
    assert ds.bag_sizes == [3, 8]
    assert torch.equal(ds[0][0], to_tensor(tiles, MEAN, STD))
    assert ds[1][0].shape == (8, 3, 32, 32)
    np.savez(tmp_path / "wrong.npz", pixels=tiles)
    with pytest.raises(MilsilError, match="no 'tiles' array"):
        BagDataset([BagRecord(str(tmp_path / "wrong.npz"), 0, "p")], 32, MEAN, STD)
    with pytest.raises(MilsilError, match="smaller than one 64x64 patch"):
        BagDataset([BagRecord(str(tmp_path / "p_bag.npz"), 0, "p")], 64, MEAN, STD)
    small = _save(tmp_path / "small.png", _random_rgb(40, 40))
    with pytest.raises(MilsilError, match="small.png.*smaller than one 64x64 patch"):
        BagDataset([BagRecord(str(small), 0, "p")], 64, MEAN, STD)
    with pytest.raises(NotFoundError):
        BagDataset([BagRecord(str(tmp_path / "gone.png"), 0, "p")], 64, MEAN, STD)
    with pytest.raises(MilsilError, match="at least one bag"):
        BagDataset([], 64, MEAN, STD)


def test_bucket_batches_group_equal_sizes():
    sizes = [4, 6, 4, 4, 6, 9, 4, 4]
    for shuffle in (False, True):
        batches = bucket_batches(sizes, 2, shuffle=shuffle, seed=3)
        flat = [i for b in batches for i in b]
        assert sorted(flat) == list(range(len(sizes)))
        for b in batches:
            assert 1 <= len(b) <= 2 and len({sizes[i] for i in b}) == 1
    assert bucket_batches(sizes, 2, shuffle=False) == [[0, 2], [1, 4], [3, 6], [5], [7]]
    a = bucket_batches(sizes, 2, shuffle=True, seed=3)
    assert a == bucket_batches(sizes, 2, shuffle=True, seed=3)
    assert any(bucket_batches(sizes, 2, shuffle=True, seed=s) != a for s in range(4, 8))
    with pytest.raises(MilsilError, match="batch_size"):
        bucket_batches(sizes, 0, shuffle=False)


def test_collate_and_dataloader_end_to_end(synth_ds, tmp_path):
    records, _ = read_manifest(synth_ds)
    extra = BagRecord(str(_save(tmp_path / "wide_0.png", _random_rgb(64, 96))), 0, "wide")
    ds = BagDataset(records + [extra], 32, MEAN, STD, augment=True)
    loader = DataLoader(
        ds, batch_sampler=bucket_batches(ds.bag_sizes, 4, True), collate_fn=collate_bags
    )
    seen = 0
    for bags, labels in loader:
        assert bags.ndim == 5 and bags.shape[2:] == (3, 32, 32) and labels.dtype == torch.long
        assert bags.shape[1] in (4, 6) and len(labels) == len(bags)
        seen += len(labels)
    assert seen == len(ds)
    with pytest.raises(MilsilError, match="same shape"):
        collate_bags([ds[0], ds[len(ds) - 1]])
