"""Whole slide images: reading, tissue detection, tiles, contours, patch sampling, heatmaps.

Everything here speaks level-0 (full resolution) pixel coordinates, top-left origin, y
down, as QuPath and OpenSlide do; a ``downsample`` travels with every region.

* :class:`Slide` wraps OpenSlide (every format it reads: Aperio, Hamamatsu, MIRAX, Leica,
  Philips, Ventana, DICOM, generic tiled TIFF, ...). A corrupt or unsupported file raises
  one :class:`MilsilError` line, never a library traceback.
* :func:`tissue_mask` finds tissue on a low-resolution level (saturation, Otsu); tiles and
  patches are taken from tissue only, because most of a slide is glass.
* :func:`iter_tiles` walks a slide at level 0 or any downsample; :func:`read_contours`
  reads tumour contours from QuPath GeoJSON or CAMELYON16/ASAP XML;
  :func:`sample_patches` cuts CAMELYON16-style 500x500 level-0 patches (malignant when a
  patch overlaps a tumour contour).
* :func:`slide_heatmap` computes the paper's logit heatmap of a whole slide tile by tile.
  Each tile is read with a halo of real neighbouring pixels (the receptive field's half
  width) and passed to :func:`milsil.inference.heatmap.logit_heatmap` with ``margin``, so the
  stitched map equals ``logit_heatmap`` of the whole slide image: no seams. Beyond the
  slide's edge the slide is mirrored, exactly as ``logit_heatmap`` pads at an image
  border. Logits go to a memory-mapped file in a work folder and every finished tile
  is appended to a log after its data is flushed, so memory stays bounded and an
  interrupted run continues where it stopped.
* :func:`heatmap_polygons` outlines the probability map as QuPath annotations (through
  :mod:`milsil.wsi.geojson`, block by block, merging across block borders), and
  :func:`write_probability_tiff` writes the map as a pyramidal tiled TIFF with the slide's
  pixel size that QuPath and OpenSlide open.
* :func:`annotate_slide` is all of it in one call (the ``annotate-slide`` command and the
  server's AnnotateSlide/SlideHeatmap RPCs).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from milsil.atomic import write_json_atomic
from milsil.errors import MilsilError, NotFoundError
from milsil.models import target_class_index

# File types OpenSlide reads (a DICOM slide is a folder of .dcm files; any one opens it).
SLIDE_SUFFIXES = (
    ".svs",
    ".tif",
    ".tiff",
    ".ndpi",
    ".vms",
    ".vmu",
    ".scn",
    ".mrxs",
    ".svslide",
    ".bif",
    ".dcm",
)
# The paper's CAMELYON16 bags: 500x500 patches at level 0.
CAMELYON_PATCH = 500
# ASAP/CAMELYON16 annotation groups that mark normal tissue inside a tumour contour.
EXCLUSION_GROUPS = ("_2", "exclusion", "Exclusion", "None-tumor", "Normal")


# --------------------------------------------------------------------------- opening


def _openslide():
    try:
        import openslide
    except ImportError as exc:  # pragma: no cover - a dependency of the package
        raise MilsilError(
            f"reading slides needs openslide-python and openslide-bin ({exc}); "
            "pip install openslide-python openslide-bin"
        ) from None
    return openslide


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


class Slide:
    """An open whole slide image. Use as a context manager or call :meth:`close`.

    ``dimensions`` is level-0 ``(width, height)``; ``mpp`` the level-0 pixel size in
    microns ``(x, y)`` when the file records it (else ``None``).
    """

    def __init__(self, path: str | Path) -> None:
        openslide = _openslide()
        self.path = Path(path)
        if not self.path.exists():
            raise NotFoundError(f"slide not found: {self.path}")
        if self.path.is_dir():
            raise MilsilError(
                f"{self.path} is a folder; give a slide file "
                f"({', '.join(SLIDE_SUFFIXES)}; for DICOM any one .dcm of the series)"
            )
        try:
            fmt = openslide.OpenSlide.detect_format(str(self.path))
        except Exception as exc:  # noqa: BLE001 - any failure means "cannot read"
            raise MilsilError(f"{self.path.name}: cannot read: {_one_line(exc)}") from None
        if fmt is None:
            raise MilsilError(
                f"{self.path.name}: not a slide format OpenSlide reads (Aperio, Hamamatsu, "
                "MIRAX, Leica, Philips, Ventana, Zeiss, DICOM, generic tiled TIFF)"
            )
        try:
            self._slide = openslide.OpenSlide(str(self.path))
            # Reading one pixel finds truncated or corrupt files now, not mid-run.
            self._slide.read_region((0, 0), self._slide.level_count - 1, (1, 1))
        except Exception as exc:  # noqa: BLE001
            raise MilsilError(
                f"{self.path.name}: corrupt or unsupported {fmt} slide: {_one_line(exc)}"
            ) from None
        self.format = fmt
        self.dimensions: tuple[int, int] = tuple(self._slide.dimensions)  # type: ignore[assignment]
        self.level_count = int(self._slide.level_count)
        self.level_dimensions = [tuple(d) for d in self._slide.level_dimensions]
        self.level_downsamples = [float(d) for d in self._slide.level_downsamples]
        props = self._slide.properties
        self.properties = dict(props)
        try:
            self.mpp: tuple[float, float] | None = (
                float(props["openslide.mpp-x"]),
                float(props["openslide.mpp-y"]),
            )
        except (KeyError, ValueError):
            self.mpp = None

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        slide = getattr(self, "_slide", None)
        if slide is not None:
            slide.close()
            self._slide = None

    def __repr__(self) -> str:
        w, h = self.dimensions
        return f"Slide({self.path.name!r}, {self.format}, {w}x{h}, {self.level_count} levels)"

    # ------------------------------------------------------------------ geometry

    def region_size(self, downsample: float = 1.0) -> tuple[int, int]:
        """``(width, height)`` of the whole slide seen at ``downsample`` (whole pixels)."""
        ds = _check_downsample(downsample)
        w, h = self.dimensions
        return max(1, int(w // ds)), max(1, int(h // ds))

    def read(self, x: int, y: int, width: int, height: int, downsample: float = 1.0) -> np.ndarray:
        """RGB ``uint8 [height, width, 3]`` of output pixels at ``downsample``.

        ``(x, y)`` is the level-0 top-left; the region covers level-0
        ``[x, x + width*downsample)``. Pixels outside the slide, and transparent ones, are
        white (glass). Read from the best level and resized when no level matches.
        """
        ds = _check_downsample(downsample)
        if width < 1 or height < 1:
            raise MilsilError(f"region size must be positive, got {width}x{height}")
        level = self._slide.get_best_level_for_downsample(ds * 1.001)
        lds = self.level_downsamples[level]
        lw = max(1, math.ceil(width * ds / lds - 1e-6))
        lh = max(1, math.ceil(height * ds / lds - 1e-6))
        try:
            rgba = np.asarray(self._slide.read_region((int(x), int(y)), level, (lw, lh)))
        except Exception as exc:  # noqa: BLE001
            raise MilsilError(
                f"{self.path.name}: cannot read region ({x}, {y}) {lw}x{lh} at level {level}: "
                f"{_one_line(exc)}"
            ) from None
        rgb = _composite_white(rgba)
        if (lw, lh) != (width, height):
            from PIL import Image

            rgb = np.asarray(
                Image.fromarray(rgb).resize((width, height), Image.Resampling.BILINEAR)
            )
        return rgb

    def thumbnail(self, downsample: float) -> np.ndarray:
        """The whole slide at ``downsample`` (RGB, glass white)."""
        w, h = self.region_size(downsample)
        return self.read(0, 0, w, h, downsample)


def open_slide(path: str | Path) -> Slide:
    """Open a slide; :class:`MilsilError` with one line for a corrupt or unsupported file."""
    return Slide(path)


def _check_downsample(downsample: float) -> float:
    try:
        ds = float(downsample)
    except (TypeError, ValueError):
        raise MilsilError(f"downsample must be a number >= 1, got {downsample!r}") from None
    if not math.isfinite(ds) or ds < 1.0:
        raise MilsilError(f"downsample must be a number >= 1 (1 = level 0), got {downsample!r}")
    return ds


def _composite_white(rgba: np.ndarray) -> np.ndarray:
    """RGBA (OpenSlide, not premultiplied) over white: transparent = glass."""
    if rgba.ndim != 3 or rgba.shape[2] != 4:
        return np.ascontiguousarray(rgba[..., :3])
    alpha = rgba[..., 3:4]
    if alpha.min() == 255:
        return np.ascontiguousarray(rgba[..., :3])
    a = alpha.astype(np.float32) / 255.0
    out = rgba[..., :3].astype(np.float32) * a + 255.0 * (1.0 - a)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- tissue


@dataclass
class TissueMask:
    """Boolean tissue mask of the whole slide at ``downsample`` (level-0 px per mask px)."""

    mask: np.ndarray
    downsample: float
    threshold: float

    def fraction(self, x: float, y: float, width: float, height: float) -> float:
        """Tissue fraction of the level-0 box ``[x, x+width) x [y, y+height)``."""
        ds = self.downsample
        c0, r0 = int(math.floor(x / ds)), int(math.floor(y / ds))
        c1, r1 = int(math.ceil((x + width) / ds)), int(math.ceil((y + height) / ds))
        h, w = self.mask.shape
        c0, r0, c1, r1 = max(c0, 0), max(r0, 0), min(c1, w), min(r1, h)
        if c1 <= c0 or r1 <= r0:
            return 0.0
        integral = self._integral()
        total = integral[r1, c1] - integral[r0, c1] - integral[r1, c0] + integral[r0, c0]
        return float(total) / float((r1 - r0) * (c1 - c0))

    def _integral(self) -> np.ndarray:
        cached = getattr(self, "_cache", None)
        if cached is None:
            cached = np.zeros((self.mask.shape[0] + 1, self.mask.shape[1] + 1), np.int64)
            cached[1:, 1:] = self.mask.astype(np.int64).cumsum(0).cumsum(1)
            self._cache = cached
        return cached

    def area_level0(self) -> float:
        """Tissue area in level-0 pixels."""
        return float(self.mask.sum()) * self.downsample**2


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of values in [0, 1] (maximises between-class variance)."""
    hist, edges = np.histogram(np.clip(values, 0, 1), bins=bins, range=(0.0, 1.0))
    hist = hist.astype(np.float64)
    centers = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centers)
    mu0 = m0 / np.maximum(w0, 1e-12)
    mu1 = (m0[-1] - m0) / np.maximum(w1, 1e-12)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(edges[int(np.argmax(between)) + 1])


