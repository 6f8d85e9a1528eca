"""The QuPath stand-ins (qupath_scripts/tests/stubs) behave as QuPath 0.6.0 does.

The script tests run milsil's Groovy scripts against Java stand-ins of QuPath's classes; a
stand-in that only compiles lets a script pass here and fail in QuPath. Each test below
pins one behaviour the stand-ins once lacked, checked in QuPath's v0.6.0 sources (each
stand-in method names its QuPath class and file). The snippets run in one JVM per Groovy
runtime (Debian's 2.4 and QuPath 0.6's 4.0.26), each compiled on its own, so one that fails
to compile (a missing class) fails only its own test. Missing Groovy, jars or javac: skip
locally, FAIL when CI is set.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from qupath_support import RUNTIMES, groovy_env

# Runs every snippet file in a folder with its own GroovyShell; writes {name: {"value": the
# snippet's Map} or {"error": the exception}} as JSON (Gson: groovy.json is not in the bare
# Groovy 4 jar).
DRIVER = r"""
import com.google.gson.GsonBuilder

def plain
plain = { v ->
    if (v instanceof Map) {
        def m = new LinkedHashMap()
        v.each { k, x -> m.put(k.toString(), plain(x)) }
        return m
    }
    if (v instanceof Collection || (v != null && v.getClass().isArray())) {
        return v.collect { x -> plain(x) }
    }
    if (v instanceof CharSequence || v instanceof Enum) {
        return v.toString()
    }
    if (v instanceof Number && Double.isNaN(((Number) v).doubleValue())) {
        return 'NaN'
    }
    return v
}
def out = new LinkedHashMap()
new File(args[0]).listFiles().findAll { f -> f.getName().endsWith('.groovy') }.sort { f -> f.getName() }.each { f ->
    String name = f.getName() - '.groovy'
    try {
        out.put(name, [value: plain(new GroovyShell(this.getClass().getClassLoader()).evaluate(f))])
    } catch (Throwable e) {
        out.put(name, [error: e.toString()])
    }
}
new File(args[1]).setText(new GsonBuilder().serializeNulls().create().toJson(out), 'UTF-8')
"""

SNIPPETS = {
    # PathROIObject.setROI: a different ROI object clears the measurement list.
    "set_roi": r"""
import qupath.lib.objects.PathObjects
import qupath.lib.roi.ROIs
def safe = { Closure c -> try { c() } catch (GroovyRuntimeException e) { 'missing: ' + e.getMessage() } }
def roi = ROIs.createRectangleROI(0, 0, 10, 10, null)
def o = PathObjects.createAnnotationObject(roi)
o.getMeasurementList().put('mean_probability', 0.75d)
o.setROI(roi)
def sameRoi = o.getMeasurementList().getMeasurementNames()
o.setROI(ROIs.createRectangleROI(0, 0, 10, 10, null))
def afterNew = o.getMeasurementList().getMeasurementNames()
o.getMeasurementList().put('area', 100d)
String nullRoi = null
try { o.setROI(null) } catch (IllegalArgumentException e) { nullRoi = 'IllegalArgumentException' }
return [same: sameRoi, changed: afterNew, has: safe { o.hasMeasurements() }, area: o.getMeasurementList().get('area'),
        nullRoi: nullRoi]
""",
    # PathClass.fromString: ':' makes derived classes, null is NULL_CLASS, new classes get colours.
    "path_class": r"""
