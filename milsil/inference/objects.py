"""Per-object measurements from a stride-1 logit heatmap: the evidence about each nucleus.

A BagNet-9's logits come from 9x9 windows, so the mean logit over one nucleus is evidence
about that nucleus alone; and because the classifier is linear, the mean of the logits over
an object is exactly the MIL logit of the bag of windows centred in it.

The semantics (exact, so every client agrees):

* Objects are instance label images (label ``k`` marks object ``k``'s pixels) or polygons /
  multipolygons (GeoJSON geometry mappings, GeoJSON features, anything with
  ``__geo_interface__`` such as shapely shapes, or a plain ``[(x, y), ...]`` ring) in the
  heatmap's pixel coordinates, holes excluded. Pixel ``(i, j)`` belongs to a polygon when the
  point ``(x, y) = (j + 0.5, i + 0.5)`` lies inside (even-odd rule over all rings; a centre
  exactly on an edge counts when the edge is on its left or above it, so two polygons that
  share an edge never share a pixel; "exactly" within :data:`ON_EDGE`, so that rounding
  never decides it and an object holds the same pixels in any region).
* An object holding no pixel centre is measured at the pixel holding its centroid
  (``pixels`` is then 0); one whose centroid lies outside the heatmap as well gets NaN.
* Per class ``c``: the mean and the max of the logits over its pixels, ``p`` = softmax over
  classes of the mean logits, and ``pixels``, how many pixel centres it holds.

:class:`ObjectAccumulator` takes the heatmap band by band (rows ``[r0, r1)``, all columns),
so a product can feed it from the tiled engine (:func:`milsil.inference.heatmap.
iter_logit_bands`) over regions of any size: each pixel's logits are computed once however
many objects overlap it, and only the per-object sums stay in memory.
:func:`measure_objects` is the one-call form for a whole heatmap.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from milsil.errors import MilsilError


@dataclass
class ObjectMeasurements:
    """Measurements of ``N`` objects over ``C`` classes (rows in the order of ``ids``).

    ``mean_logit``, ``max_logit``: ``[N, C]`` float64; ``pixels``: ``[N]`` pixel centres held
    (0 for an object measured at its centroid's pixel). ``p``: softmax of ``mean_logit``.
    """

    ids: list[Any]
    mean_logit: np.ndarray
    max_logit: np.ndarray
    pixels: np.ndarray

    @property
    def p(self) -> np.ndarray:
        z = self.mean_logit - np.max(self.mean_logit, axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    def measurements(self, class_names: Sequence[str]) -> list[dict[str, float]]:
        """Per object, QuPath measurement names: ``milsil mean logit(c)``, ``milsil max
        logit(c)``, ``milsil p(c)`` for each class ``c`` and ``milsil pixels``."""
        names = list(class_names)
        if len(names) != self.mean_logit.shape[1]:
            raise MilsilError(f"{len(names)} class names for {self.mean_logit.shape[1]} classes")
        p = self.p
        out = []
        for k in range(len(self.ids)):
            row: dict[str, float] = {}
            for c, name in enumerate(names):
                row[f"milsil mean logit({name})"] = float(self.mean_logit[k, c])
                row[f"milsil max logit({name})"] = float(self.max_logit[k, c])
                row[f"milsil p({name})"] = float(p[k, c])
            row["milsil pixels"] = int(self.pixels[k])
            out.append(row)
        return out


# ------------------------------------------------------------------------- geometry


def _rings(obj: Any) -> list[np.ndarray]:
    """All rings (shells and holes) of a polygon-like object as ``[M, 2]`` float arrays."""
    if hasattr(obj, "__geo_interface__"):
        obj = obj.__geo_interface__
    if isinstance(obj, Mapping):
        if obj.get("type") == "Feature":
            return _rings(obj.get("geometry"))
        kind, coords = obj.get("type"), obj.get("coordinates")
        if kind == "Polygon":
            polys = [coords]
        elif kind == "MultiPolygon":
            polys = list(coords)
        else:
            raise MilsilError(
                f"objects must be Polygon or MultiPolygon geometries, got type {kind!r}"
            )
        rings = [ring for poly in polys for ring in poly]
    else:
        rings = [obj]  # a plain [(x, y), ...] ring
    out = []
    for ring in rings:
        try:
            arr = np.asarray(ring, dtype=np.float64)
        except (TypeError, ValueError):
            raise MilsilError("a polygon ring must be a sequence of (x, y) points") from None
        if arr.ndim != 2 or arr.shape[1] < 2 or len(arr) < 1:
            raise MilsilError(f"a polygon ring must be [(x, y), ...], got shape {arr.shape}")
        if not np.all(np.isfinite(arr[:, :2])):
            raise MilsilError("polygon coordinates must be finite numbers")
        out.append(arr[:, :2])
    return out


def object_list(objects: Any) -> list[Any]:
    """Polygon-likes as a list: a FeatureCollection's features, or the objects given."""
    if isinstance(objects, Mapping) and objects.get("type") == "FeatureCollection":
        objects = objects.get("features", [])
    return list(objects)


def object_bounds(objects: Any) -> tuple[float, float, float, float]:
    """``(x0, y0, x1, y1)``: the bounding box of polygon-likes (see :class:`ObjectAccumulator`)."""
    objects = object_list(objects)
    lo, hi = np.full(2, np.inf), np.full(2, -np.inf)
    for obj in objects:
        for ring in _rings(obj):
            lo = np.minimum(lo, ring.min(axis=0))
            hi = np.maximum(hi, ring.max(axis=0))
    if not np.all(np.isfinite(lo)):
        raise MilsilError("no objects to measure")
    return float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1])