def tissue_mask(
    slide: Slide,
    max_side: int = 1024,
    min_saturation: float = 0.05,
    max_saturation: float = 0.15,
    min_area_um2: float = 2500.0,
) -> TissueMask:
    """Tissue on a low-resolution image of the whole slide.

    H&E tissue is coloured, glass is grey-white: the mask is saturation above Otsu's
    threshold, clamped to ``[min_saturation, max_saturation]`` so an all-tissue or
    all-glass slide is not split in two; very dark pixels (pen, folds, scanner black)
    are left out; small specks are removed and holes filled.
    """
    from scipy import ndimage

    w0, h0 = slide.dimensions
    ds = max(1.0, max(w0, h0) / float(max_side))
    rgb = slide.thumbnail(ds).astype(np.float32) / 255.0
    mx, mn = rgb.max(axis=2), rgb.min(axis=2)
    saturation = (mx - mn) / np.maximum(mx, 1e-6)
    threshold = float(np.clip(otsu_threshold(saturation), min_saturation, max_saturation))
    mask = (saturation >= threshold) & (mx > 0.15)
    mask = ndimage.binary_opening(mask, iterations=1) if min(mask.shape) > 8 else mask
    mask = ndimage.binary_closing(mask, iterations=2, border_value=0) | mask
    mask = ndimage.binary_fill_holes(mask)
    mpp = slide.mpp[0] if slide.mpp else 0.5
    min_pixels = min_area_um2 / (mpp * ds) ** 2
    labels, count = ndimage.label(mask)
    if count:
        sizes = ndimage.sum(mask, labels, index=np.arange(1, count + 1))
        keep = np.zeros(count + 1, dtype=bool)
        keep[1:] = sizes >= min_pixels
        mask = keep[labels]
    return TissueMask(mask=mask, downsample=ds, threshold=threshold)


# --------------------------------------------------------------------------- tiles


@dataclass(frozen=True)
class Tile:
    """One tile: output pixels ``[px, px+width) x [py, py+height)`` at ``downsample``.

    ``x, y`` are its level-0 top-left; ``row, col`` its grid position.
    """

    row: int
    col: int
    px: int
    py: int
    width: int
    height: int
    downsample: float
    tissue: float

    @property
    def x(self) -> int:
        return int(round(self.px * self.downsample))

    @property
    def y(self) -> int:
        return int(round(self.py * self.downsample))


def tile_grid(
    slide: Slide,
    tile_size: int = 512,
    downsample: float = 1.0,
    tissue: TissueMask | None = None,
    min_tissue: float = 0.0,
) -> list[Tile]:
    """All tiles of the slide at ``downsample`` (row-major); with ``tissue``, only tiles whose
    tissue fraction is above ``min_tissue``."""
    ds = _check_downsample(downsample)
    if not isinstance(tile_size, (int, np.integer)) or tile_size < 1:
        raise MilsilError(f"tile size must be a positive integer, got {tile_size!r}")
    rw, rh = slide.region_size(ds)
    tiles = []
    for row, py in enumerate(range(0, rh, tile_size)):
        for col, px in enumerate(range(0, rw, tile_size)):
            tw, th = min(tile_size, rw - px), min(tile_size, rh - py)
            frac = 1.0 if tissue is None else tissue.fraction(px * ds, py * ds, tw * ds, th * ds)
            if tissue is not None and frac <= min_tissue:
                continue
            tiles.append(Tile(row, col, px, py, tw, th, ds, frac))
    return tiles


