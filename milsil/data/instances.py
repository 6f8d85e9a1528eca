"""Per-nucleus instance masks: the ground truth for nucleus-level evaluation.

A dataset written by ``milsil synth`` holds, beside ``images/`` and ``masks/``:

* ``instances/<stem>.png``: the instance label image, 16-bit (``.npy`` uint32 when an image
  holds 65,535 nuclei or more): 0 is background, ``k`` is nucleus ``k``; each pixel belongs
  to the nucleus drawn on top there, so nuclei never share a pixel;
* ``instances/<stem>.json``: ``{"nuclei": [{"id", "class", "kind", "x", "y", "pixels"}]}``,
  one entry per label ``1..N`` in order; ``x, y`` is the centroid in pixel coordinates
  (pixel ``(i, j)`` is the unit square whose centre is ``(j + 0.5, i + 0.5)``);
* ``instances.csv`` (columns ``image,instances,classes``, paths relative to the folder): the
  index that :func:`read_instance_index` reads. The manifest itself is unchanged, so every
  reader of manifests keeps working.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from milsil.errors import MilsilError

INDEX_NAME = "instances.csv"
INDEX_COLUMNS = ("image", "instances", "classes")


@dataclass(frozen=True)
class InstanceFiles:
    """Absolute paths of one image's instance label image and its table."""

    labels: str
    table: str


def assemble_instances(
    shape: tuple[int, int],
    benign: list[tuple[str, np.ndarray, np.ndarray]],
    malignant: np.ndarray | None,
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """One label image from per-group ownership maps (:func:`milsil.data.nuclei.draw_nuclei`).

    ``benign``: ``(kind, owner, owner_value)`` per group; where groups overlap the darker
    nucleus wins (as the densities combine). ``malignant``: the malignant group's owner map,
    on top of everything (malignant nuclei occlude benign ones, as the generator draws them).
    Nuclei left without a pixel are dropped. Returns ``(labels uint32 HxW, table)``.
    """
    best = np.full(shape, -np.inf)
    gid = np.full(shape, -1, dtype=np.int64)
    kinds: list[str] = []
    classes: list[str] = []
    for kind, owner, value in benign:
        n = int(owner.max()) + 1 if owner.size else 0
        better = (owner >= 0) & (value > best)
        gid[better] = len(kinds) + owner[better]
        best[better] = value[better]
        kinds += [kind] * n
        classes += ["benign"] * n
    if malignant is not None:
        n = int(malignant.max()) + 1 if malignant.size else 0
        on = malignant >= 0
        gid[on] = len(kinds) + malignant[on]
        kinds += ["malignant"] * n
        classes += ["malignant"] * n
    present = np.unique(gid[gid >= 0])
    labels = np.zeros(shape, dtype=np.uint32)
    inside = gid >= 0
    labels[inside] = np.searchsorted(present, gid[inside]) + 1
    return labels, instance_table(
        labels, [classes[g] for g in present], [kinds[g] for g in present]
    )


def instance_table(
    labels: np.ndarray, classes: list[str], kinds: list[str] | None = None
) -> list[dict[str, Any]]:
    """``[{"id", "class", "kind", "x", "y", "pixels"}]`` for labels ``1..len(classes)``."""
    n = len(classes)
    flat = labels.ravel().astype(np.int64)
    ii, jj = np.divmod(np.arange(flat.size), labels.shape[1])
    pixels = np.bincount(flat, minlength=n + 1)[1 : n + 1]
    sy = np.bincount(flat, weights=ii + 0.5, minlength=n + 1)[1 : n + 1]
    sx = np.bincount(flat, weights=jj + 0.5, minlength=n + 1)[1 : n + 1]
    safe = np.maximum(pixels, 1)
    return [
        {
            "id": k + 1,
            "class": classes[k],
            "kind": (kinds or classes)[k],
            "x": round(float(sx[k] / safe[k]), 3),
            "y": round(float(sy[k] / safe[k]), 3),
            "pixels": int(pixels[k]),
        }
        for k in range(n)
    ]


def write_instances(
    out_dir: str | Path, stem: str, labels: np.ndarray, table: list[dict[str, Any]]
) -> tuple[str, str]:
    """Write ``instances/<stem>.png|.npy`` and ``instances/<stem>.json`` under ``out_dir``;
    their paths relative to ``out_dir``."""
    folder = Path(out_dir) / "instances"
    folder.mkdir(parents=True, exist_ok=True)
    if int(labels.max(initial=0)) < 2**16:
        name = f"instances/{stem}.png"
        Image.fromarray(labels.astype(np.uint16)).save(Path(out_dir) / name)
    else:
        name = f"instances/{stem}.npy"
        np.save(Path(out_dir) / name, labels.astype(np.uint32))
    table_name = f"instances/{stem}.json"
    (Path(out_dir) / table_name).write_text(json.dumps({"nuclei": table}, separators=(",", ":")))
    return name, table_name


def write_instance_index(out_dir: str | Path, rows: list[tuple[str, str, str]]) -> Path:
    """``out_dir/instances.csv``: ``image,instances,classes`` rows (relative paths)."""
    path = Path(out_dir) / INDEX_NAME
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(INDEX_COLUMNS)
        writer.writerows(rows)
    tmp.replace(path)
    return path


def read_instance_index(data: str | Path) -> dict[str, InstanceFiles]:
    """``{absolute image path: InstanceFiles}`` from the ``instances.csv`` beside a manifest
    (``data`` is the manifest CSV or the dataset folder); empty when there is none."""
    data = Path(data)
    folder = data if data.is_dir() else data.parent
    path = folder / INDEX_NAME
    if not path.is_file():
        return {}
    base = folder.resolve()
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        if tuple(reader.fieldnames or ()) != INDEX_COLUMNS:
            raise MilsilError(
                f"{path}: the header must be {','.join(INDEX_COLUMNS)}, got "
                f"{','.join(reader.fieldnames or []) or 'nothing'}"
            )
        return {
            str((base / row["image"]).resolve()): InstanceFiles(
                str((base / row["instances"]).resolve()), str((base / row["classes"]).resolve())
            )
            for row in reader
        }


def load_instances(files: InstanceFiles) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """``(labels int64 HxW, table)``: the label image and its nuclei (``table[k - 1]`` is
    label ``k``)."""
    try:
        if files.labels.endswith(".npy"):
            labels = np.load(files.labels, allow_pickle=False)
        else:
            with Image.open(files.labels) as img:
                labels = np.asarray(img)
        table = json.loads(Path(files.table).read_text())["nuclei"]
    except (OSError, ValueError, KeyError) as exc:
        raise MilsilError(f"cannot read instances {files.labels} / {files.table}: {exc}") from None
    labels = labels.astype(np.int64)
    if labels.ndim != 2 or labels.min(initial=0) < 0 or labels.max(initial=0) > len(table):
        raise MilsilError(
            f"{files.labels}: labels must be a 2-d image of 0..{len(table)} (its table's nuclei)"
        )
    return labels, table