import qupath.lib.objects.PathObjects
import qupath.lib.objects.classes.PathClass
import qupath.lib.roi.ROIs
def safe = { Closure c -> try { c() } catch (GroovyRuntimeException e) { 'missing: ' + e.getMessage() } }
def pc = PathClass.fromString('Tumor: Positive')
def tumor = PathClass.fromString('Tumor')
def fresh = PathClass.fromString('milsil-fresh-class')
String blank = null
try { PathClass.fromString('') } catch (IllegalArgumentException e) { blank = 'IllegalArgumentException' }
def o = PathObjects.createAnnotationObject(ROIs.createRectangleROI(0, 0, 1, 1, null))
o.setPathClass(PathClass.fromString(null))
return [name: pc.getName(), string: pc.toString(), derived: safe { pc.isDerivedClass() },
        parentIsTumor: safe { pc.getParentClass().is(tumor) }, same: PathClass.fromString('Tumor:Positive').is(pc),
        nullIsNullClass: safe { PathClass.fromString(null).is(PathClass.NULL_CLASS) },
        nullClassString: safe { PathClass.NULL_CLASS.toString() }, objectClassAfterNull: o.getPathClass(),
        freshColor: fresh.getColor(), freshAgain: PathClass.fromString('milsil-fresh-class').getColor(),
        given: PathClass.fromString('milsil-given', (0xff << 24) | 0x102030).getColor(), blank: blank,
        groovyEquals: PathClass.fromString('Tumor: Positive') == pc]
""",
    # GeoJSON import: rectangle/polygon/geometry ROI types, classification forms, cells.
    "geojson": r"""
import qupath.lib.io.PathIO
import java.nio.charset.StandardCharsets
def read = { String text -> PathIO.readObjectsFromGeoJSON(new ByteArrayInputStream(text.getBytes(StandardCharsets.UTF_8))) }
def square = '[[10, 10], [30, 10], [30, 30], [10, 30], [10, 10]]'
def tri = '[[0, 0], [40, 0], [0, 40], [0, 0]]'
def hole = '[[12, 12], [14, 12], [14, 14], [12, 14], [12, 12]]'
def feature = { String geometry, String props -> '{"type": "Feature", "geometry": ' + geometry + ', "properties": ' + props + '}' }
def objs = read('{"type": "FeatureCollection", "features": [' + [
    feature('{"type": "Polygon", "coordinates": [' + square + ']}', '{"objectType": "annotation", "classification": "Tumor"}'),
    feature('{"type": "Polygon", "coordinates": [' + tri + ']}', '{"objectType": "detection", "classification": {"name": "milsil-stroma", "color": [1, 2, 3]}}'),
    feature('{"type": "Polygon", "coordinates": [' + square + ', ' + hole + ']}', '{"objectType": "annotation"}'),
    feature('{"type": "Polygon", "coordinates": [[[0.004, 0], [10.006, 0], [0, 10], [0.004, 0]]]}', '{"objectType": "tile"}'),
    '{"type": "Feature", "id": "0b1e7e8e-1c1a-4c55-9a55-6c0e7d3a6f11", "geometry": {"type": "Polygon", "coordinates": [' + square +
        ']}, "nucleusGeometry": {"type": "Polygon", "coordinates": [' + hole + ']}, "properties": {"objectType": "cell", ' +
        '"classification": "Tumor: Positive", "measurements": {"Nucleus: Area": 4}}}',
].join(', ') + ']}')
String noColor = null
try {
    read(feature('{"type": "Polygon", "coordinates": [' + square + ']}', '{"objectType": "annotation", "classification": {"name": "Tumor"}}'))
} catch (Exception e) { noColor = e.getClass().getSimpleName() }
def cell = objs[4]
return [rois: objs.collect { o -> o.getROI().getRoiName() }, classes: objs.collect { o -> o.getPathClass()?.toString() },
        stromaColor: objs[1].getPathClass().getColor(), snappedX: objs[3].getROI().getAllPoints().collect { p -> p.getX() },
        cell: cell.isCell(), cellDetection: cell.isDetection(), nucleus: cell.getNucleusROI()?.getArea(),
        cellId: cell.getID().toString(), cellArea: cell.getMeasurementList().get('Nucleus: Area'), noColor: noColor,
        detection: objs[1].isDetection(), tileIsDetection: objs[3].isDetection()]
