"""QuPath GeoJSON objects in, per-object measurements out.

Shared by ``milsil measure-objects`` (the library, local) and ``milsil client
measure-objects`` (the server's MeasureObjects): reading QuPath's object exports (a cell's
nucleus is its ``nucleusGeometry``), and writing measurements back into
``properties.measurements`` as QuPath reads them. Torch-free, like all of
:mod:`milsil.client`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from milsil.client.messages import Familiarity
from milsil.errors import MilsilError
from milsil.v1 import inference_service_pb2

ROI_CHOICES = ("nucleus", "cell")
# The measurement of an object's familiarity (its region's score), as the QuPath scripts
# and the server's Annotate/AnnotateSlide features name it.
OOD_MEASUREMENT = "milsil OOD score"


def read_features(path: str | Path) -> tuple[Any, list[dict]]:
    """``(document, features)`` of a GeoJSON file: a FeatureCollection, a list of features
    or one feature. ``document`` is what was read, so it can be written back as it came."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MilsilError(f"objects file not found: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MilsilError(f"{path}: not a GeoJSON file ({exc})") from None
    if isinstance(doc, Mapping) and doc.get("type") == "FeatureCollection":
        features = doc.get("features")
    elif isinstance(doc, list):
        features = doc
    elif isinstance(doc, Mapping) and doc.get("type") == "Feature":
        features = [doc]
    else:
        raise MilsilError(
            f"{path}: expected a GeoJSON FeatureCollection, a list of features or a feature"
        )
    if not isinstance(features, list) or not all(isinstance(f, Mapping) for f in features):
        raise MilsilError(f"{path}: 'features' must be a list of GeoJSON features")
    if not features:
        raise MilsilError(f"{path}: no features to measure")
    return doc, features


def object_geometry(feature: Mapping, index: int, roi: str = "nucleus") -> Mapping:
    """The geometry measured for one feature: a cell's nucleus (QuPath's
    ``nucleusGeometry``) when ``roi`` is ``nucleus`` and the feature has one, else its
    ``geometry``; only polygons and multipolygons can be measured."""
    if roi not in ROI_CHOICES:
        raise MilsilError(f"roi must be one of {', '.join(ROI_CHOICES)}, got {roi!r}")
    geometry = feature.get("nucleusGeometry") if roi == "nucleus" else None
    geometry = geometry or feature.get("geometry")
    kind = geometry.get("type") if isinstance(geometry, Mapping) else None
    if kind not in ("Polygon", "MultiPolygon"):
        name = feature.get("id", f"#{index}")
        raise MilsilError(
            f"feature {index} ({name}) has geometry type {kind!r}; only Polygon and "
            "MultiPolygon objects can be measured (points and lines hold no pixels)"
        )
    return geometry


def add_measurements(features: Sequence[dict], rows: Sequence[Mapping[str, float]]) -> int:
    """Add each row of measurements to its feature's ``properties.measurements`` (a name ->
    number map, as QuPath writes it; other measurements are kept). An object with values
    that are not finite (outside the image or region) gets none of them: GeoJSON has no
    NaN. Returns how many features got no measurements for that reason."""
    unmeasured = 0
    for feature, values in zip(features, rows, strict=True):
        props = feature.setdefault("properties", {})
        if not isinstance(props, dict):
            raise MilsilError(f"feature {feature.get('id')!r}: 'properties' must be an object")
        measurements = props.get("measurements")
        if not isinstance(measurements, dict):
            measurements = {}
        if all(math.isfinite(v) for v in values.values()):
            measurements.update(values)
        else:
            unmeasured += 1
        props["measurements"] = measurements
    return unmeasured


def geometry_bounds(geometries: Sequence[Mapping]) -> tuple[float, float, float, float]:
    """Level-0 ``(x0, y0, x1, y1)`` around Polygon/MultiPolygon geometries."""
    points = []
    for g in geometries:
        polygons = [g["coordinates"]] if g.get("type") == "Polygon" else g["coordinates"]
        points.extend(np.asarray(ring, np.float64)[:, :2] for poly in polygons for ring in poly)
    if not points:
        raise MilsilError("no objects to measure")
    allp = np.concatenate(points)
    lo, hi = allp.min(0), allp.max(0)
    return float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1])


def region_around(geometries: Sequence[Mapping]) -> tuple[float, float, float, float]:
    """Level-0 ``(x, y, width, height)`` in whole pixels around the geometries, one pixel
    wider on each side (never below 0): MeasureObjects' default region."""
    x0, y0, x1, y1 = geometry_bounds(geometries)
    left, top = max(0.0, math.floor(x0) - 1), max(0.0, math.floor(y0) - 1)
    return left, top, math.ceil(x1) + 1 - left, math.ceil(y1) + 1 - top


@dataclass
class ObjectResult:
    """The measurements of MeasureObjects, rows in the order the objects were sent, and
    how like the training data their region was (``familiarity``)."""

    class_names: list[str]
    ids: list[str]
    mean_logits: np.ndarray  # [N, C]
    max_logits: np.ndarray  # [N, C]
    probabilities: np.ndarray  # [N, C]
    pixels: np.ndarray  # [N]
    familiarity: Familiarity = Familiarity()

    def measurements(self) -> list[dict[str, float]]:
        """Per object, QuPath measurement names (as :mod:`milsil.inference.objects`), and
        the region's familiarity score (:data:`OOD_MEASUREMENT`) when the model has one."""
        rows = []
        for k in range(len(self.ids)):
            row: dict[str, float] = {}
            for c, name in enumerate(self.class_names):
                row[f"milsil mean logit({name})"] = float(self.mean_logits[k, c])
                row[f"milsil max logit({name})"] = float(self.max_logits[k, c])
                row[f"milsil p({name})"] = float(self.probabilities[k, c])
            row["milsil pixels"] = int(self.pixels[k])
            if self.familiarity.available:
                row[OOD_MEASUREMENT] = self.familiarity.score
            rows.append(row)
        return rows


def object_messages(
    objects: Sequence[tuple[str, Mapping]], per_message: int
) -> Iterator[list[inference_service_pb2.MeasureObject]]:
    """``MeasureObject`` lists of at most ``per_message`` objects (``(id, geometry)`` pairs)."""
    batch = []
    for ident, geometry in objects:
        batch.append(inference_service_pb2.MeasureObject(id=ident, geometry=json.dumps(geometry)))
        if len(batch) == per_message:
            yield batch
            batch = []
    if batch:
        yield batch


def assemble_objects(
    responses: Iterator[inference_service_pb2.MeasureObjectsResponse],
) -> ObjectResult:
    """The header and measurement batches of a MeasureObjects stream, as arrays."""
    header = None
    ids: list[str] = []
    rows: list[tuple] = []
    for response in responses:
        if response.HasField("header"):
            header = response.header
        elif response.HasField("measurements"):
            for m in response.measurements.objects:
                ids.append(m.id)
                rows.append((m.mean_logits, m.max_logits, m.probabilities, m.pixels))
    if header is None:
        raise MilsilError("the server sent no MeasureObjects header")
    c = len(header.class_names)

    def column(i: int) -> np.ndarray:
        return np.array([list(r[i]) for r in rows], np.float64).reshape(len(rows), c)

    return ObjectResult(
        list(header.class_names),
        ids,
        column(0),
        column(1),
        column(2),
        np.array([r[3] for r in rows], np.int64),
        Familiarity.from_message(header.familiarity),
    )