def iter_tiles(
    slide: Slide,
    tile_size: int = 512,
    downsample: float = 1.0,
    tissue: TissueMask | None | bool = True,
    min_tissue: float = 0.0,
) -> Iterator[tuple[Tile, np.ndarray]]:
    """``(tile, rgb uint8 [h, w, 3])`` over the slide, tissue tiles only by default.

    ``tissue=True`` detects tissue with :func:`tissue_mask`; ``False``/``None`` yields every tile.
    """
    if tissue is True:
        tissue = tissue_mask(slide)
    mask = tissue if isinstance(tissue, TissueMask) else None
    for t in tile_grid(slide, tile_size, downsample, mask, min_tissue):
        yield t, slide.read(t.x, t.y, t.width, t.height, t.downsample)


# --------------------------------------------------------------------------- contours


def read_contours(path: str | Path) -> Any:
    """Tumour region (a shapely geometry, level-0 px) from QuPath GeoJSON or ASAP XML.

    GeoJSON: every Polygon/MultiPolygon feature (or bare geometry) whose classification is
    not a normal/exclusion class counts as tumour; ``Exclusion``/``Normal`` ones are
    subtracted. ASAP/CAMELYON16 XML: annotations in groups ``_0``/``_1``/``Tumor`` are
    tumour, ``_2``/``Exclusion`` (normal tissue inside a tumour) are subtracted.
    """
    path = Path(path)
    if not path.is_file():
        raise NotFoundError(f"contour file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".xml":
        tumour, exclude = _read_asap(path)
    elif suffix in (".geojson", ".json"):
        tumour, exclude = _read_geojson_contours(path)
    else:
        raise MilsilError(
            f"{path.name}: contours must be QuPath GeoJSON (.geojson/.json) or ASAP XML (.xml)"
        )
    import shapely

    geom = shapely.union_all(tumour) if tumour else shapely.Polygon()
    if exclude:
        geom = geom.difference(shapely.union_all(exclude))
    return geom


def _valid_polygon(coords: Sequence[tuple[float, float]], where: str) -> Any:
    import shapely

    if len(coords) < 3:
        return None
    poly = shapely.Polygon(coords)
    if not poly.is_valid:
        poly = shapely.make_valid(poly)
    return poly if not poly.is_empty and poly.area > 0 else None


def _read_asap(path: Path) -> tuple[list, list]:
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise MilsilError(f"{path.name}: not readable ASAP XML: {exc}") from None
    if root.tag != "ASAP_Annotations":
        raise MilsilError(f"{path.name}: root element is <{root.tag}>, expected <ASAP_Annotations>")
    tumour, exclude = [], []
    for ann in root.iter("Annotation"):
        kind = (ann.get("Type") or "Polygon").lower()
        if kind not in ("polygon", "spline", "rectangle"):
            continue
        pts = []
        for c in ann.iter("Coordinate"):
            try:
                pts.append((int(c.get("Order", len(pts))), float(c.get("X")), float(c.get("Y"))))
            except (TypeError, ValueError):
                raise MilsilError(
                    f"{path.name}: annotation {ann.get('Name')!r} has a coordinate without numeric X/Y"
                ) from None
        pts.sort()
        poly = _valid_polygon([(x, y) for _, x, y in pts], path.name)
        if poly is None:
            continue
        group = ann.get("PartOfGroup") or ""
        (exclude if group in EXCLUSION_GROUPS else tumour).append(poly)
    return tumour, exclude


def _read_geojson_contours(path: Path) -> tuple[list, list]:
    from shapely.geometry import shape

    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MilsilError(f"{path.name}: not readable JSON: {exc}") from None
    if isinstance(data, dict) and data.get("type") == "FeatureCollection":
        features = data.get("features") or []
    elif isinstance(data, list):
        features = data
    elif isinstance(data, dict):
        features = [data]
    else:
        raise MilsilError(f"{path.name}: expected a GeoJSON FeatureCollection, Feature or geometry")
    tumour, exclude = [], []
    normal_names = {n.lower() for n in EXCLUSION_GROUPS} | {"benign", "stroma"}
    for n, f in enumerate(features):
        geometry = f.get("geometry") if f.get("type") == "Feature" else f
        if not geometry or geometry.get("type") not in ("Polygon", "MultiPolygon"):
            continue
        try:
            geom = shape(geometry)
        except Exception as exc:  # noqa: BLE001
            raise MilsilError(
                f"{path.name}: feature {n} has an unreadable geometry: {exc}"
            ) from None
        if not geom.is_valid:
            import shapely

            geom = shapely.make_valid(geom)
        cls = ((f.get("properties") or {}).get("classification") or {}).get("name", "")
        (exclude if str(cls).lower() in normal_names else tumour).append(geom)
    return tumour, exclude


def write_asap_xml(
    path: str | Path, polygons: Sequence[Sequence[tuple[float, float]]], group: str = "_0"
) -> None:
    """Write polygons (level-0 ``(x, y)`` rings) as CAMELYON16/ASAP XML."""
    root = ET.Element("ASAP_Annotations")
    anns = ET.SubElement(root, "Annotations")
    for i, ring in enumerate(polygons):
        a = ET.SubElement(
            anns,
            "Annotation",
            Name=f"Annotation {i}",
            Type="Polygon",
            PartOfGroup=group,
            Color="#F4FA58",
        )
        coords = ET.SubElement(a, "Coordinates")
        for k, (x, y) in enumerate(ring):
            ET.SubElement(coords, "Coordinate", Order=str(k), X=f"{x:.4f}", Y=f"{y:.4f}")
    groups = ET.SubElement(root, "AnnotationGroups")
    for name, color in (("_0", "#FF0000"), ("_1", "#FF0000"), ("_2", "#00FF00")):
        g = ET.SubElement(groups, "Group", Name=name, PartOfGroup="None", Color=color)
        ET.SubElement(g, "Attributes")
    ET.ElementTree(root).write(str(path), encoding="utf-8", xml_declaration=True)


def find_contours(slide_path: Path, roots: Sequence[Path]) -> Path | None:
    """The contour file of a slide: ``<stem>.xml``/``.geojson`` beside it or under ``roots``."""
    stem = slide_path.stem
    for folder in [slide_path.parent, *roots]:
        for suffix in (".xml", ".geojson", ".json"):
            direct = folder / f"{stem}{suffix}"
            if direct.is_file():
                return direct
    for folder in roots:
        for suffix in (".xml", ".geojson"):
            found = sorted(folder.rglob(f"{stem}{suffix}"))
            if found:
                return found[0]
    return None


def rasterize(
    geom: Any, x: float, y: float, width: int, height: int, downsample: float = 1.0
) -> np.ndarray:
    """Boolean mask ``[height, width]`` of ``geom`` over the region at ``(x, y)``, ``downsample``."""
    from PIL import Image, ImageDraw
    from shapely.geometry import MultiPolygon, Polygon, box

    img = Image.new("1", (width, height), 0)
    if geom is None or geom.is_empty:
        return np.zeros((height, width), dtype=bool)
    clip = geom.intersection(box(x, y, x + width * downsample, y + height * downsample))
    draw = ImageDraw.Draw(img)
    polys = []
    for part in getattr(clip, "geoms", [clip]):
        if isinstance(part, Polygon):
            polys.append(part)
        elif isinstance(part, MultiPolygon):
            polys.extend(part.geoms)

    def ring(coords) -> list[tuple[float, float]]:
        return [((cx - x) / downsample - 0.5, (cy - y) / downsample - 0.5) for cx, cy in coords]

    for poly in polys:
        if poly.is_empty:
            continue
        draw.polygon(ring(poly.exterior.coords), fill=1)
        for hole in poly.interiors:
            draw.polygon(ring(hole.coords), fill=0)
    return np.asarray(img, dtype=bool)


@dataclass(frozen=True)
class PatchSample:
    """A level-0 patch: top-left ``(x, y)``, side ``size``, label (1 = overlaps tumour)."""

    x: int
    y: int
    size: int
    label: int
    tumour_fraction: float
    tissue: float


def sample_patches(
    slide: Slide,
    tumour: Any | None = None,
    size: int = CAMELYON_PATCH,
    max_patches: int | None = 200,
    min_tissue: float = 0.5,
    seed: int = 0,
    tissue: TissueMask | None = None,
) -> list[PatchSample]:
    """CAMELYON16-style patches: a grid of ``size`` x ``size`` level-0 patches on tissue.

    A patch is malignant (label 1) when it overlaps the tumour region (positive area of
    intersection), the paper's rule. With ``max_patches``, up to half are taken from
    the malignant ones and the rest from the benign ones (random, by ``seed``), so tumour
    slides give balanced bags; the order is row-major.
    """
    from shapely.geometry import box
    from shapely.strtree import STRtree

    if tissue is None:
        tissue = tissue_mask(slide)
    w0, h0 = slide.dimensions
    parts = []
    if tumour is not None and not tumour.is_empty:
        parts = list(getattr(tumour, "geoms", [tumour]))
    tree = STRtree(parts) if parts else None
    candidates: list[PatchSample] = []
    for y in range(0, h0 - size + 1, size):
        for x in range(0, w0 - size + 1, size):
            frac = tissue.fraction(x, y, size, size)
            if frac < min_tissue:
                continue
            overlap = 0.0
            if tree is not None:
                b = box(x, y, x + size, y + size)
                for i in tree.query(b, predicate="intersects"):
                    overlap += parts[int(i)].intersection(b).area
            candidates.append(
                PatchSample(x, y, size, int(overlap > 0), overlap / (size * size), frac)
            )
    if max_patches is None or len(candidates) <= max_patches:
        return candidates
    rng = np.random.default_rng(seed)
    pos = [c for c in candidates if c.label]
    neg = [c for c in candidates if not c.label]
    n_pos = min(len(pos), max_patches // 2 if neg else max_patches)
    n_neg = min(len(neg), max_patches - n_pos)
    n_pos = min(len(pos), max_patches - n_neg)
    keep = {pos[i] for i in rng.choice(len(pos), n_pos, replace=False)} if n_pos else set()
    keep |= {neg[i] for i in rng.choice(len(neg), n_neg, replace=False)} if n_neg else set()
    return [c for c in candidates if c in keep]


# --------------------------------------------------------------------------- synthetic slides


def write_pyramidal_tiff(
    path: str | Path,
    rgb: np.ndarray,
    mpp: float | None = 0.5,
    tile: int = 256,
    min_level_side: int = 64,
    compression: str | None = "zlib",
) -> Path:
    """A tiled pyramidal RGB TIFF (levels as successive pages) that OpenSlide opens as a
    generic tiled TIFF. ``rgb``: ``uint8 [H, W, 3]`` (or ``[H, W]``) level 0."""

    path = Path(path)
    levels = [np.ascontiguousarray(rgb)]
    while min(levels[-1].shape[:2]) // 2 >= min_level_side:
        prev = levels[-1]
        h, w = prev.shape[0] // 2 * 2, prev.shape[1] // 2 * 2
        cut = prev[:h, :w].astype(np.float32)
        down = (cut[0::2, 0::2] + cut[1::2, 0::2] + cut[0::2, 1::2] + cut[1::2, 1::2]) / 4
        levels.append(np.clip(down + 0.5, 0, 255).astype(np.uint8))
    _write_levels(path, levels, mpp, tile, compression)
    return path


def _write_levels(
    path: Path, levels: Sequence[np.ndarray], mpp: float | None, tile: int, compression: str | None
) -> None:
    import tifffile

    tmp = path.with_name(path.name + ".part")
    big = sum(lv.nbytes for lv in levels) > 2**31
    with tifffile.TiffWriter(tmp, bigtiff=big) as tif:
        for k, lv in enumerate(levels):
            kwargs: dict[str, Any] = {}
            if mpp:
                res = 1e4 / (mpp * 2**k)  # pixels per centimetre
                kwargs.update(resolution=(res, res), resolutionunit="CENTIMETER")
            tif.write(
                lv,
                tile=(tile, tile),
                photometric="rgb" if lv.ndim == 3 else "minisblack",
                compression=compression,
                subfiletype=1 if k else 0,
                metadata=None,
                **kwargs,
            )
    os.replace(tmp, path)


def synthetic_slide(
    path: str | Path,
    width: int = 1024,
    height: int = 768,
    block: int = 256,
    malignant_blocks: float = 0.3,
    seed: int = 0,
    mpp: float = 0.5,
) -> tuple[Path, list[list[tuple[float, float]]]]:
    """A pyramidal TIFF of synthetic H&E (:mod:`milsil.data.synth`) on glass, and its tumour contours.

    Tissue is an ellipse filled with ``block``-sized synthetic images; a fraction of the
    blocks is malignant, and their squares (clipped to the tissue) are the tumour
    contours, returned as level-0 ``(x, y)`` rings. Deterministic by ``seed``.
    """
    from shapely.geometry import Point, box
    from shapely.ops import unary_union

    from milsil.data.synth import patient_style, synth_image

    rng = np.random.default_rng(seed)
    style = patient_style(rng)
    canvas = np.full((height, width, 3), 242, dtype=np.uint8)
    cx, cy = width / 2, height / 2
    yy, xx = np.mgrid[0:height, 0:width]
    ax, ay = width * 0.42, height * 0.40
    inside = ((xx + 0.5 - cx) / ax) ** 2 + ((yy + 0.5 - cy) / ay) ** 2 <= 1.0
    ellipse = Point(cx, cy).buffer(1.0, quad_segs=64)
    from shapely import affinity

    ellipse = affinity.scale(ellipse, ax, ay)
    tumour_boxes = []
    for by in range(0, height, block):
        for bx in range(0, width, block):
            bh, bw = min(block, height - by), min(block, width - bx)
            if not inside[by : by + bh, bx : bx + bw].any():
                continue
            malignant = bool(rng.random() < malignant_blocks)
            img, _ = synth_image(rng, (max(bh, 16), max(bw, 16)), malignant, style=style)
            sel = inside[by : by + bh, bx : bx + bw]
            canvas[by : by + bh, bx : bx + bw][sel] = img[:bh, :bw][sel]
            if malignant:
                tumour_boxes.append(box(bx, by, bx + bw, by + bh))
    rings: list[list[tuple[float, float]]] = []
    if tumour_boxes:
        tumour = unary_union(tumour_boxes).intersection(ellipse)
        for part in getattr(tumour, "geoms", [tumour]):
            if part.geom_type == "Polygon" and part.area > 1:
                rings.append([(float(x), float(y)) for x, y in part.exterior.coords])
    out = write_pyramidal_tiff(path, canvas, mpp=mpp)
    return out, rings


# --------------------------------------------------------------------------- heatmaps


@dataclass
class SlideProgress:
    """What a whole-slide run has done: tiles (tissue only) and timings so far."""

    tiles_done: int
    tiles_total: int
    tissue_megapixels: float
    elapsed_seconds: float
    eta_seconds: float
    stage: str = "heatmap"


def _model_fingerprint(model: Any) -> str:
    """A hash of the weights, so a resumed run never mixes two models' tiles."""
    h = hashlib.sha256()
    h.update(json.dumps(model.config.to_dict(), sort_keys=True, default=str).encode())
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:32]


def _slide_identity(slide: Slide) -> dict[str, Any]:
    st = slide.path.stat()
    return {
        "path": str(slide.path.resolve()),
        "bytes": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "dimensions": list(slide.dimensions),
    }


class SlideHeatmap:
    """A whole-slide logit map on disk: ``logits [C, rows, cols]`` (float32 memmap).

    Sample ``[i, j]`` is the logit of the window centred on pixel ``(i*stride, j*stride)``
    of the slide seen at ``downsample``, i.e. level-0 ``(j*stride*downsample,
    i*stride*downsample)``. Tiles never computed (no tissue) are ``NaN`` when read through
    :meth:`block`.
    """

    def __init__(self, work_dir: Path, meta: dict[str, Any], done: set[tuple[int, int]]) -> None:
        self.work_dir = work_dir
        self.meta = meta
        self.done = done
        self.stride = int(meta["stride"])
        self.downsample = float(meta["downsample"])
        self.tile = int(meta["tile"])
        self.num_classes = int(meta["num_classes"])
        self.rows, self.cols = int(meta["rows"]), int(meta["cols"])
        self.region_size = tuple(meta["region_size"])
        self.class_names = list(meta["class_names"])
        self.mpp = meta.get("mpp")
        self.tiles_total = len(done)
        self.logits = np.memmap(
            work_dir / "logits.f32",
            dtype=np.float32,
            mode="r+",
            shape=(self.num_classes, self.rows, self.cols),
        )

    @property
    def tile_samples(self) -> int:
        return self.tile // self.stride

    def valid(self, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        """Which samples of the block were computed (their tile is done)."""
        t = self.tile_samples
        out = np.zeros((r1 - r0, c1 - c0), dtype=bool)
        for tr in range(r0 // t, (r1 - 1) // t + 1):
            for tc in range(c0 // t, (c1 - 1) // t + 1):
                if (tr, tc) in self.done:
                    a0, a1 = max(tr * t, r0), min((tr + 1) * t, r1)
                    b0, b1 = max(tc * t, c0), min((tc + 1) * t, c1)
                    out[a0 - r0 : a1 - r0, b0 - c0 : b1 - c0] = True
        return out

    def block(self, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        """Logits ``[C, r1-r0, c1-c0]``; NaN where not computed."""
        out = np.array(self.logits[:, r0:r1, c0:c1], dtype=np.float32)
        out[:, ~self.valid(r0, r1, c0, c1)] = np.nan
        return out

    def probability_block(self, class_index: int, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        """Softmax probability of one class over the block; NaN where not computed."""
        lg = self.block(r0, r1, c0, c1).astype(np.float64)
        with np.errstate(invalid="ignore"):
            e = np.exp(lg - lg.max(axis=0, keepdims=True))
            return (e[class_index] / e.sum(axis=0)).astype(np.float32)

    def to_array(self) -> np.ndarray:
        """The whole logit map in memory (small slides and tests only)."""
        return self.block(0, self.rows, 0, self.cols)


def _prepare_work_dir(work_dir: Path, meta: dict[str, Any]) -> set[tuple[int, int]]:
    """Reuse ``work_dir`` when it holds the same job, else start it afresh; the done tiles."""
    meta_path = work_dir / "heatmap.json"
    shape = (meta["num_classes"], meta["rows"], meta["cols"])
    if meta_path.is_file():
        try:
            old = json.loads(meta_path.read_text())
        except (json.JSONDecodeError, OSError):
            old = None
        if old == meta and (work_dir / "logits.f32").is_file():
            done = set()
            log = work_dir / "tiles.done"
            if log.is_file():
                for line in log.read_text().splitlines():
                    parts = line.split()
                    if len(parts) == 3 and parts[2] == "ok":  # a torn last line is ignored
                        done.add((int(parts[0]), int(parts[1])))
            return done
    if work_dir.exists():
        for name in ("heatmap.json", "logits.f32", "tiles.done"):
            (work_dir / name).unlink(missing_ok=True)
    work_dir.mkdir(parents=True, exist_ok=True)
    nbytes = int(np.prod(shape)) * 4
    with open(work_dir / "logits.f32", "wb") as f:  # sparse: untouched tiles take no disk
        if nbytes:
            f.truncate(nbytes)
    tmp = meta_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(meta, indent=1, sort_keys=True))
    os.replace(tmp, meta_path)
    return set()


def default_work_dir(output: str | Path) -> Path:
    """Where a run keeps its resumable state: ``<output>.work`` beside the output."""
    output = Path(output)
    return output.with_name(output.name + ".work")


@dataclass
class Timings:
    """Seconds spent reading pixels, running the model, making polygons, writing the TIFF."""

    read: float = 0.0
    compute: float = 0.0
    polygons: float = 0.0
    tiff: float = 0.0
    tissue: float = 0.0


def slide_heatmap(
    model: Any,
    slide: Slide,
    work_dir: str | Path,
    stride: int = 8,
    downsample: float = 1.0,
    tile: int = 1024,
    tissue_only: bool = True,
    tissue: TissueMask | None = None,
    device: Any = None,
    bf16: bool = False,
    progress: Callable[[SlideProgress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    timings: Timings | None = None,
) -> tuple[SlideHeatmap, bool]:
    """The logit heatmap of a whole slide, tile by tile, resumable. Returns ``(map, stopped)``.

    ``tile`` (output pixels at ``downsample``, rounded down to a multiple of ``stride``)
    bounds the pixels read at once; the model's own tiling bounds its activations. A rerun
    with the same slide, model and settings in the same ``work_dir`` skips finished tiles;
    anything different starts afresh. ``should_stop`` is polled between tiles.
    """
    import torch

    from milsil.data import to_tensor
    from milsil.inference.heatmap import _bagnet_of, _check_stride, logit_heatmap, output_size

    stride = _check_stride(stride)
    ds = _check_downsample(downsample)
    rf = _bagnet_of(model).receptive_field
    if not isinstance(tile, (int, np.integer)) or tile < stride:
        raise MilsilError(f"tile must be an integer >= stride ({stride}), got {tile!r}")
    tile = int(tile) // stride * stride
    timings = timings if timings is not None else Timings()
    work_dir = Path(work_dir)
    rw, rh = slide.region_size(ds)
    meta = {
        "format": "milsil-slide-heatmap/1",
        "slide": _slide_identity(slide),
        "model": _model_fingerprint(model),
        "class_names": list(model.class_names),
        "num_classes": int(model.config.num_classes),
        "stride": stride,
        "downsample": ds,
        "tile": tile,
        "tissue_only": bool(tissue_only),
        "region_size": [rw, rh],
        "rows": output_size(rh, stride),
        "cols": output_size(rw, stride),
        "mpp": list(slide.mpp) if slide.mpp else None,
    }
    done = _prepare_work_dir(work_dir, meta)
    heat = SlideHeatmap(work_dir, meta, done)
    if tissue_only and tissue is None:
        t0 = time.perf_counter()
        tissue = tissue_mask(slide)
        timings.tissue += time.perf_counter() - t0
    tiles = tile_grid(slide, tile, ds, tissue if tissue_only else None)
    todo = [t for t in tiles if (t.row, t.col) not in done]
    heat.tiles_total = len(tiles)
    mean, std = model.normalization
    halo = rf // 2
    ts = tile // stride
    log = open(work_dir / "tiles.done", "a")  # noqa: SIM115 - closed in finally
    start = time.perf_counter()
    megapixels = sum(t.width * t.height * t.tissue for t in tiles) * ds * ds / 1e6
    stopped = False
    try:
        for k, t in enumerate(todo):
            if should_stop is not None and should_stop():
                stopped = True
                break
            t0 = time.perf_counter()
            # The tile plus a halo of real context, clipped to the slide; beyond the slide
            # the image is mirrored, as logit_heatmap pads at an image border.
            x0, y0 = max(t.px - halo, 0), max(t.py - halo, 0)
            x1, y1 = min(t.px + t.width + halo, rw), min(t.py + t.height + halo, rh)
            rgb = slide.read(int(round(x0 * ds)), int(round(y0 * ds)), x1 - x0, y1 - y0, ds)
            left, top = x0 - (t.px - halo), y0 - (t.py - halo)
            right, bottom = t.px + t.width + halo - x1, t.py + t.height + halo - y1
            canvas = torch.nn.functional.pad(
                to_tensor(rgb, mean, std)[None], (left, right, top, bottom), mode="reflect"
            )[0]
            t1 = time.perf_counter()
            logits = logit_heatmap(
                model, canvas, stride=stride, margin=halo, device=device, bf16=bf16
            )
            t2 = time.perf_counter()
            r0, c0 = t.row * ts, t.col * ts
            heat.logits[:, r0 : r0 + logits.shape[1], c0 : c0 + logits.shape[2]] = logits.numpy()
            heat.logits.flush()
            log.write(f"{t.row} {t.col} ok\n")
            log.flush()
            os.fsync(log.fileno())
            done.add((t.row, t.col))
            timings.read += t1 - t0
            timings.compute += t2 - t1
            if progress is not None:
                elapsed = time.perf_counter() - start
                remaining = len(todo) - k - 1
                progress(
                    SlideProgress(
                        tiles_done=len(tiles) - remaining,
                        tiles_total=len(tiles),
                        tissue_megapixels=megapixels,
                        elapsed_seconds=elapsed,
                        eta_seconds=elapsed / (k + 1) * remaining,
                    )
                )
    finally:
        log.close()
    return heat, stopped


# --------------------------------------------------------------------------- polygons


def heatmap_polygons(
    heat: SlideHeatmap,
    class_index: int,
    threshold: float = 0.5,
    min_area: float = 0.0,
    simplify_tolerance: float = 0.0,
    block: int = 4096,
    classification: str | None = None,
) -> dict[str, Any]:
    """QuPath GeoJSON FeatureCollection of ``probability >= threshold`` (level-0 px).

    The map is polygonized ``block`` samples at a time with :mod:`milsil.wsi.geojson`
    (bounded memory); pieces that meet at block borders are merged, so the result does
    not depend on ``block``. Each object has ``area`` (level-0 px^2),
    ``mean_probability`` and ``max_probability``.
    """
    import shapely
    from shapely.strtree import STRtree

    from milsil.wsi import geojson as gj

    if not 0 <= class_index < heat.num_classes:
        raise MilsilError(f"class index must be in 0..{heat.num_classes - 1}, got {class_index}")
    if not (isinstance(threshold, (int, float)) and 0.0 <= threshold <= 1.0):
        raise MilsilError(f"threshold must be a probability from 0 to 1, got {threshold!r}")
    name = classification or heat.class_names[class_index]
    ds, stride = heat.downsample, heat.stride
    rw, rh = heat.region_size
    x_edges = gj.cell_edges(heat.cols, stride, rw) * ds
    y_edges = gj.cell_edges(heat.rows, stride, rh) * ds
    pieces: list[Any] = []  # (geometry, sum, count, max, touches_border)
    stats: list[tuple[float, int, float]] = []
    border: list[bool] = []
    for r0 in range(0, heat.rows, block):
        for c0 in range(0, heat.cols, block):
            r1, c1 = min(r0 + block, heat.rows), min(c0 + block, heat.cols)
            prob = heat.probability_block(class_index, r0, r1, c0, c1)
            mask = np.nan_to_num(prob, nan=-1.0) >= threshold
            if not mask.any():
                continue
            labels, count = gj.mask_components(mask)
            from scipy import ndimage

            for k, sl in enumerate(ndimage.find_objects(labels), start=1):
                if sl is None:
                    continue
                comp = labels[sl] == k
                geom = gj.component_polygon(comp)
                ry, rx = sl[0].start + r0, sl[1].start + c0

                def to_level0(xy: np.ndarray, rx: int = rx, ry: int = ry) -> np.ndarray:
                    out = np.empty_like(xy)
                    out[:, 0] = np.interp(xy[:, 0] + rx, np.arange(heat.cols + 1), x_edges)
                    out[:, 1] = np.interp(xy[:, 1] + ry, np.arange(heat.rows + 1), y_edges)
                    return out

                pieces.append(shapely.transform(geom, to_level0))
                vals = prob[sl][comp]
                stats.append((float(vals.sum()), int(vals.size), float(vals.max())))
                touches = (
                    (sl[0].start == 0 and r0 > 0)
                    or (sl[1].start == 0 and c0 > 0)
                    or (sl[0].stop == r1 - r0 and r1 < heat.rows)
                    or (sl[1].stop == c1 - c0 and c1 < heat.cols)
                )
                border.append(bool(touches))
    # Merge pieces cut by block borders; the others are whole objects already.
    objects: list[tuple[Any, float, int, float]] = [
        (g, *s) for g, s, b in zip(pieces, stats, border, strict=True) if not b
    ]
    cut = [i for i, b in enumerate(border) if b]
    if cut:
        merged = shapely.union_all([pieces[i] for i in cut])
        parts = list(shapely.get_parts(merged))
        tree = STRtree(parts)
        acc = [[0.0, 0, -math.inf] for _ in parts]
        for i in cut:
            point = pieces[i].representative_point()
            hits = tree.query(point, predicate="intersects")
            j = int(hits[0]) if len(hits) else int(tree.nearest(point))
            acc[j][0] += stats[i][0]
            acc[j][1] += stats[i][1]
            acc[j][2] = max(acc[j][2], stats[i][2])
        objects.extend((p, a[0], a[1], a[2]) for p, a in zip(parts, acc, strict=True))
    objects.sort(key=lambda o: (o[0].bounds[1], o[0].bounds[0]))
    features = []
    color = gj.default_color(name)
    for geom, total, count, peak in objects:
        clean = gj.clean_geometry(geom, simplify_tolerance)
        if clean is None or clean.area < max(min_area, gj.PRECISION**2):
            continue
        measurements = {
            "area": float(clean.area),
            "mean_probability": total / max(count, 1),
            "max_probability": peak,
        }
        features.append(gj.make_feature(clean, name, color, measurements))
    # Plain dicts and lists (the geojson package's types do not survive copying).
    return {"type": "FeatureCollection", "features": json.loads(json.dumps(features))}


# --------------------------------------------------------------------------- TIFF


def write_probability_tiff(
    heat: SlideHeatmap, path: str | Path, class_index: int, tile: int = 256
) -> Path:
    """The class probability as a pyramidal tiled 8-bit TIFF (0-255; 0 where not computed).

    One TIFF pixel is one heatmap sample: ``stride * downsample`` level-0 pixels, and the
    pixel size written is the slide's times that, so QuPath shows it at the slide's scale.
    Sample ``j`` is centred on level-0 pixel ``j*stride*downsample``: the TIFF sits half a
    cell (``(stride*downsample - 1)/2`` level-0 px) right/down of an exact overlay, less
    than one map pixel. Levels are built block by block through memory-mapped files.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="tiff-", dir=heat.work_dir))
    try:
        level0 = np.memmap(
            scratch / "l0.u8", dtype=np.uint8, mode="w+", shape=(heat.rows, heat.cols)
        )
        step = 2048
        for r0 in range(0, heat.rows, step):
            for c0 in range(0, heat.cols, step):
                r1, c1 = min(r0 + step, heat.rows), min(c0 + step, heat.cols)
                p = heat.probability_block(class_index, r0, r1, c0, c1)
                level0[r0:r1, c0:c1] = np.clip(np.nan_to_num(p, nan=0.0) * 255 + 0.5, 0, 255)
        level0.flush()
        levels = [level0]
        while min(levels[-1].shape) // 2 >= 64:
            prev = levels[-1]
            h, w = prev.shape[0] // 2, prev.shape[1] // 2
            nxt = np.memmap(scratch / f"l{len(levels)}.u8", dtype=np.uint8, mode="w+", shape=(h, w))
            for r0 in range(0, h, step):
                r1 = min(r0 + step, h)
                a = prev[2 * r0 : 2 * r1, : 2 * w].astype(np.uint16)
                nxt[r0:r1] = (
                    a[0::2, 0::2] + a[1::2, 0::2] + a[0::2, 1::2] + a[1::2, 1::2] + 2
                ) // 4
            nxt.flush()
            levels.append(nxt)
        mpp = None
        if heat.mpp:
            mpp = float(heat.mpp[0]) * heat.stride * heat.downsample
        _write_levels(path, levels, mpp, tile, "zlib")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return path


# --------------------------------------------------------------------------- one call


@dataclass
class AnnotateResult:
    """What :func:`annotate_slide` produced."""

    slide: str
    geojson: str | None
    tiff: str | None
    objects: int
    tiles_total: int
    tiles_computed: int
    tissue_megapixels: float
    stride: int
    downsample: float
    threshold: float
    class_name: str
    stopped: bool
    timings: dict[str, float] = field(default_factory=dict)
    collection: dict[str, Any] | None = None

    def summary(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "collection"}


def annotate_slide(
    slide_path: str | Path,
    model: Any,
    output: str | Path | None,
    stride: int = 8,
    downsample: float = 1.0,
    tiff: str | Path | None = None,
    threshold: float = 0.5,
    class_name: str | None = None,
    work_dir: str | Path | None = None,
    tile: int = 1024,
    tissue_only: bool = True,
    min_area: float = 0.0,
    simplify_tolerance: float = 0.0,
    device: Any = None,
    bf16: bool = False,
    keep_work: bool = False,
    progress: Callable[[SlideProgress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> AnnotateResult:
    """Slide -> logit heatmap (tissue tiles) -> QuPath GeoJSON (and a probability TIFF).

    ``output`` (``None``: return the collection only) is written atomically. The work
    folder (default ``<output>.work``, or a temporary one) holds the resumable state; it
    is removed after success unless ``keep_work``. When stopped, the result has
    ``stopped=True`` and nothing is written; a rerun continues.
    """
    timings = Timings()
    cls = target_class_index(model.class_names, class_name)
    with open_slide(slide_path) as slide:
        temp_work = None
        if work_dir is None:
            if output is not None:
                work_dir = default_work_dir(output)
            else:
                temp_work = Path(tempfile.mkdtemp(prefix="milsil-slide-"))
                work_dir = temp_work
        try:
            heat, stopped = slide_heatmap(
                model,
                slide,
                work_dir,
                stride=stride,
                downsample=downsample,
                tile=tile,
                tissue_only=tissue_only,
                device=device,
                bf16=bf16,
                progress=progress,
                should_stop=should_stop,
                timings=timings,
            )
            result = AnnotateResult(
                slide=str(slide_path),
                geojson=None,
                tiff=None,
                objects=0,
                tiles_total=heat.tiles_total,
                tiles_computed=len(heat.done),
                tissue_megapixels=_computed_megapixels(heat),
                stride=heat.stride,
                downsample=heat.downsample,
                threshold=float(threshold),
                class_name=model.class_names[cls],
                stopped=stopped,
            )
            if stopped:
                result.timings = asdict(timings)
                return result
            if progress is not None:
                progress(
                    SlideProgress(
                        len(heat.done),
                        len(heat.done),
                        result.tissue_megapixels,
                        0.0,
                        0.0,
                        "polygons",
                    )
                )
            t0 = time.perf_counter()
            collection = heatmap_polygons(
                heat, cls, threshold, min_area=min_area, simplify_tolerance=simplify_tolerance
            )
            timings.polygons = time.perf_counter() - t0
            result.collection = collection
            result.objects = len(collection["features"])
            if output is not None:
                write_json_atomic(Path(output), collection)
                result.geojson = str(output)
            if tiff is not None:
                t0 = time.perf_counter()
                write_probability_tiff(heat, tiff, cls)
                timings.tiff = time.perf_counter() - t0
                result.tiff = str(tiff)
            result.timings = asdict(timings)
            del heat
            if not keep_work:
                shutil.rmtree(work_dir, ignore_errors=True)
            return result
        finally:
            if temp_work is not None:
                shutil.rmtree(temp_work, ignore_errors=True)


def _computed_megapixels(heat: SlideHeatmap) -> float:
    """Level-0 megapixels of the computed tiles (what throughput is measured on)."""
    t = heat.tile
    rw, rh = heat.region_size
    total = 0
    for r, c in heat.done:
        total += min(t, rw - c * t) * min(t, rh - r * t)
    return total * heat.downsample**2 / 1e6


# --------------------------------------------------------------------------- CLI


def slide_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The :func:`annotate_slide` settings that :func:`add_slide_arguments` parsed."""
    return {
        "stride": args.stride,
        "downsample": args.downsample,
        "threshold": args.threshold,
        "class_name": args.class_name,
        "tile": args.tile,
        "tissue_only": not args.all_tiles,
        "min_area": args.min_area,
        "simplify_tolerance": args.simplify,
        "bf16": args.bf16,
    }


def add_slide_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by ``annotate-slide`` and ``batch``."""
    parser.add_argument("--model", required=True, help="checkpoint (.pt) of a BagNet model")
    parser.add_argument(
        "--stride",
        type=int,
        default=8,
        help="heatmap stride in pixels (default 8; 1 = every pixel)",
    )
    parser.add_argument(
        "--downsample",
        type=float,
        default=1.0,
        help="read the slide at this downsample (default 1 = level 0)",
    )
    parser.add_argument(
        "--threshold",
        type=float,
        default=0.5,
        help="probability outlined as an annotation (default 0.5)",
    )
    parser.add_argument(
        "--class",
        dest="class_name",
        default=None,
        help="class to outline (default: malignant, else the last)",
    )
    parser.add_argument(
        "--tile", type=int, default=1024, help="pixels read per tile (default 1024)"
    )
    parser.add_argument(
        "--min-area", type=float, default=0.0, help="drop objects smaller than this (level-0 px^2)"
    )
    parser.add_argument(
        "--simplify",
        type=float,
        default=0.0,
        help="simplify outlines by this tolerance (level-0 px)",
    )
    parser.add_argument(
        "--all-tiles", action="store_true", help="compute glass too (default: tissue only)"
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    parser.add_argument(
        "--bf16",
        action="store_true",
        help="bfloat16 autocast (about 2x faster on AVX-512 BF16 CPUs and GPUs)",
    )


def _print_progress(p: SlideProgress) -> None:
    if p.stage == "heatmap":
        print(
            f"\r  tiles {p.tiles_done}/{p.tiles_total}  elapsed {p.elapsed_seconds:.0f}s  "
            f"eta {p.eta_seconds:.0f}s ",
            end="",
            file=sys.stderr,
            flush=True,
        )
    else:
        print(f"\n  {p.stage}...", file=sys.stderr, flush=True)


def _cmd_annotate(args: argparse.Namespace) -> int:
    from milsil.models import load_checkpoint

    model = load_checkpoint(args.model)
    out = Path(args.output)
    print(
        f"milsil annotate-slide: {args.slide} -> {out} (stride {args.stride}, downsample {args.downsample})",
        flush=True,
    )
    res = annotate_slide(
        args.slide,
        model,
        out,
        tiff=args.tiff,
        device=args.device,
        **slide_settings(args),
        keep_work=args.keep_work,
        progress=_print_progress if sys.stderr.isatty() else None,
    )
    t = res.timings
    print(
        f"done: {res.objects} {res.class_name} objects from {res.tiles_computed} tissue tiles "
        f"({res.tissue_megapixels:.1f} megapixels); read {t['read']:.1f}s, compute {t['compute']:.1f}s, "
        f"polygons {t['polygons']:.1f}s"
        + (f", tiff {t['tiff']:.1f}s -> {res.tiff}" if res.tiff else "")
    )
    return 0


def register_cli(subparsers: Any) -> None:
    """Add ``milsil annotate-slide``."""
    p = subparsers.add_parser(
        "annotate-slide",
        help="annotate a whole slide image: logit heatmap -> QuPath GeoJSON (+ probability TIFF)",
        description=(
            "Compute the logit heatmap of a whole slide (any format OpenSlide reads) on its "
            "tissue, tile by tile with real context around each tile (no seams), and write "
            "the regions above --threshold as QuPath GeoJSON annotations in level-0 pixels; "
            "optionally a pyramidal tiled TIFF of the probability with the slide's pixel "
            "size. Interrupted runs resume from OUT.geojson.work."
        ),
    )
    p.add_argument("slide", metavar="SLIDE", help="slide file")
    p.add_argument("-o", "--output", required=True, help="output GeoJSON")
    p.add_argument(
        "--tiff", default=None, help="also write the probability map as a pyramidal TIFF"
    )
    p.add_argument(
        "--keep-work", action="store_true", help="keep the work folder (logit map) after success"
    )
    add_slide_arguments(p)
    p.set_defaults(func=_cmd_annotate)