""",
    # RoiTools.intersection: typed results, as GeometryTools.geometryToROI makes them.
    "intersection": r"""
import qupath.lib.io.PathIO
import qupath.lib.roi.ROIs
import qupath.lib.roi.RoiTools
import java.nio.charset.StandardCharsets
def rect = ROIs.createRectangleROI(0, 0, 10, 10, null)
def rect2 = ROIs.createRectangleROI(5, 5, 10, 10, null)
def tri = ROIs.createPolygonROI([0, 20, 0] as double[], [0, 0, 20] as double[], null)
def big = ROIs.createRectangleROI(-10, -10, 40, 40, null)
// a 20 x 20 square with a 2 x 2 hole (a GeometryROI, from GeoJSON)
def holed = PathIO.readObjectsFromGeoJSON(new ByteArrayInputStream(('{"type": "Feature", "properties": {"objectType": "annotation"}, ' +
    '"geometry": {"type": "Polygon", "coordinates": [[[0, 0], [20, 0], [20, 20], [0, 20], [0, 0]], ' +
    '[[9, 9], [11, 9], [11, 11], [9, 11], [9, 9]]]}}').getBytes(StandardCharsets.UTF_8)))[0].getROI()
def rr = RoiTools.intersection(rect, rect2)
def pr = RoiTools.intersection(tri, rect2)
def two = RoiTools.intersection(ROIs.createRectangleROI(0, 0, 30, 4, null),
    ROIs.createPolygonROI([0, 10, 10, 20, 20, 30, 30, 0] as double[], [0, 0, 6, 6, 0, 0, 10, 10] as double[], null))
def hole = RoiTools.intersection(big, holed)
def none = RoiTools.intersection(rect, ROIs.createRectangleROI(50, 50, 5, 5, null))
return [rr: [rr.getRoiName(), rr.getBoundsX(), rr.getBoundsY(), rr.getBoundsWidth(), rr.getBoundsHeight(), rr.getArea()],
        pr: [pr.getRoiName(), pr.getArea()], two: [two.getRoiName(), two.getArea()],
        hole: [hole.getRoiName(), hole.getArea(), hole.contains(10, 10), hole.contains(5, 5)],
        none: [none.getRoiName(), none.isEmpty(), none.getArea()], single: RoiTools.intersection(rect).is(rect),
        newObject: !RoiTools.intersection(rect, big).is(rect), sameAsRect: RoiTools.intersection(rect, big).getRoiName()]
""",
    # Cells and detections in the hierarchy; which are "inside" an annotation.
    "cells": r"""
import qupath.lib.objects.PathCellObject
import qupath.lib.objects.PathDetectionObject
import qupath.lib.objects.PathObjects
import qupath.lib.objects.classes.PathClass
import qupath.lib.objects.hierarchy.PathObjectHierarchy
import qupath.lib.roi.ROIs
def h = new PathObjectHierarchy()
def annotation = PathObjects.createAnnotationObject(ROIs.createRectangleROI(0, 0, 100, 100, null))
h.addObject(annotation, false)
// centroid (95, 50) inside, the cell reaches past the annotation's edge
def across = PathObjects.createCellObject(ROIs.createRectangleROI(85, 40, 20, 20, null),
    ROIs.createEllipseROI(90, 45, 10, 10, null), PathClass.fromString('Tumor'), null)
// overlaps the annotation, centroid (110, 50) outside
def outside = PathObjects.createCellObject(ROIs.createRectangleROI(95, 40, 30, 20, null), null, null, null)
def plain = PathObjects.createDetectionObject(ROIs.createRectangleROI(10, 10, 5, 5, null))
def tile = PathObjects.createTileObject(ROIs.createRectangleROI(20, 20, 5, 5, null))
def inner = PathObjects.createAnnotationObject(ROIs.createRectangleROI(10, 10, 20, 20, null))
for (def o : [across, plain, tile, inner]) { h.addObjectBelowParent(annotation, o, false) }
h.addObject(outside, false)
def names = { c -> c.collect { o -> o.is(across) ? 'across' : o.is(outside) ? 'outside' : o.is(plain) ? 'plain' :
                                  o.is(tile) ? 'tile' : o.is(inner) ? 'inner' : o.is(annotation) ? 'annotation' : 'other' } }