def _centroids(
    pts: np.ndarray, nxt: np.ndarray, sizes: np.ndarray, ring_owner: np.ndarray, n: int
) -> np.ndarray:
    """``[n, 2]`` area centroids of all objects at once (vertices ``pts`` with successors
    ``nxt``, ring sizes, each ring's object): :func:`_centroid` vectorized over the rings of
    single-ring objects, which are nearly all objects (cells, nuclei); the few with holes
    or several parts go through :func:`_centroid`."""
    out = np.zeros((n, 2))
    if n == 0:
        return out
    ring_id = np.repeat(np.arange(len(sizes)), sizes)
    x, y = pts[:, 0], pts[:, 1]
    xn, yn = x[nxt], y[nxt]
    cross = x * yn - xn * y
    m = len(sizes)
    area = np.bincount(ring_id, cross, minlength=m) / 2.0
    sx = np.bincount(ring_id, (x + xn) * cross, minlength=m)
    sy = np.bincount(ring_id, (y + yn) * cross, minlength=m)
    mean_x = np.bincount(ring_id, x, minlength=m) / np.maximum(sizes, 1)
    mean_y = np.bincount(ring_id, y, minlength=m) / np.maximum(sizes, 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        cx = np.where(np.abs(area) > 1e-12, sx / (6.0 * area), mean_x)
        cy = np.where(np.abs(area) > 1e-12, sy / (6.0 * area), mean_y)
    rings_per_object = np.bincount(ring_owner, minlength=n)
    single = np.flatnonzero(rings_per_object == 1)
    first_ring = np.cumsum(rings_per_object) - rings_per_object
    out[single, 0] = cx[first_ring[single]]
    out[single, 1] = cy[first_ring[single]]
    starts = np.cumsum(sizes) - sizes
    for k in np.flatnonzero(rings_per_object != 1):
        ring_ids = range(first_ring[k], first_ring[k] + rings_per_object[k])
        out[k] = _centroid([pts[starts[r] : starts[r] + sizes[r]] for r in ring_ids])
    return out


def _centroid(rings: list[np.ndarray]) -> tuple[float, float]:
    """Area centroid ``(x, y)`` under the even-odd rule (holes subtract); the vertex mean when
    the area is zero (points, lines, degenerate rings)."""
    area = cx = cy = 0.0
    for ring in rings:
        x, y = ring[:, 0], ring[:, 1]
        xn, yn = np.roll(x, -1), np.roll(y, -1)
        cross = x * yn - xn * y
        a = cross.sum() / 2.0
        # orient each ring by containment depth: shells add, holes subtract
        sign = 1.0 if _depth(ring, rings) % 2 == 0 else -1.0
        if a != 0:
            area += sign * abs(a)
            cx += sign * abs(a) * ((x + xn) * cross).sum() / (6.0 * a)
            cy += sign * abs(a) * ((y + yn) * cross).sum() / (6.0 * a)
    if abs(area) > 1e-12:
        return cx / area, cy / area
    pts = np.concatenate(rings)
    return float(pts[:, 0].mean()), float(pts[:, 1].mean())


def _depth(ring: np.ndarray, rings: list[np.ndarray]) -> int:
    """How many other rings contain this ring's first vertex (0: a shell, 1: a hole, ...)."""
    x, y = ring[0]
    depth = 0
    for other in rings:
        if other is ring:
            continue
        ox, oy = other[:, 0], other[:, 1]
        oxn, oyn = np.roll(ox, -1), np.roll(oy, -1)
        cross = (oy <= y) != (oyn <= y)
        with np.errstate(divide="ignore", invalid="ignore"):
            xs = ox + (y - oy) * (oxn - ox) / (oyn - oy)
        depth += int(np.count_nonzero(cross & (xs > x)) % 2)
    return depth


# ------------------------------------------------------------------------ accumulator


class ObjectAccumulator:
    """Per-object sums, maxima and counts, fed band by band.

    ``objects``: an integer numpy label image ``H x W`` (object ``k`` = label ``k``; ``ids`` picks
    labels, default every non-zero label) or a sequence of polygon-likes (``ids`` default:
    the features' ``id`` when every one has one, else ``0..N-1``). ``origin`` ``(x0, y0)``:
    polygon coordinates of the heatmap's pixel ``(0, 0)``'s corner (for regions of a slide);
    ``downsample``: polygon units per heatmap pixel (level-0 polygons on a map computed at
    downsample ``d``: polygon point ``(x, y)`` is map point ``((x - x0) / d, (y - y0) / d)``).
    """

    def __init__(
        self,
        objects: Any,
        height: int,
        width: int,
        num_classes: int,
        ids: Sequence[Any] | None = None,
        origin: tuple[float, float] = (0.0, 0.0),
        downsample: float = 1.0,
    ) -> None:
        if not (np.isfinite(downsample) and downsample > 0):
            raise MilsilError(f"downsample must be a positive number, got {downsample}")
        if height < 1 or width < 1 or num_classes < 1:
            raise MilsilError(f"bad heatmap size {num_classes}x{height}x{width}")
        self.height, self.width, self.num_classes = int(height), int(width), int(num_classes)
        self._labels: np.ndarray | None = None
        if (
            isinstance(objects, np.ndarray)
            and objects.ndim == 2
            and np.issubdtype(objects.dtype, np.integer)
        ):
            self._init_labels(objects, ids)
        else:
            self._init_polygons(objects, ids, origin, float(downsample))
        n = len(self.ids)
        self._sum = np.zeros((n, self.num_classes))
        self._max = np.full((n, self.num_classes), -np.inf)
        self._count = np.zeros(n, dtype=np.int64)
        self._at_centroid = np.full((n, self.num_classes), np.nan)
        self._rows_seen = np.zeros(self.height, dtype=bool)

    def _init_labels(self, labels: np.ndarray, ids: Sequence[Any] | None) -> None:
        if labels.shape != (self.height, self.width):
            raise MilsilError(
                f"label image {labels.shape} and heatmap {(self.height, self.width)} differ"
            )
        self._labels = labels
        wanted = np.unique(labels[labels != 0]) if ids is None else np.asarray(ids, np.int64)
        self.ids = [int(i) for i in wanted]
        self._sorted = np.sort(np.asarray(self.ids, dtype=np.int64))
        self._order = np.argsort(np.asarray(self.ids, dtype=np.int64), kind="stable")
        if len(np.unique(self._sorted)) != len(self._sorted):
            raise MilsilError("object ids must be distinct")
        # label-image objects hold their pixels by definition; absent ids have no centroid
        self._centroid_pixel = np.full((len(self.ids), 2), -1, dtype=np.int64)

    def _init_polygons(
        self, objects: Any, ids: Sequence[Any] | None, origin: tuple[float, float], scale: float
    ) -> None:
        objects = object_list(objects)
        if ids is None:
            feature_ids = [o.get("id") if isinstance(o, Mapping) else None for o in objects]
            ids = feature_ids if all(i is not None for i in feature_ids) else range(len(objects))
        self.ids = list(ids)
        if len(self.ids) != len(objects):
            raise MilsilError(f"{len(self.ids)} ids for {len(objects)} objects")
        x0, y0 = float(origin[0]), float(origin[1])
        rings = [_rings(obj) for obj in objects]
        counts = np.array([len(r) for r in rings], dtype=np.int64)
        flat = [ring for per_object in rings for ring in per_object]
        ring_owner = np.repeat(np.arange(len(objects)), counts)
        sizes = np.array([len(r) for r in flat], dtype=np.int64)
        pts = (np.concatenate(flat) - (x0, y0)) / scale if flat else np.zeros((0, 2))
        # each vertex's successor along its ring (the last one's is the ring's first)
        starts = np.cumsum(sizes) - sizes
        nxt = np.arange(len(pts)) + 1
        nxt[starts + sizes - 1] = starts
        e = np.concatenate([pts, pts[nxt]], axis=1)
        own = np.repeat(ring_owner, sizes)
        centroids = _centroids(pts, nxt, sizes, ring_owner, len(objects))
        keep = e[:, 1] != e[:, 3]  # horizontal edges never cross a row's centre line
        e, own = e[keep], own[keep]
        ylo, yhi = np.minimum(e[:, 1], e[:, 3]), np.maximum(e[:, 1], e[:, 3])
        # rows i whose centre line y = i + 0.5 the edge crosses, half-open: ylo <= y < yhi
        self._edges = e
        self._edge_owner = own
        self._edge_rows = (_first_centre(ylo), _first_centre(yhi))
        c = centroids
        self._centroid_pixel = np.stack([np.floor(c[:, 1]), np.floor(c[:, 0])], 1).astype(np.int64)

    # ---------------------------------------------------------------- feeding bands

    def _band_pixels(self, r0: int, r1: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(object index, row, column)`` of every object pixel in rows ``[r0, r1)``."""
        if self._labels is not None:
            band = self._labels[r0:r1]
            rows, cols = np.nonzero(band)
            values = band[rows, cols].astype(np.int64)
            pos = np.clip(np.searchsorted(self._sorted, values), 0, max(len(self._sorted) - 1, 0))
            hit = self._sorted[pos] == values if len(self._sorted) else np.zeros(len(values), bool)
            return self._order[pos[hit]], rows[hit] + r0, cols[hit]
        first, stop = self._edge_rows
        lo, hi = np.maximum(first, r0), np.minimum(stop, r1)
        live = np.flatnonzero(hi > lo)
        if len(live) == 0:
            empty = np.zeros(0, np.int64)
            return empty, empty, empty
        counts = hi[live] - lo[live]
        edge = np.repeat(live, counts)
        row = np.repeat(lo[live], counts) + (
            np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        )
        ex0, ey0, ex1, ey1 = self._edges[edge].T
        x = ex0 + (row + 0.5 - ey0) * (ex1 - ex0) / (ey1 - ey0)
        obj = self._edge_owner[edge]
        order = np.lexsort((x, row, obj))
        obj, row, x = obj[order], row[order], x[order]
        # consecutive crossings of one object on one row pair up (even-odd rule)
        start = np.ones(len(obj), dtype=bool)
        start[1:] = (obj[1:] != obj[:-1]) | (row[1:] != row[:-1])
        parity = np.arange(len(obj)) - np.maximum.accumulate(
            np.where(start, np.arange(len(obj)), 0)
        )
        left = np.flatnonzero(parity % 2 == 0)
        left = left[left + 1 < len(obj)]
        left = left[(obj[left + 1] == obj[left]) & (row[left + 1] == row[left])]
        j0 = np.clip(_first_centre(x[left]), 0, self.width)
        j1 = np.clip(_first_centre(x[left + 1]), 0, self.width)
        span = np.maximum(j1 - j0, 0)
        n = int(span.sum())
        offsets = np.arange(n) - np.repeat(np.cumsum(span) - span, span)
        return (
            np.repeat(obj[left], span),
            np.repeat(row[left], span),
            np.repeat(j0, span) + offsets,
        )

    def add_band(self, row0: int, logits: Any) -> None:
        """Add heatmap rows ``[row0, row0 + R)``: ``logits`` ``[C, R, W]`` (numpy or torch)."""
        band = _as_array(logits, self.num_classes)
        rows = band.shape[1]
        row0 = int(row0)
        if band.shape[2] != self.width or row0 < 0 or row0 + rows > self.height:
            raise MilsilError(
                f"band rows {row0}..{row0 + rows} x {band.shape[2]} columns do not fit a "
                f"{self.height}x{self.width} heatmap"
            )
        if self._rows_seen[row0 : row0 + rows].any():
            raise MilsilError(f"rows {row0}..{row0 + rows} overlap a band already added")
        self._rows_seen[row0 : row0 + rows] = True
        obj, row, col = self._band_pixels(row0, row0 + rows)
        if len(obj):
            values = band[:, row - row0, col].T.astype(np.float64)  # [M, C]
            n = len(self.ids)
            for c in range(self.num_classes):
                self._sum[:, c] += np.bincount(obj, weights=values[:, c], minlength=n)
            self._count += np.bincount(obj, minlength=n)
            order = np.argsort(obj, kind="stable")
            sorted_obj = obj[order]
            starts = np.flatnonzero(np.r_[True, sorted_obj[1:] != sorted_obj[:-1]])
            peaks = np.maximum.reduceat(values[order], starts, axis=0)
            who = sorted_obj[starts]
            self._max[who] = np.maximum(self._max[who], peaks)
        cy, cx = self._centroid_pixel[:, 0], self._centroid_pixel[:, 1]
        here = (cy >= row0) & (cy < row0 + rows) & (cx >= 0) & (cx < self.width)
        if here.any():
            self._at_centroid[here] = band[:, cy[here] - row0, cx[here]].T

    def result(self) -> ObjectMeasurements:
        """The measurements; every row of the heatmap must have been added."""
        if not self._rows_seen.all():
            missing = int((~self._rows_seen).sum())
            raise MilsilError(f"{missing} heatmap rows were never added")
        count = self._count
        held = count > 0
        mean = np.where(held[:, None], self._sum / np.maximum(count, 1)[:, None], np.nan)
        peak = np.where(held[:, None], self._max, np.nan)
        mean[~held] = self._at_centroid[~held]
        peak[~held] = self._at_centroid[~held]
        return ObjectMeasurements(list(self.ids), mean, peak, count.copy())


ON_EDGE = 1e-7
"""Pixels: a crossing this close to a pixel centre is taken as exactly on it. QuPath keeps
coordinates to 0.01 px, so a pixel centre lying exactly on an edge is common; rounding in
the arithmetic (shifting to a region's origin, dividing by a downsample) must not decide
which side it falls, or the same object would hold different pixels in different regions."""


def _first_centre(t: np.ndarray) -> np.ndarray:
    """Index of the first pixel whose centre ``k + 0.5`` is at or after ``t`` (half-open
    spans ``[first(a), first(b))``: a centre on a span's start is in, on its end out)."""
    return np.ceil(np.asarray(t) - 0.5 - ON_EDGE).astype(np.int64)


def _as_array(heatmap: Any, num_classes: int | None = None) -> np.ndarray:
    if hasattr(heatmap, "detach"):  # torch.Tensor, without importing torch here
        heatmap = heatmap.detach().cpu().float().numpy()
    arr = np.asarray(heatmap)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or not np.issubdtype(arr.dtype, np.number):
        raise MilsilError(f"a heatmap must be [C, H, W] or [H, W] numbers, got {arr.shape}")
    if num_classes is not None and arr.shape[0] != num_classes:
        raise MilsilError(f"heatmap has {arr.shape[0]} classes, expected {num_classes}")
    return arr


def measure_objects(
    heatmap: Any,
    objects: Any,
    ids: Sequence[Any] | None = None,
    origin: tuple[float, float] = (0.0, 0.0),
    downsample: float = 1.0,
) -> ObjectMeasurements:
    """Mean / max logit, softmax of the mean and pixel count of every object over a whole
    stride-1 heatmap ``[C, H, W]`` (or one map ``[H, W]``): see the module docstring."""
    arr = _as_array(heatmap)
    acc = ObjectAccumulator(
        objects, arr.shape[1], arr.shape[2], arr.shape[0], ids, origin, downsample
    )
    acc.add_band(0, arr)
    return acc.result()


def measure_image_objects(
    model: Any,
    image: Any,
    objects: Any,
    ids: Sequence[Any] | None = None,
    origin: tuple[float, float] = (0.0, 0.0),
    downsample: float = 1.0,
    margin: int = 0,
    tile: int | None = None,
    device: Any = None,
) -> ObjectMeasurements:
    """:func:`measure_objects` over the stride-1 logit heatmap of ``image``, fed band by band
    from the tiled engine (:func:`milsil.inference.heatmap.iter_logit_bands`): each pixel's
    logits are computed once, whatever the objects. ``margin``: real context pixels around
    the region (as for :func:`~milsil.inference.heatmap.logit_heatmap`); ``origin``: object
    coordinates of the region's pixel ``(0, 0)`` corner; ``downsample``: object units per
    image pixel."""
    from milsil.inference.heatmap import iter_logit_bands

    acc: ObjectAccumulator | None = None
    done = 0
    for rows_done, result in iter_logit_bands(
        model, image, stride=1, margin=margin, tile=tile, device=device
    ):
        if acc is None:
            acc = ObjectAccumulator(
                objects, result.shape[1], result.shape[2], result.shape[0], ids, origin, downsample
            )
        acc.add_band(done, result[:, done:rows_done])
        done = rows_done
    if acc is None:  # pragma: no cover - iter_logit_bands always yields
        raise MilsilError("the heatmap produced no rows")
    return acc.result()
