"""Datasets as lists of :class:`BagRecord`, read from a manifest or a class-per-folder tree,
and patient-level splits.

Images of one patient share stain, scanner and tissue, so a model tested on a patient it
was trained on looks better than it is; the paper splits by patient (80/20 and 5-fold),
and so do :func:`patient_split` and :func:`patient_kfold`: no patient is ever on both sides.
"""

from __future__ import annotations

import csv
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from milsil.errors import MilsilError, NotFoundError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".npz")
REQUIRED_COLUMNS = ("image", "label", "patient")
OPTIONAL_COLUMNS = ("mask",)
BINARY_CLASSES = ("benign", "malignant")


@dataclass(frozen=True)
class BagRecord:
    """One bag: an image cut into patches, or a ``.npz`` whose ``tiles`` array is the bag.

    ``path`` and ``mask`` are absolute. ``mask`` (malignant regions) is for evaluating
    localisation only, never for training: the paper's supervision is the bag label alone.
    """

    path: str
    label: int
    patient: str
    mask: str | None = None


def class_order(names: set[str] | Sequence[str]) -> list[str]:
    """The fixed class order: ``benign, malignant`` when the labels are (a subset of) those,
    else sorted, so label indices do not depend on which classes a split happens to hold."""
    names = set(names)
    if names <= set(BINARY_CLASSES):
        return list(BINARY_CLASSES)
    return sorted(names)


def _resolve(base: Path, value: str) -> Path:
    p = Path(value).expanduser()
    return (p if p.is_absolute() else base / p).resolve()