across.setPathClass(PathClass.fromString('Stroma'))
across.getMeasurementList().put('milsil p(tumor)', 0.1d)
across.getMeasurements().put('milsil mean logit(tumor)', -2.5d)
annotation.getMeasurementList().put('x', 0.1d)
return [isCell: across.isCell(), isDetection: across.isDetection(), cellRoi: across.getROI().getBoundsWidth(),
        nucleus: across.getNucleusROI().getRoiName(), noNucleus: outside.getNucleusROI() == null,
        hasNucleus: [across.hasNucleus(), outside.hasNucleus()], instance: across instanceof PathCellObject,
        detections: names(h.getDetectionObjects()), cells: names(h.getCellObjects()), tiles: names(h.getTileObjects()),
        forRoi: names(h.getObjectsForROI(PathDetectionObject, annotation.getROI())),
        cellsForRoi: names(h.getCellsForROI(annotation.getROI())),
        detectionsForRoi: names(h.getAllDetectionsForROI(annotation.getROI())),
        annotationsForRoi: names(h.getAnnotationsForROI(annotation.getROI())),
        allForRoi: names(h.getObjectsForROI(null, annotation.getROI())),
        children: names(annotation.getChildObjects()), cls: across.getPathClass().toString(),
        measurements: across.getMeasurements().keySet().toList(), missing: across.getMeasurements().get('nope'),
        floatValue: across.getMeasurementList().get('milsil p(tumor)'),
        annotationValue: annotation.getMeasurementList().get('x')]
""",
    # ROI accessors a script reads cell polygons with.
    "roi": r"""
import qupath.lib.roi.ROIs
// an L: area 300, centroid (8.333.., 8.333..), bounds centre (10, 10)
def l = ROIs.createPolygonROI([0, 20, 20, 10, 10, 0] as double[], [0, 0, 10, 10, 20, 20] as double[], null)
def rect = ROIs.createRectangleROI(2, 3, 4, 5, null)
def ellipse = ROIs.createEllipseROI(0, 0, 20, 10, null)
def safe = { Closure c -> try { c() } catch (GroovyRuntimeException e) { 'missing: ' + e.getMessage() } }
def geometry = safe {
    try { l.getGeometry().getClass().getName() } catch (UnsupportedOperationException e) { 'no JTS' }
}
return [centroid: [l.getCentroidX(), l.getCentroidY()], area: l.getArea(), inL: l.contains(5, 5), notInL: l.contains(15, 15),
        rectEdges: [rect.contains(2, 3), rect.contains(6, 8)], rectCentroid: [rect.getCentroidX(), rect.getCentroidY()],
        ellipseArea: ellipse.getArea(), ellipseEdge: ellipse.contains(20, 5),
        points: safe { l.getAllPoints().collect { p -> [p.getX(), p.getY()] } }, numPoints: safe { l.getNumPoints() },
        rectPoints: safe { rect.getAllPoints().collect { p -> [p.getX(), p.getY()] } },
        ellipsePoints: safe { ellipse.getAllPoints().size() }, geometry: geometry,
        isArea: l.isArea(), type: safe { l.getRoiType() }]
""",
    # GsonTools.toJson(roi): rings as JTS normalizes them; an ellipse as JTS's 100-point polygon.
    "to_json": r"""
