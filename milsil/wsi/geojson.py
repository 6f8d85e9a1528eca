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
from milsil.wsi.outlines import MaskBands, OutlineSettings

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
    """Simplify (topology preserved), snap to the 0.01 px grid, repair, orient: QuPath-safe.

    Rings are normalized first (canonical start vertex): Douglas-Peucker depends on where
    a ring starts, and an outline joined from bands must simplify as the whole one does."""
    if simplify_tolerance > 0:
        geom = shapely.normalize(geom).simplify(simplify_tolerance, preserve_topology=True)
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
    outline: OutlineSettings | None = None,
    pixel_size_um: float | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Outline ``values >= threshold`` as QuPath objects in level-0 coordinates.

    ``values``: ``[rows, cols]`` map (probability or logit of one class) on the sample grid
    of a region whose top-left is level-0 ``origin``, read at ``downsample``, sampled every
    ``stride`` region pixels. ``region_size``: level-0 (width, height) to clip cells to
    (default: the grid's extent). ``min_area`` (level-0 px^2) drops small objects after
    simplification; ``simplify_tolerance`` is in level-0 px. ``measurement_maps``: named
    ``[rows, cols]`` maps; each object gets ``mean_<name>`` and ``max_<name>`` over its
    samples, plus ``area``. ``outline`` / ``pixel_size_um``: the clean-up
    (:mod:`milsil.wsi.outlines`; None: none). Returns (FeatureCollection as a dict,
    per-object measurements with the feature id). The whole map as one band of
    :class:`OutlineStream`.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2 or values.size == 0:
        raise MilsilError(
            f"values must be a non-empty 2-D map [rows, cols], got shape {values.shape}"
        )
    maps = {k: np.asarray(v, dtype=np.float64) for k, v in (measurement_maps or {}).items()}
    for k, v in maps.items():
        if v.shape != values.shape:
            raise MilsilError(
                f"measurement map {k!r} has shape {v.shape}, values have {values.shape}"
            )
    stream = OutlineStream(
        values.shape[0],
        values.shape[1],
        threshold,
        origin=origin,
        downsample=downsample,
        stride=stride,
        region_size=region_size,
        classification=classification,
        color=color,
        min_area=min_area,
        simplify_tolerance=simplify_tolerance,
        object_type=object_type,
        outline=outline,
        pixel_size_um=pixel_size_um,
    )
    stream.add(values, maps)
    return stream.finish()


class OutlineStream:
    """Outlines of ``values >= threshold`` over a map that arrives band by band, in row order.

    The result equals :func:`heatmap_to_geojson` of the whole map (same objects, in the
    same order, same measurements), while only the answer is kept: each band's
    4-connected components are polygonized and their statistics summed at once, and
    components that continue across a band border are joined (union-find over the rows on
    either side of it). A component that does not reach the newest band's last row is
    complete: its pieces are merged into one outline (seamless across bands), simplified
    and filtered as ``heatmap_to_geojson`` does, or dropped, at once. Memory: one band, the
    pieces of the components still open at its last row, and the finished outlines.
    ``clip`` (a shapely geometry, level-0): outlines are clipped to it; their statistics
    stay those of the whole outline. ``outline`` (None: no clean-up, every thresholded
    component) smooths, merges, fills holes, drops small objects and simplifies
    (:mod:`milsil.wsi.outlines`), in µm when ``pixel_size_um`` (level-0) is given; the
    rows its filters need are held back by :class:`milsil.wsi.outlines.MaskBands`, so the
    result stays the whole map's. ``min_area`` / ``simplify_tolerance`` (level-0 px², px)
    apply as well (the larger wins). The collection records the settings used
    (``outline_settings``: as given, their ``units``, the pixel size).
    """

    def __init__(
        self,
        rows: int,
        cols: int,
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
        object_type: str = "annotation",
        clip: Any = None,
        outline: OutlineSettings | None = None,
        pixel_size_um: float | None = None,
    ) -> None:
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
        if object_type not in OBJECT_TYPES:
            raise MilsilError(
                f"object_type must be one of {', '.join(OBJECT_TYPES)}, got {object_type!r}"
            )
        self.rows, self.cols, self.threshold = int(rows), int(cols), float(threshold)
        self.classification, self.object_type = classification, object_type
        self.color = _check_color(color) if color else default_color(classification)
        self.min_area, self.simplify_tolerance = float(min_area), float(simplify_tolerance)
        self.ox, self.oy, self.downsample = float(origin[0]), float(origin[1]), float(downsample)
        if region_size is None:
            region_size = (cols * stride * downsample, rows * stride * downsample)
        # Cell boundaries in region pixels: midway between neighbouring samples (cells
        # centred on their sample's pixel centre), the outer ones on the region border.
        self.x_edges = cell_edges(self.cols, stride, region_size[0] / downsample)
        self.y_edges = cell_edges(self.rows, stride, region_size[1] / downsample)
        self.cell_area = (stride * downsample) ** 2
        self.row = 0  # rows of the final mask outlined so far
        # Union-find over component ids (1-based); a root is its component's smallest id,
        # i.e. its first sample in raster order (the order of heatmap_to_geojson's objects).
        self.parent: list[int] = [0]
        self.count: dict[int, int] = {}  # by root: samples, sums and maxima of each map
        self.sums: dict[int, dict[str, float]] = {}
        self.maxes: dict[int, dict[str, float]] = {}
        self.pieces: dict[int, list[Any]] = {}  # by root: polygons (level-0) of its bands
        self.names: list[str] | None = None
        self.last_labels: np.ndarray | None = None  # the previous band's last row (ids)
        self.done: list[tuple[int, Any, dict[str, float]]] = []  # (root, outline, measurements)
        self.clip = clip  # outlines are clipped to it (level-0), before simplifying
        resolved = (outline or OutlineSettings.raw()).resolve(pixel_size_um)
        self.outline_settings = resolved.describe()
        cell = stride * self.downsample
        self.min_area = max(self.min_area, resolved.min_area)
        self.simplify_tolerance = max(self.simplify_tolerance, resolved.simplify * cell)
        self.filter = MaskBands(self.rows, self.cols, self.threshold, resolved, cell)

    def _find(self, i: int) -> int:
        parent = self.parent
        root = i
        while parent[root] != root:
            root = parent[root]
        while parent[i] != root:
            parent[i], i = root, parent[i]
        return root

    def _union(self, a: int, b: int) -> None:
        ra, rb = self._find(a), self._find(b)
        if ra == rb:
            return
        keep, gone = min(ra, rb), max(ra, rb)
        self.parent[gone] = keep
        self.count[keep] += self.count.pop(gone)
        for name, value in self.sums.pop(gone).items():
            self.sums[keep][name] += value
        for name, value in self.maxes.pop(gone).items():
            self.maxes[keep][name] = max(self.maxes[keep][name], value)
        self.pieces[keep].extend(self.pieces.pop(gone))

    def add(self, values: np.ndarray, maps: Mapping[str, np.ndarray] | None = None) -> None:
        """The next ``[band_rows, cols]`` rows of the map, with the same rows of each
        measurement map (a component gets ``mean_<name>`` and ``max_<name>``)."""
        values = np.asarray(values, dtype=np.float64)
        if values.ndim != 2 or values.shape[1] != self.cols or values.shape[0] < 1:
            raise MilsilError(f"a band must be [rows, {self.cols}], got {values.shape}")
        if self.filter.received + values.shape[0] > self.rows:
            raise MilsilError(f"bands hold more than the map's {self.rows} rows")
        maps = {k: np.asarray(v, dtype=np.float64) for k, v in (maps or {}).items()}
        if self.names is None:
            self.names = list(maps)
        elif sorted(maps) != sorted(self.names):
            raise MilsilError(f"every band needs the measurement maps {sorted(self.names)}")
        for mask, band_maps in self.filter.push(values, maps):
            self._add_mask(mask, band_maps)

    def _add_mask(self, mask: np.ndarray, maps: Mapping[str, np.ndarray]) -> None:
        """The next rows of the final mask (and of the measurement maps): components."""
        from scipy import ndimage

        labels, count = mask_components(mask)
        offset = len(self.parent) - 1
        self.parent.extend(range(offset + 1, offset + count + 1))
        flat = labels.ravel()
        counts = np.bincount(flat, minlength=count + 1)
        sums = {
            k: np.bincount(flat, weights=m.ravel(), minlength=count + 1) for k, m in maps.items()
        }
        index = np.arange(1, count + 1)
        peaks = {
            k: np.asarray(ndimage.maximum(m, labels, index) if count else [], dtype=np.float64)
            for k, m in maps.items()
        }
        r0, rows = self.row, mask.shape[0]
        first, last = self.last_labels is not None, r0 + rows < self.rows
        for k, sl in enumerate(ndimage.find_objects(labels), start=1):
            i = offset + k
            within = not (first and sl[0].start == 0) and not (last and sl[0].stop == rows)
            if within and counts[k] * self.cell_area < self.min_area * 0.5:
                continue  # complete in this band and too small: never polygonized
            self.count[i] = int(counts[k])
            self.sums[i] = {name: float(v[k]) for name, v in sums.items()}
            self.maxes[i] = {name: float(v[k - 1]) for name, v in peaks.items()}
            geom = component_polygon(labels[sl] == k)
            self.pieces[i] = [
                shapely.transform(geom, self._to_level0(sl[1].start, sl[0].start + r0))
            ]
        # Join the components that continue from the band above (4-connectivity).
        if self.last_labels is not None and count:
            above, below = self.last_labels, labels[0]
            both = (above > 0) & (below > 0)
            for a, b in set(
                zip(above[both].tolist(), (below[both] + offset).tolist(), strict=True)
            ):
                self._union(a, b)
        self.row += mask.shape[0]
        self.last_labels = np.where(labels[-1] > 0, labels[-1] + offset, 0)
        # Components that do not reach this band's last row are complete.
        open_roots = {self._find(int(i)) for i in np.unique(self.last_labels[self.last_labels > 0])}
        if self.row == self.rows:
            open_roots = set()
        for root in [r for r in self.pieces if r not in open_roots]:
            self._close(root)

    def _to_level0(self, x0: int, y0: int):
        cols, rows, ds = self.cols, self.rows, self.downsample

        def transform(coords: np.ndarray) -> np.ndarray:
            out = np.empty_like(coords)
            out[:, 0] = self.ox + ds * np.interp(
                coords[:, 0] + x0, np.arange(cols + 1), self.x_edges
            )
            out[:, 1] = self.oy + ds * np.interp(
                coords[:, 1] + y0, np.arange(rows + 1), self.y_edges
            )
            return out

        return transform

    def _close(self, root: int) -> None:
        """A complete component: its outline and measurements, or nothing if too small."""
        parts = self.pieces.pop(root)
        count = self.count.pop(root)
        sums, maxes = self.sums.pop(root), self.maxes.pop(root)
        if count * self.cell_area < self.min_area * 0.5:  # cheap early drop
            return
        geom = parts[0] if len(parts) == 1 else shapely.union_all(parts)
        if self.clip is not None:
            geom = geom.intersection(self.clip)
            if geom.is_empty:
                return
        geom = clean_geometry(geom, self.simplify_tolerance)
        if geom is None or geom.area < max(self.min_area, PRECISION * PRECISION):
            return
        measurements: dict[str, float] = {"area": float(geom.area)}
        for name in self.names or []:
            measurements[f"mean_{name}"] = float(sums[name] / count)
            measurements[f"max_{name}"] = float(maxes[name])
        self.done.append((root, geom, measurements))

    def finish(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The FeatureCollection (as a dict) and per-object measurements with feature ids."""
        if self.row != self.rows:
            raise MilsilError(f"the map has {self.rows} rows but {self.row} arrived")
        features: list[geojson.Feature] = []
        objects: list[dict[str, Any]] = []
        for _, geom, measurements in sorted(self.done, key=lambda d: d[0]):
            feature = make_feature(
                geom, self.classification, self.color, measurements, self.object_type
            )
            features.append(feature)
            objects.append({"id": feature["id"], **measurements})
        self.done = []
        collection = dict(geojson.FeatureCollection(features))
        collection["outline_settings"] = dict(self.outline_settings)
        return collection, objects


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


MAX_ROI_BYTES = 8 * 2**20
# Most vertices of a self-crossing ROI the server repairs: make_valid grows about as n^3
# on a ROI that crosses itself everywhere (random vertices, 2 loaded CPU cores: 30 -> 0.04 s,
# 50 -> 0.4 s, 100 -> 4 s, 200 -> 30 s), so a repair stays well under a second. Valid
# ROIs of any size need no repair.
MAX_REPAIR_VERTICES = 40


def roi_geometry(text: str, field: str = "roi") -> Polygon | MultiPolygon:
    """A region of interest from GeoJSON text, level-0 pixels: a Polygon or MultiPolygon
    geometry (a Feature's geometry, or QuPath's ROI JSON with its extra members), repaired
    if invalid. :class:`MilsilError` naming ``field`` for anything else."""
    import json

    if len(text) > MAX_ROI_BYTES:
        raise MilsilError(f"{field} is {len(text):,} bytes of GeoJSON; at most {MAX_ROI_BYTES:,}")
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise MilsilError(f"{field} is not JSON ({str(exc)[:80]})") from None
    if isinstance(doc, dict) and doc.get("type") == "Feature":
        doc = doc.get("geometry")
    if not isinstance(doc, dict) or doc.get("type") not in ("Polygon", "MultiPolygon"):
        kind = doc.get("type") if isinstance(doc, dict) else type(doc).__name__
        raise MilsilError(
            f"{field} must be a GeoJSON Polygon or MultiPolygon (level-0 pixels), got {kind!r}"
        )
    try:
        geom = shape({"type": doc["type"], "coordinates": doc.get("coordinates")})
        coords = shapely.get_coordinates(geom)
    except Exception as exc:  # noqa: BLE001 - any malformed coordinate list
        raise MilsilError(f"{field} has malformed coordinates ({str(exc)[:80]})") from None
    if coords.size == 0 or not np.isfinite(coords).all():
        raise MilsilError(f"{field} must have finite coordinates and at least one ring")
    if not geom.is_valid:
        if len(coords) > MAX_REPAIR_VERTICES:
            raise MilsilError(
                f"{field} crosses itself and has {len(coords):,} vertices; self-crossing ROIs "
                f"are repaired up to {MAX_REPAIR_VERTICES} vertices: send a valid polygon "
                "(redraw the annotation without the crossing, or split it in two)"
            )
        geom = _polygonal(shapely.make_valid(geom))
    if geom is None or geom.is_empty or geom.area <= 0:
        raise MilsilError(f"{field} encloses no area")
    return geom
