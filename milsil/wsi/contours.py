"""Tumour contours and CAMELYON16-style patches.

:func:`read_contours` reads tumour contours from QuPath GeoJSON or CAMELYON16/ASAP XML
(:func:`write_asap_xml` writes the latter); :func:`rasterize` turns them into a mask of a
region; :func:`sample_patches` cuts CAMELYON16-style 500x500 level-0 patches (malignant
when a patch overlaps a tumour contour).
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from milsil.errors import MilsilError, NotFoundError
from milsil.wsi.reader import Slide
from milsil.wsi.tissue import TissueMask, tissue_mask

# The paper's CAMELYON16 bags: 500x500 patches at level 0.
CAMELYON_PATCH = 500
# ASAP/CAMELYON16 annotation groups that mark normal tissue inside a tumour contour.
EXCLUSION_GROUPS = ("_2", "exclusion", "Exclusion", "None-tumor", "Normal")


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