import qupath.lib.io.GsonTools
import qupath.lib.io.PathIO
import qupath.lib.roi.ROIs
import java.nio.charset.StandardCharsets
def gson = GsonTools.getInstance()
def holed = PathIO.readObjectsFromGeoJSON(new ByteArrayInputStream(('{"type": "Feature", "properties": {}, ' +
    '"geometry": {"type": "Polygon", "coordinates": [[[0, 0], [20, 0], [20, 20], [0, 20], [0, 0]], ' +
    '[[9, 9], [11, 9], [11, 11], [9, 11], [9, 9]]]}}').getBytes(StandardCharsets.UTF_8)))[0].getROI()
return [rect: gson.toJson(ROIs.createRectangleROI(10, 20, 20, 10, null)),
        l: gson.toJson(ROIs.createPolygonROI([0, 20, 20, 10, 10, 0] as double[], [0, 0, 10, 10, 20, 20] as double[], null)),
        ellipse: gson.toJson(ROIs.createEllipseROI(0, 0, 20, 10, null)), holed: gson.toJson(holed)]
""",
    # GeoJSON import: the list form of measurements; a polygon that crosses itself.
    "import_forms": r"""
import qupath.lib.io.PathIO
import java.nio.charset.StandardCharsets
def read = { String text -> PathIO.readObjectsFromGeoJSON(new ByteArrayInputStream(text.getBytes(StandardCharsets.UTF_8))) }
def feature = { String coordinates, String props ->
    '{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": ' + coordinates + '}, "properties": ' + props + '}' }
def square = '[[[0, 0], [10, 0], [10, 10], [0, 10], [0, 0]]]'
def listed = read(feature(square, '{"objectType": "detection", "measurements": [{"name": "a", "value": 1.5}, {"name": "b", "value": 2}]}'))[0]
def failure = { String text -> try { read(text); return null } catch (Exception e) { return e.toString() } }
def touching = read(feature('[[[0, 0], [10, 0], [5, 5], [10, 10], [0, 10], [5, 5], [0, 0]]]', '{}'))[0].getROI()
return [listed: [listed.getMeasurementList().get('a'), listed.getMeasurementList().get('b')],
        bowtie: failure('{"type": "FeatureCollection", "features": [' + feature(square, '{}') + ', ' +
            feature('[[[0, 0], [10, 10], [10, 0], [0, 10], [0, 0]]]', '{}') + ']}'),
        holeAcross: failure(feature('[[[0, 0], [10, 0], [10, 10], [0, 10], [0, 0]], [[5, 5], [15, 5], [15, 6], [5, 6], [5, 5]]]', '{}')),
        touching: touching.getArea()]
""",
    # Error messages as QuPath words them.
    "messages": r"""
import qupath.lib.geom.Point2
import qupath.lib.objects.PathObjects
import qupath.lib.objects.classes.PathClass
import qupath.lib.objects.hierarchy.PathObjectHierarchy
import qupath.lib.roi.ROIs
def message = { Closure c -> try { c(); return null } catch (Exception e) { return e.getClass().getSimpleName() + ': ' + e.getMessage() } }
def o = PathObjects.createAnnotationObject(ROIs.createRectangleROI(0, 0, 1, 1, null))
return [blank: message { PathClass.fromString('') }, setRoi: message { o.setROI(null) },
        lineBreak: message { PathClass.fromString('a\nb') },
        delimiter: message { PathClass.getInstance(null, 'a:b', null) },
        derivedNull: message { PathClass.getInstance(PathClass.fromString('Tumor'), null, null) },
        annotation: message { PathObjects.createAnnotationObject(null) },
        detection: message { PathObjects.createDetectionObject(null) }, tile: message { PathObjects.createTileObject(null) },
        id: message { o.setID(null) }, arrays: message { ROIs.createPolygonROI([0, 1] as double[], [0] as double[], null) },
        own: message { new PathObjectHierarchy().addObjectBelowParent(o, o, false) },
        dim: message { new Point2(1, 2).get(2) }]
