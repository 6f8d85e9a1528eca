"""Persistent state under one data directory: SQLite for metadata, files for bulk data.

Layout::

    DATA_DIR/milsil.db            datasets, models, jobs (SQLite, WAL)
    DATA_DIR/datasets/<id>/       bags/<sha>.npz (tiles uint8 [N,h,w,3]) + manifest.csv
    DATA_DIR/models/<id>.pt       checkpoints (milsil.models.save_checkpoint format)
    DATA_DIR/jobs/<id>/           a training run's out_dir (last.pt, best.pt, log.jsonl,
                                  trainer.lock: held by the one trainer that owns the folder)
    DATA_DIR/tmp/                 uploads in progress (emptied at start)
    DATA_DIR/slide-work/          resumable whole-slide maps; DATA_DIR/outputs/: default TIFFs

The data dir and every folder in it are 0700 and the database (with its WAL and SHM
files) 0600, whatever the umask: the store holds patient ids and labels.

Every file is written to a temporary name and renamed into place, and a database row is
written only after its files exist, so a killed server leaves either the old state or the
new one. Dataset ids are content hashes: the same bags uploaded twice are stored once.
Clients never name server paths; they name ids, which are checked against a strict pattern.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import re
import shutil
import sqlite3
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from milsil.atomic import atomic_copy, atomic_write_bytes, file_sha256
from milsil.errors import MilsilError, NotFoundError

ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 100

_SCHEMA = """
CREATE TABLE IF NOT EXISTS datasets (id TEXT PRIMARY KEY, create_time REAL NOT NULL, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS models (id TEXT PRIMARY KEY, create_time REAL NOT NULL, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (id TEXT PRIMARY KEY, create_time REAL NOT NULL, state TEXT NOT NULL,
                                 data TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state);
"""


def new_id(prefix: str = "") -> str:
    """A fresh id matching :data:`ID_PATTERN`."""
    return f"{prefix}{uuid.uuid4().hex[:12]}"


def parse_name(name: str, collection: str, field_name: str = "name") -> str:
    """``"models/abc"`` (or ``"abc"``) -> ``"abc"``; MilsilError naming the field otherwise."""
    if not isinstance(name, str) or not name:
        raise MilsilError(f"{field_name} is required: '{collection}/{{id}}'")
    ident = name[len(collection) + 1 :] if name.startswith(collection + "/") else name
    if not ID_PATTERN.match(ident):
        raise MilsilError(
            f"{field_name} {name[:80]!r} is not a valid resource name; allowed: '{collection}/{{id}}' "
            "with an id of 1-63 lowercase letters, digits and '-'"
        )
    return ident


def parse_page(page_size: int, page_token: str) -> tuple[int, int]:
    """Validate paging fields -> (limit, offset)."""
    if page_size < 0 or page_size > MAX_PAGE_SIZE:
        raise MilsilError(
            f"page_size must be 0-{MAX_PAGE_SIZE} (0 = {DEFAULT_PAGE_SIZE}), got {page_size}"
        )
    limit = page_size or DEFAULT_PAGE_SIZE
    if not page_token:
        return limit, 0
    if not page_token.isdigit() or len(page_token) > 12:
        raise MilsilError(
            "page_token is not a token returned by this server; pass next_page_token or empty"
        )
    return limit, int(page_token)


def class_order(labels: set[str]) -> list[str]:
    """Class names in label order, exactly as :func:`milsil.data.class_order` orders them."""
    from milsil.data import class_order as data_class_order

    return data_class_order(labels)


@dataclass
class DatasetWriter:
    """Collects the bags of one upload in a private temporary folder.

    Each bag is stored as ``bags/<sha256>.npz``; the dataset id is the hash of the sorted
    bag digests (with labels and patients), so it depends only on the content.
    """

    store: Store
    folder: Path
    bags: list[dict[str, Any]] = field(default_factory=list)
    tile_count: int = 0
    size_bytes: int = 0

    def add_bag(self, label: str, patient: str, tiles: np.ndarray) -> None:
        if tiles.ndim != 4 or tiles.shape[-1] != 3 or tiles.dtype != np.uint8 or len(tiles) == 0:
            raise MilsilError(
                f"a bag needs uint8 tiles [N, h, w, 3] with N >= 1, got shape {tiles.shape}"
            )
        label = label.strip()  # "tumor " and "tumor" are one class
        if not label:
            raise MilsilError("bags[].label is required (a class name such as 'malignant')")
        if not patient:
            raise MilsilError(
                "bags[].patient_id is required (bags of one patient stay on one side of a split)"
            )
        if len(label) > 100 or len(patient) > 200:
            raise MilsilError(
                "bags[].label must be at most 100 and patient_id at most 200 characters"
            )
        digest = hashlib.sha256()
        digest.update(repr(tiles.shape).encode())
        digest.update(np.ascontiguousarray(tiles).tobytes())
        sha = digest.hexdigest()
        path = self.folder / "bags" / f"{sha}.npz"
        if not path.exists():
            buf = io.BytesIO()
            np.savez(buf, tiles=tiles)
            atomic_write_bytes(path, buf.getvalue(), private=True)
            self.size_bytes += path.stat().st_size
        self.bags.append(
            {
                "sha": sha,
                "label": label,
                "patient": patient,
                "tiles": int(len(tiles)),
                "tile_size": [int(tiles.shape[1]), int(tiles.shape[2])],
            }
        )
        self.tile_count += int(len(tiles))

    def content_id(self) -> str:
        keys = sorted(f"{b['sha']}\t{b['label']}\t{b['patient']}" for b in self.bags)
        return "ds-" + hashlib.sha256("\n".join(keys).encode()).hexdigest()[:24]


# Folders the server keeps under its data dir (all 0700).
PRIVATE_FOLDERS = ("datasets", "models", "jobs", "tmp", "slide-work", "outputs")


def private_dir(path: Path) -> Path:
    """Create ``path`` (and missing parents) as an owner-only (0700) folder, whatever the
    umask; an existing folder is made 0700 too."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)
    return path


def _numbers(raw: dict[Any, Any]) -> dict[str, float]:
    """The finite numbers of an untrusted mapping (a checkpoint's provenance metrics)."""
    out = {}
    for key, value in raw.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                number = float(value)
            except OverflowError:
                continue
            if math.isfinite(number):
                out[str(key)[:100]] = number
    return out


class Store:
    """Metadata in SQLite (one connection, serialized by a lock: the load is tiny)."""

    def __init__(self, data_dir: str | Path) -> None:
        self.root = Path(data_dir).expanduser().resolve()
        # Owner-only, whatever the umask: the store holds patient ids and labels.
        private_dir(self.root)
        for sub in PRIVATE_FOLDERS:
            private_dir(self.root / sub)
        for sub in ("datasets", "jobs"):  # folders of older versions, made private
            for entry in (self.root / sub).iterdir():
                if entry.is_dir() and not entry.is_symlink():
                    os.chmod(entry, 0o700)
        for leftover in (self.root / "tmp").iterdir():  # uploads cut off by a crash
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)
        self._lock = threading.RLock()
        db_path = self.root / "milsil.db"
        # SQLite creates its -wal and -shm files with the database file's mode: 0600.
        os.close(os.open(db_path, os.O_RDWR | os.O_CREAT, 0o600))
        os.chmod(db_path, 0o600)
        for side in ("-wal", "-shm", "-journal"):
            side_path = db_path.with_name(db_path.name + side)
            if side_path.exists():
                os.chmod(side_path, 0o600)
        self._db = sqlite3.connect(db_path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ------------------------------------------------------------------ generic rows

    def _put(self, table: str, ident: str, data: dict[str, Any]) -> None:
        with self._lock:
            if table == "jobs":
                self._db.execute(
                    "INSERT OR REPLACE INTO jobs (id, create_time, state, data) VALUES (?, ?, ?, ?)",
                    (ident, data["create_time"], data["state"], json.dumps(data)),
                )
            else:
                self._db.execute(
                    f"INSERT OR REPLACE INTO {table} (id, create_time, data) VALUES (?, ?, ?)",
                    (ident, data["create_time"], json.dumps(data)),
                )

    def _get(self, table: str, ident: str, what: str) -> dict[str, Any]:
        with self._lock:
            row = self._db.execute(f"SELECT data FROM {table} WHERE id = ?", (ident,)).fetchone()
        if row is None:
            raise NotFoundError(f"{what} {table}/{ident} not found")
        return json.loads(row[0])

    def _list(
        self, table: str, limit: int, offset: int, state: str | None = None
    ) -> tuple[list[dict], bool]:
        query = f"SELECT data FROM {table}"
        args: list[Any] = []
        if state:
            query += " WHERE state = ?"
            args.append(state)
        query += " ORDER BY create_time DESC, id LIMIT ? OFFSET ?"
        args += [limit + 1, offset]
        with self._lock:
            rows = self._db.execute(query, args).fetchall()
        return [json.loads(r[0]) for r in rows[:limit]], len(rows) > limit

    # ------------------------------------------------------------------ datasets

    def dataset_writer(self) -> DatasetWriter:
        folder = Path(tempfile.mkdtemp(prefix="upload-", dir=self.root / "tmp"))  # 0700
        (folder / "bags").mkdir(mode=0o700)
        return DatasetWriter(self, folder)

    def discard(self, writer: DatasetWriter) -> None:
        shutil.rmtree(writer.folder, ignore_errors=True)

    def commit_dataset(
        self, writer: DatasetWriter, display_name: str
    ) -> tuple[dict[str, Any], bool]:
        """Move an upload into place (or drop it if the content exists) -> (row, already_existed)."""
        if not writer.bags:
            self.discard(writer)
            raise MilsilError("the upload held no bags; send UploadDatasetRequest.bags")
        labels = {b["label"] for b in writer.bags}
        by_case: dict[str, str] = {}
        for label in sorted(labels):
            other = by_case.setdefault(label.casefold(), label)
            if other != label:
                self.discard(writer)
                raise MilsilError(
                    f"bags[].label {other!r} and {label!r} differ only by case; "
                    "use one spelling per class"
                )
        if len(labels) < 2:
            self.discard(writer)
            raise MilsilError(
                f"a dataset needs bags of at least 2 classes, got only {sorted(labels)}"
            )
        ident = writer.content_id()
        with self._lock:
            try:
                existing = self._get("datasets", ident, "dataset")
            except NotFoundError:
                existing = None
            if existing is not None:
                self.discard(writer)
                return existing, True
            final = self.root / "datasets" / ident
            if final.exists():  # files of a crash between rename and insert: replace them
                shutil.rmtree(final)
            classes = class_order(labels)
            manifest = os.open(
                writer.folder / "manifest.csv", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600
            )
            with open(manifest, "w", newline="") as fh:
                out = csv.writer(fh)
                out.writerow(["image", "label", "patient"])
                for bag in writer.bags:
                    out.writerow([f"bags/{bag['sha']}.npz", bag["label"], bag["patient"]])
            os.replace(writer.folder, final)
            row = {
                "id": ident,
                "display_name": display_name,
                "class_names": classes,
                "bags": writer.bags,
                "bag_count": len(writer.bags),
                "tile_count": writer.tile_count,
                "patient_count": len({b["patient"] for b in writer.bags}),
                "size_bytes": writer.size_bytes,
                "create_time": time.time(),
            }
            self._put("datasets", ident, row)
            return row, False

    def get_dataset(self, ident: str) -> dict[str, Any]:
        return self._get("datasets", ident, "dataset")

    def dataset_dir(self, ident: str) -> Path:
        return self.root / "datasets" / ident

    # ------------------------------------------------------------------ models

    def model_path(self, ident: str) -> Path:
        return self.root / "models" / f"{ident}.pt"

    def register_model(
        self,
        checkpoint: Path,
        ident: str,
        display_name: str = "",
        source_job: str = "",
        metrics: dict[str, float] | None = None,
        patch_size: int = 0,
        move: bool = False,
        label: str | None = None,
    ) -> dict[str, Any]:
        """Validate a checkpoint (weights_only load, config bounds, every tensor's shape on
        the meta device, then the weights) and register it under ``ident``.

        ``label`` names the file in error messages (clients never see server paths)."""
        from milsil.models import load_checkpoint

        if not ID_PATTERN.match(ident):
            raise MilsilError(
                f"model_id {ident[:80]!r} is invalid; allowed: 1-63 lowercase letters, digits and '-'"
            )
        model = load_checkpoint(checkpoint, label=label or "the checkpoint")
        config = model.config.to_dict()
        provenance = getattr(model, "provenance", None) or {}
        if not isinstance(provenance, dict):
            provenance = {}
        if not patch_size:
            train_cfg = (
                provenance.get("config") if isinstance(provenance.get("config"), dict) else {}
            )
            try:
                patch_size = int(train_cfg.get("patch_size") or 0)
            except (TypeError, ValueError, OverflowError):
                patch_size = 0
            if not 0 <= patch_size <= 1 << 16:
                patch_size = 0  # untrusted provenance: an int32 field must not overflow
        if metrics is None:
            raw = provenance.get("metrics") if isinstance(provenance.get("metrics"), dict) else {}
            metrics = _numbers(raw)
        dest = self.model_path(ident)
        with self._lock:
            try:
                self._get("models", ident, "model")
                raise_exists = True
            except NotFoundError:
                raise_exists = False
            if raise_exists:
                from milsil_server.errors import AlreadyExists

                raise AlreadyExists(
                    f"model models/{ident} already exists; pick another model_id or delete it"
                )
            if move:
                os.replace(checkpoint, dest)
            else:
                atomic_copy(Path(checkpoint), dest, private=True)
            row = {
                "id": ident,
                "display_name": display_name,
                "arch": config["arch"],
                "head": config["head"],
                "width": int(config["width"]),
                "class_names": list(config["class_names"]),
                "receptive_field": int(model.receptive_field or 0),
                "patch_size": int(patch_size),
                "source_job": source_job,
                "metrics": {k: float(v) for k, v in metrics.items()},
                "size_bytes": dest.stat().st_size,
                "sha256": file_sha256(dest),
                "create_time": time.time(),
                **model_trust(model),
            }
            self._put("models", ident, row)
        return row

    def get_model(self, ident: str) -> dict[str, Any]:
        """A model's row; rows registered before a field existed lack it (``.get``)."""
        return self._get("models", ident, "model")

    def list_models(self, limit: int, offset: int) -> tuple[list[dict], bool]:
        return self._list("models", limit, offset)

    def delete_model(self, ident: str) -> None:
        with self._lock:
            self._get("models", ident, "model")
            self._db.execute("DELETE FROM models WHERE id = ?", (ident,))
            self.model_path(ident).unlink(missing_ok=True)

    def iter_model_file(self, ident: str, chunk_size: int) -> Iterator[tuple[int, bytes]]:
        self.get_model(ident)
        path = self.model_path(ident)
        if not path.is_file():
            raise NotFoundError(f"checkpoint file of models/{ident} is missing from the data dir")
        with open(path, "rb") as fh:
            offset = 0
            while chunk := fh.read(chunk_size):
                yield offset, chunk
                offset += len(chunk)

    # ------------------------------------------------------------------ jobs

    def put_job(self, job: dict[str, Any]) -> None:
        job["update_time"] = time.time()
        self._put("jobs", job["id"], job)

    def get_job(self, ident: str) -> dict[str, Any]:
        return self._get("jobs", ident, "job")

    def list_jobs(
        self, limit: int, offset: int, state: str | None = None
    ) -> tuple[list[dict], bool]:
        return self._list("jobs", limit, offset, state)

    def jobs_in_state(self, *states: str) -> list[dict[str, Any]]:
        marks = ",".join("?" * len(states))
        with self._lock:
            rows = self._db.execute(
                f"SELECT data FROM jobs WHERE state IN ({marks}) ORDER BY create_time", states
            ).fetchall()
        return [json.loads(r[0]) for r in rows]

    def job_dir(self, ident: str) -> Path:
        return self.root / "jobs" / ident


def model_trust(model: Any) -> dict[str, Any]:
    """What a user needs to know to trust a model's answers (``Model`` fields): how it
    judges an input's familiarity and at what threshold (empty / 0 without a reference),
    and the stain normalization it applies (empty: none)."""
    from milsil.models import model_familiarity

    reference = model_familiarity(model)
    return {
        "familiarity_method": reference.method if reference is not None else "",
        "familiarity_threshold": float(reference.threshold) if reference is not None else 0.0,
        "stain_normalization": stain_method(model),
    }


def stain_method(model: Any) -> str:
    """The model's stain normalization method ("macenko", "reinhard"), or "" for none.

    Stain normalization (issue 20, the checkpoint's ``stain_normalization`` entry) is not
    on this branch yet: no model here carries one, so this is "" until it is merged, when
    it reads ``milsil.models.stain.model_stain(model).method``.
    """
    return ""
