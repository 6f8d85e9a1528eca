"""Heatmaps to QuPath annotations: threshold -> polygons (with holes) -> GeoJSON.

QuPath (0.4-0.7) reads a GeoJSON FeatureCollection whose features carry a UUID ``id``,
``properties.objectType`` ("annotation"), ``properties.classification`` as
``{"name", "color": [r, g, b]}`` (a classification without colour is rejected),
``properties.measurements`` as a name -> number map, and level-0 pixel coordinates.
QuPath 0.6 rounds coordinates to 0.01 px and rejects the whole file if one polygon is
invalid, so every geometry here is snapped to a 0.01 grid *by shapely* (which keeps it
valid) and checked; invalid results are repaired with ``make_valid``.

Geometry of a sample: heatmap sample ``(i, j)`` is the window centred on region pixel
``(i*stride, j*stride)``; it stands for the ``stride x stride`` cell centred on that
pixel's centre; boundaries lie midway between samples and the outer cells reach the region
border, so the cells tile the region exactly. With ``stride = 1`` cells are exactly pixels:
cell ``(i, j)`` spans level-0 ``x0 + j*ds .. x0 + (j+1)*ds``.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping
from typing import Any

import geojson
import numpy as np
import shapely
from shapely.geometry import MultiPolygon, Polygon, mapping, shape
from shapely.geometry.polygon import orient

from milsil.errors import MilsilError

OBJECT_TYPES = ("annotation", "detection", "tile", "cell", "tmaCore")
PRECISION = 0.01  # QuPath 0.6 keeps 0.01 px on import
_NAMED_COLORS = {
    "malignant": (200, 0, 0),
    "tumor": (200, 0, 0),
    "tumour": (200, 0, 0),
    "benign": (0, 150, 0),
    "normal": (0, 150, 0),
    "stroma": (150, 200, 150),
}


def default_color(name: str) -> list[int]:
    """A stable colour for a class name (QuPath needs one with every classification)."""
    if name.lower() in _NAMED_COLORS:
        return list(_NAMED_COLORS[name.lower()])
    h = abs(hash_str(name))
    return [64 + h % 160, 64 + (h // 160) % 160, 64 + (h // 25600) % 160]


def hash_str(text: str) -> int:
    """A hash that does not change between runs (Python's ``hash`` does)."""
    value = 2166136261
    for byte in text.encode():
        value = ((value ^ byte) * 16777619) & 0xFFFFFFFF
    return value


def _check_color(color: Any) -> list[int]:
    if (
        not isinstance(color, (list, tuple))
        or len(color) != 3
        or not all(isinstance(c, (int, np.integer)) and 0 <= c <= 255 for c in color)
    ):
        raise MilsilError(f"color must be [r, g, b] with integers 0-255, got {color!r}")
    return [int(c) for c in color]


def mask_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """4-connected components of a boolean mask (so each becomes one simple polygon)."""
    from scipy import ndimage

    labels, count = ndimage.label(mask)
    return labels, int(count)


def component_polygon(component: np.ndarray) -> Polygon | MultiPolygon:
    """Union of a component's cells in cell units (column = x, row = y); holes kept."""
    padded = np.pad(component.astype(np.int8), ((0, 0), (1, 1)))
    change = np.diff(padded, axis=1)
    rows_s, cols_s = np.nonzero(change == 1)
    rows_e, cols_e = np.nonzero(change == -1)
    boxes = shapely.box(cols_s, rows_s, cols_e, rows_e + 1)
    return shapely.union_all(boxes)


def _polygonal(geom: shapely.Geometry) -> Polygon | MultiPolygon | None:
    """Keep only the area parts of a geometry (repair may leave lines or points)."""
    if geom.is_empty:
        return None
    parts = [p for p in shapely.get_parts(geom) if isinstance(p, Polygon) and not p.is_empty]
    parts += [q for p in shapely.get_parts(geom) if isinstance(p, MultiPolygon) for q in p.geoms]
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else MultiPolygon(parts)


def clean_geometry(
    geom: shapely.Geometry, simplify_tolerance: float = 0.0
) -> Polygon | MultiPolygon | None:
    """Simplify (topology preserved), snap to the 0.01 px grid, repair, orient: QuPath-safe."""
    if simplify_tolerance > 0:
        geom = geom.simplify(simplify_tolerance, preserve_topology=True)
    geom = shapely.set_precision(geom, PRECISION)
    if not geom.is_valid:
        geom = shapely.set_precision(shapely.make_valid(geom), PRECISION)
    if not geom.is_valid:
        geom = shapely.set_precision(geom.buffer(0), PRECISION)
    geom = _polygonal(geom)
    if geom is None or not geom.is_valid:
        return None
    if isinstance(geom, Polygon):
        return orient(geom, sign=1.0)
    return MultiPolygon([orient(p, sign=1.0) for p in geom.geoms])


def _rounded(obj: Any) -> Any:
    if isinstance(obj, float):
        return round(obj, 2)
    if isinstance(obj, (list, tuple)):
        return [_rounded(v) for v in obj]
    return obj


def make_feature(
    geometry: Polygon | MultiPolygon,
    classification: str,
    color: list[int],
    measurements: Mapping[str, float],
    object_type: str = "annotation",
    name: str | None = None,
) -> geojson.Feature:
    """One QuPath object: UUID id, objectType, classification with colour, measurements."""
    if object_type not in OBJECT_TYPES:
        raise MilsilError(
            f"object_type must be one of {', '.join(OBJECT_TYPES)}, got {object_type!r}"
        )
    geo = mapping(geometry)
    geo = {"type": geo["type"], "coordinates": _rounded(geo["coordinates"])}
    props: dict[str, Any] = {
        "objectType": object_type,
        "classification": {"name": classification, "color": _check_color(color)},
        "measurements": {k: float(v) for k, v in measurements.items() if math.isfinite(float(v))},
        "isLocked": False,
    }
    if name:
        props["name"] = name
    cls = geojson.Polygon if geo["type"] == "Polygon" else geojson.MultiPolygon
    return geojson.Feature(
        id=str(uuid.uuid4()), geometry=cls(geo["coordinates"], precision=2), properties=props
    )


def heatmap_to_geojson(
    values: np.ndarray,
    threshold: float,
    *,
    origin: tuple[float, float] = (0.0, 0.0),
    downsample: float = 1.0,
    stride: int = 1,
    region_size: tuple[float, float] | None = None,
    classification: str = "malignant",
    color: list[int] | None = None,
    min_area: float = 0.0,
    simplify_tolerance: float = 0.0,
    measurement_maps: Mapping[str, np.ndarray] | None = None,
    object_type: str = "annotation",
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Outline ``values >= threshold`` as QuPath objects in level-0 coordinates.

    ``values``: ``[rows, cols]`` map (probability or logit of one class) on the sample grid
    of a region whose top-left is level-0 ``origin``, read at ``downsample``, sampled every
    ``stride`` region pixels. ``region_size``: level-0 (width, height) to clip cells to
    (default: the grid's extent). ``min_area`` (level-0 px^2) drops small objects after
    simplification; ``simplify_tolerance`` is in level-0 px. ``measurement_maps``: named
    ``[rows, cols]`` maps; each object gets ``mean_<name>`` and ``max_<name>`` over its
    samples, plus ``area``. Returns (FeatureCollection as a dict, per-object measurements
    with the feature id).
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2 or values.size == 0:
        raise MilsilError(
            f"values must be a non-empty 2-D map [rows, cols], got shape {values.shape}"
        )
    for label, v in (
        ("threshold", threshold),
        ("min_area", min_area),
        ("simplify_tolerance", simplify_tolerance),
        ("downsample", downsample),
    ):
        if not isinstance(v, (int, float, np.floating, np.integer)) or not math.isfinite(v):
            raise MilsilError(f"{label} must be a finite number, got {v!r}")
    if min_area < 0 or simplify_tolerance < 0:
        raise MilsilError(
            f"min_area and simplify_tolerance must be >= 0, got {min_area} and {simplify_tolerance}"
        )
    if downsample <= 0:
        raise MilsilError(f"downsample must be > 0, got {downsample}")
    if not isinstance(stride, (int, np.integer)) or stride < 1:
        raise MilsilError(f"stride must be a positive integer, got {stride!r}")
    maps = {k: np.asarray(v, dtype=np.float64) for k, v in (measurement_maps or {}).items()}
    for k, v in maps.items():
        if v.shape != values.shape:
            raise MilsilError(
                f"measurement map {k!r} has shape {v.shape}, values have {values.shape}"
            )
    color = _check_color(color) if color else default_color(classification)
    rows, cols = values.shape
    ox, oy = float(origin[0]), float(origin[1])
    if region_size is None:
        region_size = (cols * stride * downsample, rows * stride * downsample)
    width_px = region_size[0] / downsample
    height_px = region_size[1] / downsample
    # Cell boundaries in region pixels: midway between neighbouring samples (cells centred on
    # their sample's pixel centre), the outer ones on the region border.
    x_edges = cell_edges(cols, stride, width_px)
    y_edges = cell_edges(rows, stride, height_px)
    cell_area = (stride * downsample) ** 2

    mask = np.nan_to_num(values, nan=-np.inf) >= threshold
    labels, count = mask_components(mask)
    from scipy import ndimage

    slices = ndimage.find_objects(labels)
    features: list[geojson.Feature] = []
    objects: list[dict[str, Any]] = []
    for k, sl in enumerate(slices, start=1):
        if sl is None:
            continue
        component = labels[sl] == k
        if component.sum() * cell_area < min_area * 0.5:  # cheap early drop; exact check below
            continue
        geom = component_polygon(component)
        x0, y0 = sl[1].start, sl[0].start

        def to_level0(coords: np.ndarray, x0: int = x0, y0: int = y0) -> np.ndarray:
            out = np.empty_like(coords)
            out[:, 0] = ox + downsample * np.interp(coords[:, 0] + x0, np.arange(cols + 1), x_edges)
            out[:, 1] = oy + downsample * np.interp(coords[:, 1] + y0, np.arange(rows + 1), y_edges)
            return out

        geom = shapely.transform(geom, to_level0)
        geom = clean_geometry(geom, simplify_tolerance)
        if geom is None or geom.area < max(min_area, PRECISION * PRECISION):
            continue
        measurements: dict[str, float] = {"area": float(geom.area)}
        for name, m in maps.items():
            inside = m[sl][component]
            measurements[f"mean_{name}"] = float(np.mean(inside))
            measurements[f"max_{name}"] = float(np.max(inside))
        feature = make_feature(geom, classification, color, measurements, object_type)
        features.append(feature)
        objects.append({"id": feature["id"], **measurements})
    collection = geojson.FeatureCollection(features)
    return dict(collection), objects


def cell_edges(count: int, stride: int, length: float) -> np.ndarray:
    """``count + 1`` cell boundaries along an axis of ``length`` region pixels (monotone)."""
    inner = np.arange(1, count) * stride + 0.5 - stride / 2.0
    edges = np.concatenate([[0.0], np.clip(inner, 0.0, length), [length]])
    return np.maximum.accumulate(edges)


def qupath_problems(collection: Mapping[str, Any]) -> list[str]:
    """Everything in a FeatureCollection that QuPath would reject or misread (empty = fine)."""
    problems: list[str] = []
    if collection.get("type") != "FeatureCollection" or not isinstance(
        collection.get("features"), list
    ):
        return ["not a FeatureCollection with a features list"]
    for n, f in enumerate(collection["features"]):
        where = f"features[{n}]"
        if f.get("type") != "Feature":
            problems.append(f"{where}.type is not Feature")
        try:
            uuid.UUID(str(f.get("id")))
        except ValueError:
            problems.append(f"{where}.id is not a UUID")
        props = f.get("properties") or {}
        if props.get("objectType") not in OBJECT_TYPES:
            problems.append(
                f"{where}.properties.objectType {props.get('objectType')!r} is not a QuPath type"
            )
        cls = props.get("classification")
        if cls is not None:
            color = cls.get("color") if isinstance(cls, dict) else None
            if not isinstance(cls, dict) or not isinstance(cls.get("name"), str):
                problems.append(f"{where}.properties.classification has no name")
            if not (
                isinstance(color, list)
                and len(color) == 3
                and all(isinstance(c, int) and 0 <= c <= 255 for c in color)
            ):
                problems.append(f"{where}.properties.classification.color must be [r, g, b] 0-255")
        meas = props.get("measurements", {})
        if not isinstance(meas, dict) or not all(
            isinstance(v, (int, float)) and math.isfinite(v) for v in meas.values()
        ):
            problems.append(f"{where}.properties.measurements must map names to finite numbers")
        geometry = f.get("geometry")
        try:
            geom = shape(geometry)
        except Exception as exc:  # noqa: BLE001 - any parse failure is a problem to report
            problems.append(f"{where}.geometry unreadable: {exc}")
            continue
        if geom.geom_type not in ("Polygon", "MultiPolygon"):
            problems.append(
                f"{where}.geometry is {geom.geom_type}, expected Polygon or MultiPolygon"
            )
        if not geom.is_valid:
            problems.append(f"{where}.geometry is invalid: {shapely.is_valid_reason(geom)}")
        coords = shapely.get_coordinates(geom)
        if np.any(np.abs(coords * 100 - np.round(coords * 100)) > 1e-6):
            problems.append(f"{where}.geometry has coordinates finer than 0.01 px")
        if np.any(coords < 0):
            problems.append(f"{where}.geometry has negative coordinates")
    return problems