""",
}


def run_snippets(runtime, classes: Path, work: Path) -> dict:
    """Run every snippet under ``runtime`` against the stand-in classes in ``classes``."""
    snippets = work / "snippets"
    snippets.mkdir(parents=True, exist_ok=True)
    for name, code in SNIPPETS.items():
        (snippets / f"{name}.groovy").write_text(code)
    driver = work / "driver.groovy"
    driver.write_text(DRIVER)
    result = runtime.run(driver, [str(snippets), str(work / "out.json")], extra_cp=[classes])
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return json.loads((work / "out.json").read_text())


@pytest.fixture(scope="module")
def stub_classes(tmp_path_factory):
    return groovy_env.compile_stubs(tmp_path_factory.mktemp("stub_classes"))


@pytest.fixture(scope="module", params=RUNTIMES)
def observed(request, stub_classes, tmp_path_factory):
    runtime = groovy_env.available(request.param)
    if isinstance(runtime, str):
        groovy_env.missing(runtime)
    return run_snippets(runtime, stub_classes, tmp_path_factory.mktemp(request.param))


def _value(observed: dict, name: str) -> dict:
    entry = observed[name]
    assert "error" not in entry, entry["error"]
    return entry["value"]


def _argb(r: int, g: int, b: int) -> int:
    """QuPath's ColorTools.packRGB as a Java int: alpha 255 in the top byte."""
    v = (0xFF << 24) | (r << 16) | (g << 8) | b
    return v - (1 << 32)


def test_set_roi_clears_measurements(observed):
    """PathROIObject.setROI (v0.6.0): a new ROI object clears the measurements; the same one does not."""
    v = _value(observed, "set_roi")
    assert v["same"] == ["mean_probability"]
    assert v["changed"] == []
    assert v["has"] is True and v["area"] == 100
    assert v["nullRoi"] == "IllegalArgumentException"


def test_path_class_from_string(observed):
    """PathClass.fromString (v0.6.0): "a: b" is b derived from a; null is NULL_CLASS; new classes get colours."""
    v = _value(observed, "path_class")
    assert (v["name"], v["string"], v["derived"]) == ("Positive", "Tumor: Positive", True)
    assert v["parentIsTumor"] and v["same"] and v["groovyEquals"]
    assert v["nullIsNullClass"] and v["nullClassString"] == "Unclassified"
    assert v["objectClassAfterNull"] is None  # setPathClass(NULL_CLASS) stores null
    assert v["freshColor"] is not None and v["freshColor"] == v["freshAgain"]
    assert (v["freshColor"] >> 24) & 0xFF == 0xFF  # packed ARGB, alpha 255
    assert v["given"] == _argb(0x10, 0x20, 0x30)
    assert v["blank"] == "IllegalArgumentException"


def test_geojson_import_types_rois_and_reads_string_classes(observed):
    """ROITypeAdapters/GeometryTools.geometryToROI, PathClassTypeAdapter, PathObjectTypeAdapter (v0.6.0)."""
    v = _value(observed, "geojson")
    assert v["rois"] == ["Rectangle", "Polygon", "Geometry", "Polygon", "Rectangle"]
    assert v["classes"] == ["Tumor", "milsil-stroma", None, None, "Tumor: Positive"]
    assert v["stromaColor"] == _argb(1, 2, 3)
    # snapped to the 0.01 px grid; the ring's first point repeated at the end (JTS coordinates)
    assert v["snappedX"] == pytest.approx([0.0, 10.01, 0.0, 0.0])
    assert v["cell"] and v["cellDetection"] and v["nucleus"] == pytest.approx(4)
    assert v["cellId"] == "0b1e7e8e-1c1a-4c55-9a55-6c0e7d3a6f11" and v["cellArea"] == 4
    assert v["noColor"] == "JsonParseException"  # a classification object needs a colour
    assert v["detection"] and v["tileIsDetection"]