def write_manifest(out_dir: str | Path, rows: Sequence[Sequence[str]]) -> Path:
    """Write ``out_dir/manifest.csv`` (image,label,patient,mask) atomically; its path.

    The writers of datasets (the synthetic generator, the CAMELYON16 adapter) share it, so
    what they write is what :func:`read_manifest` reads.
    """
    manifest = Path(out_dir) / "manifest.csv"
    tmp = manifest.with_suffix(".csv.tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS])
        writer.writerows(rows)
    tmp.replace(manifest)
    return manifest


def read_manifest(
    csv_path: str | Path, class_names: Sequence[str] | None = None
) -> tuple[list[BagRecord], list[str]]:
    """Read ``image,label,patient[,mask]`` rows; paths are relative to the CSV's folder.

    ``label`` is a class name. With ``class_names`` given, labels must be among them (and
    that order is kept); otherwise the order is :func:`class_order` of the labels found.
    Every referenced file must exist, so a typo fails here and not hours into training.
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise NotFoundError(f"manifest not found: {csv_path}")
    base = csv_path.resolve().parent
    try:
        with csv_path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            columns = [c.strip() for c in (reader.fieldnames or [])]
            rows = [
                {(k or "").strip(): (v or "").strip() for k, v in row.items() if k is not None}
                for row in reader
            ]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise MilsilError(f"manifest {csv_path} is not a readable CSV file: {exc}") from None
    allowed = REQUIRED_COLUMNS + OPTIONAL_COLUMNS
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    unknown = [c for c in columns if c not in allowed]
    if missing or unknown:
        problem = []
        if missing:
            problem.append(f"missing column(s) {', '.join(missing)}")
        if unknown:
            problem.append(f"unknown column(s) {', '.join(unknown)}")
        raise MilsilError(
            f"manifest {csv_path}: {'; '.join(problem)}; the header must be "
            f"image,label,patient with an optional mask column (found: {','.join(columns) or 'nothing'})"
        )
    if not rows:
        raise MilsilError(f"manifest {csv_path} has a header but no rows")

    labels = [r["label"] for r in rows]
    if class_names is not None:
        names = list(class_names)
        if len(set(names)) != len(names) or not names:
            raise MilsilError(f"class names must be distinct and non-empty, got {names}")
    else:
        names = class_order({lab for lab in labels if lab})
    index = {n: i for i, n in enumerate(names)}

    records = []
    for line, row in enumerate(rows, start=2):  # line 1 is the header
        where = f"manifest {csv_path}, line {line}"
        if not row["image"]:
            raise MilsilError(f"{where}: empty image path")
        if row["label"] not in index:
            raise MilsilError(
                f"{where}: unknown label {row['label']!r}; allowed: {', '.join(names)}"
            )
        if not row["patient"]:
            raise MilsilError(f"{where}: empty patient id (needed for patient-level splits)")
        image = _resolve(base, row["image"])
        if not image.is_file():
            raise NotFoundError(f"{where}: image not found: {image}")
        if image.suffix.lower() not in IMAGE_SUFFIXES:
            raise MilsilError(
                f"{where}: {image.name} has an unsupported type; allowed: {', '.join(IMAGE_SUFFIXES)}"
            )
        mask = None
        if row.get("mask"):
            mask_path = _resolve(base, row["mask"])
            if not mask_path.is_file():
                raise NotFoundError(f"{where}: mask not found: {mask_path}")
            mask = str(mask_path)
        records.append(BagRecord(str(image), index[row["label"]], row["patient"], mask))
    return records, names


def scan_folder(
    root: str | Path, class_names: Sequence[str] | None = None
) -> tuple[list[BagRecord], list[str]]:
    """Records from ``root/<class>/*.png|jpg|tif|npz``; patient = file stem before the first ``_``.

    Each sub-folder holding at least one image is a class (hidden folders are skipped).
    """
    root = Path(root)
    if not root.is_dir():
        raise NotFoundError(f"dataset folder not found: {root}")
    found: dict[str, list[Path]] = {}
    for sub in sorted(root.iterdir()):
        if not sub.is_dir() or sub.name.startswith("."):
            continue
        files = sorted(
            f for f in sub.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
        )
        if files:
            found[sub.name] = files
    if not found:
        raise MilsilError(
            f"no images in {root}: expected a manifest.csv or class folders "
            f"root/<class>/*{'|*'.join(IMAGE_SUFFIXES)}"
        )
    if class_names is not None:
        names = list(class_names)
        unknown = sorted(set(found) - set(names))
        if unknown:
            raise MilsilError(
                f"{root}: unknown class folder(s) {', '.join(unknown)}; allowed: {', '.join(names)}"
            )
    else:
        names = class_order(set(found))
    records = [
        BagRecord(str(f.resolve()), names.index(cls), f.stem.split("_", 1)[0], None)
        for cls, files in found.items()
        for f in files
    ]
    return records, names


def load_dataset(
    path: str | Path, class_names: Sequence[str] | None = None
) -> tuple[list[BagRecord], list[str]]:
    """A CSV file (or a folder holding ``manifest.csv``) is a manifest; any other folder is scanned."""
    path = Path(path)
    if path.is_file():
        if path.suffix.lower() != ".csv":
            raise MilsilError(f"dataset {path} must be a .csv manifest or a folder")
        return read_manifest(path, class_names)
    if path.is_dir():
        if (path / "manifest.csv").is_file():
            return read_manifest(path / "manifest.csv", class_names)
        return scan_folder(path, class_names)
    raise NotFoundError(f"dataset not found: {path}")


# --- patient-level splits ------------------------------------------------------------


def _patients_by_stratum(
    records: Sequence[BagRecord], seed: int
) -> tuple[list[list[str]], dict[str, list[int]]]:
    """Group record indices by patient and patients by their majority label (ties: lower).

    Patients within a stratum are shuffled by ``seed``; strata are ordered by label.
    """
    by_patient: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(records):
        by_patient[r.patient].append(i)
    strata: dict[int, list[str]] = defaultdict(list)
    for patient in sorted(by_patient):
        counts = Counter(records[i].label for i in by_patient[patient])
        top = max(counts.values())
        strata[min(lab for lab, c in counts.items() if c == top)].append(patient)
    rng = np.random.default_rng(seed)
    ordered = []
    for label in sorted(strata):
        group = strata[label]
        ordered.append([group[i] for i in rng.permutation(len(group))])
    return ordered, by_patient


def _take(
    records: Sequence[BagRecord], by_patient: dict[str, list[int]], patients
) -> list[BagRecord]:
    keep = sorted(i for p in patients for i in by_patient[p])
    return [records[i] for i in keep]


def patient_split(
    records: Sequence[BagRecord], test_fraction: float = 0.2, seed: int = 0
) -> tuple[list[BagRecord], list[BagRecord]]:
    """Split by patient into ``(train, test)``, about ``test_fraction`` of patients in test.

    Stratified: patients are grouped by their majority label and each group contributes
    its share of test patients (largest remainder), so both sides see every class when
    there are enough patients. Deterministic for a seed; records keep their input order.
    """
    if not 0.0 < float(test_fraction) < 1.0:
        raise MilsilError(
            f"test_fraction must be between 0 and 1 (exclusive), got {test_fraction!r}"
        )
    strata, by_patient = _patients_by_stratum(records, seed)
    n_patients = len(by_patient)
    if n_patients < 2:
        raise MilsilError(
            f"a patient-level split needs at least 2 patients, the data has {n_patients}"
        )
    n_test = min(n_patients - 1, max(1, int(round(test_fraction * n_patients))))
    quotas = [len(g) * n_test / n_patients for g in strata]
    take = [int(q) for q in quotas]
    order = sorted(range(len(strata)), key=lambda s: (-(quotas[s] - take[s]), s))
    for s in order[: n_test - sum(take)]:
        take[s] += 1
    test_patients = [p for g, t in zip(strata, take, strict=True) for p in g[:t]]
    train_patients = [p for p in by_patient if p not in set(test_patients)]
    return _take(records, by_patient, train_patients), _take(records, by_patient, test_patients)


def patient_kfold(
    records: Sequence[BagRecord], k: int = 5, seed: int = 0
) -> list[tuple[list[BagRecord], list[BagRecord]]]:
    """``k`` folds of ``(train, test)``; every patient is in exactly one test fold.

    Patients are dealt round-robin across folds stratum by stratum (majority label), so
    each fold holds a proportional mix of classes as far as the patients allow.
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 2:
        raise MilsilError(f"k must be an integer >= 2, got {k!r}")
    strata, by_patient = _patients_by_stratum(records, seed)
    n_patients = len(by_patient)
    if n_patients < k:
        raise MilsilError(
            f"{k}-fold cross-validation needs at least {k} patients, the data has {n_patients}; "
            f"use a smaller k"
        )
    fold_of: dict[str, int] = {}
    position = 0
    for group in strata:
        for patient in group:
            fold_of[patient] = position % k
            position += 1
    folds = []
    for f in range(k):
        test = [p for p in by_patient if fold_of[p] == f]
        train = [p for p in by_patient if fold_of[p] != f]
        folds.append((_take(records, by_patient, train), _take(records, by_patient, test)))
    return folds