def test_intersection_returns_typed_rois(observed):
    """RoiTools.intersection (v0.6.0) through GeometryTools.geometryToROI: Rectangle, Polygon, Geometry, empty."""
    v = _value(observed, "intersection")
    assert v["rr"] == ["Rectangle", 5, 5, 5, 5, 25]
    assert v["pr"] == ["Polygon", pytest.approx(50)]  # the triangle (5, 5), (15, 5), (5, 15)
    assert v["two"] == ["Geometry", pytest.approx(80)]  # two 10 x 4 rectangles
    assert v["hole"] == ["Geometry", pytest.approx(396), False, True]
    assert v["none"] == ["Rectangle", True, 0]
    assert v["single"] and v["newObject"] and v["sameAsRect"] == "Rectangle"


def test_cells_and_detections_in_the_hierarchy(observed):
    """PathCellObject, PathObjects.createCellObject, PathObjectHierarchy.get*Objects and
    *ForROI (v0.6.0): detections are inside an annotation by their ROI's centroid, annotations
    when covered; tiles and cells are detections."""
    v = _value(observed, "cells")
    assert v["isCell"] and v["isDetection"] and v["instance"]
    assert v["cellRoi"] == 20 and v["nucleus"] == "Ellipse" and v["noNucleus"]
    assert v["hasNucleus"] == [True, False]
    assert v["detections"] == ["across", "plain", "tile", "outside"]
    assert v["cells"] == ["across", "outside"] and v["tiles"] == ["tile"]
    assert v["forRoi"] == ["across", "plain", "tile"]
    assert v["detectionsForRoi"] == ["across", "plain", "tile"]
    assert v["cellsForRoi"] == ["across"]
    assert v["annotationsForRoi"] == ["annotation", "inner"]
    assert v["allForRoi"] == ["annotation", "across", "plain", "tile", "inner"]
    assert v["children"] == ["across", "plain", "tile", "inner"]
    assert v["cls"] == "Stroma"
    assert v["measurements"] == ["milsil p(tumor)", "milsil mean logit(tumor)"]
    assert v["missing"] is None
    # detections keep float measurements (MeasurementListType.FLOAT), annotations doubles
    assert v["floatValue"] != 0.1 and v["floatValue"] == pytest.approx(0.1, abs=1e-7)
    assert v["annotationValue"] == 0.1


def test_roi_points_centroid_contains(observed):
    """ROI accessors (v0.6.0): PolygonROI's area centroid and winding contains, RectangleROI's
    corners and half-open contains, EllipseROI's exact area, getGeometry present."""
    v = _value(observed, "roi")
    assert v["centroid"] == pytest.approx([25 / 3, 25 / 3], abs=1e-5)  # not the bounds' centre
    assert v["area"] == 300
    assert v["inL"] and not v["notInL"]
    assert v["rectEdges"] == [True, False]
    assert v["rectCentroid"] == [4, 5.5]
    assert v["ellipseArea"] == pytest.approx(math.pi * 10 * 5) and v["ellipseEdge"]
    assert v["points"] == [[0, 0], [20, 0], [20, 10], [10, 10], [10, 20], [0, 20]]
    assert v["numPoints"] == 6
    assert v["rectPoints"] == [[2, 3], [6, 3], [6, 8], [2, 8]]
    assert v["ellipsePoints"] == 4
    assert v["geometry"] in {"no JTS", "org.locationtech.jts.geom.Polygon"}
    assert v["isArea"] and v["type"] == "AREA"


def _shoelace(ring: list) -> float:
    """Twice the signed area, sum of x_i y_(i+1) - x_(i+1) y_i: JTS Orientation.isCCW when > 0."""
    return sum(a[0] * b[1] - b[0] * a[1] for a, b in zip(ring, ring[1:], strict=False))


def test_to_json_rings_as_jts_normalizes_them(observed):
    """GsonTools.toJson(roi) (v0.6.0): ROITypeAdapters.ROITypeAdapter.write writes
    roi.getGeometry(), which for a rectangle, ellipse or polygon is
    GeometryTools.GeometryConverter.roiToGeometry(roi).norm(): JTS Polygon.normalize starts
    the shell at its smallest coordinate and turns it clockwise (negative shoelace), holes
    counter-clockwise. Rectangle and L as JTS 1.20 writes them; an ellipse is JTS
    GeometricShapeFactory.createEllipse's 100 points (101 with the closing one)."""
    v = _value(observed, "to_json")
    rect = json.loads(v["rect"])
    assert rect == {
        "type": "Polygon",
        "coordinates": [[[10, 20], [10, 30], [30, 30], [30, 20], [10, 20]]],
    }
    ring = json.loads(v["l"])["coordinates"][0]
    assert ring == [[0, 0], [0, 20], [10, 20], [10, 10], [20, 10], [20, 0], [0, 0]]
    ellipse = json.loads(v["ellipse"])
    assert ellipse["isEllipse"] is True
    ring = ellipse["coordinates"][0]
    assert len(ring) == 101 and ring[0] == ring[-1] == [0, 5]
    assert ring[1] == [0.02, 5.31]  # JTS: the point at angle 2 pi 51/100, reached going clockwise
    assert _shoelace(ring) < 0
    assert all(abs(((x - 10) / 10) ** 2 + ((y - 5) / 5) ** 2 - 1) < 0.01 for x, y in ring)
    shell, hole = json.loads(v["holed"])["coordinates"]
    assert _shoelace(shell) < 0 < _shoelace(hole)  # GeometryPrecisionReducer's output
    assert sorted(map(tuple, shell[:-1])) == [(0, 0), (0, 20), (20, 0), (20, 20)]


def test_geojson_import_reads_listed_measurements_and_refuses_crossing_rings(observed):
    """QuPathTypeAdapters.MeasurementListTypeAdapter.read (v0.6.0) reads the list form
    [{"name", "value"}] as well as the object; ROITypeAdapters.parseGeometry reduces every
    geometry to the 0.01 px grid with JTS GeometryPrecisionReducer, which throws for rings
    that cross (one bad feature fails the whole document), not for a ring that only
    touches itself at a vertex."""
    v = _value(observed, "import_forms")
    assert v["listed"] == [1.5, 2]
    failed = "java.lang.IllegalArgumentException: Reduction failed, possible invalid input"
    assert v["bowtie"] == failed and v["holeAcross"] == failed
    assert v["touching"] == pytest.approx(50)  # two triangles of 25


def test_error_messages_as_quapath_words_them(observed):
    """The exceptions' text, from QuPath v0.6.0's PathClass (validateNameNotBlank, the
    constructor's isValidName, getInstance), PathROIObject.setROI, PathObjects.create*Object,
    PathObject.setID, ROIs.createPolygonROI, PathObjectHierarchy.addObjectBelowParent and
    Point2.get."""
    v = _value(observed, "messages")
    iae = "IllegalArgumentException: "
    assert v == {
        "blank": iae + "Requested PathClass name cannot be blank!",
        "setRoi": iae + "PathROIObject.setROI cannot be called with null!",
        "lineBreak": iae + "a\nb is not a valid PathClass name!",
        "delimiter": iae + "Name 'a:b' contains the delimiter ':' - please use a valid name or "
        "getInstanceFromString()",
        "derivedNull": iae + "Cannot derive a PathClass with a null name and non-null parent",
        "annotation": iae + "A ROI is required to create an annotation object!",
        "detection": iae + "A ROI is required to create a detection object!",
        "tile": iae + "A ROI is required to create a detection object!",
        "id": iae + "ID of an object cannot be null!",
        "arrays": iae + "Arrays have different lengths!",
        "own": iae + "Cannot add a PathObject as a descendent of itself!",
        "dim": iae + "Requested dimension 2 for Point2 - allowable values are 0 and 1",
    }
