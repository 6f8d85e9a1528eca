package qupath.lib.io;

import java.io.IOException;
import java.io.InputStream;
import java.io.InputStreamReader;
import java.io.Reader;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.UUID;

import com.google.gson.JsonArray;
import com.google.gson.JsonElement;
import com.google.gson.JsonObject;
import com.google.gson.JsonParseException;
import com.google.gson.JsonParser;

import milsilstub.ShapeROI;
import milsilstub.World;
import qupath.lib.geom.Point2;
import qupath.lib.objects.PathObject;
import qupath.lib.objects.PathObjects;
import qupath.lib.objects.classes.PathClass;
import qupath.lib.regions.ImagePlane;
import qupath.lib.roi.GeometryROI;
import qupath.lib.roi.ROIs;
import qupath.lib.roi.interfaces.ROI;

/**
 * Stand-in for qupath.lib.io.PathIO (QuPath v0.6.0, qupath-core/src/main/java/qupath/lib/io/PathIO.java):
 * {@code public static List<PathObject> readObjectsFromGeoJSON(InputStream stream) throws
 * IOException, JsonParseException}, which in QuPath is GsonTools.parseObjectsFromGeoJSON with
 * QuPathTypeAdapters.PathObjectTypeAdapter (objects), GsonTools.PathClassTypeAdapter
 * (classification) and ROITypeAdapters.ROITypeAdapter (geometry). Every document is also
 * recorded for the Python checks (milsilstub.World). Deliberately narrower than QuPath: only
 * area geometry (Polygon, MultiPolygon) is read; a Point/LineString is a JsonParseException
 * rather than a points/line ROI, which no stand-in has.
 */
public class PathIO {
    private PathIO() {
    }

    /**
     * QuPath: public static List&lt;PathObject&gt; readObjectsFromGeoJSON(InputStream stream).
     * As GsonTools.addPathObjects: an array is read element by element; a "Feature" is one
     * object; a "FeatureCollection" its "features"; a bare Polygon/MultiPolygon geometry an
     * annotation; any other JSON is skipped.
     */
    public static List<PathObject> readObjectsFromGeoJSON(InputStream stream) throws IOException, JsonParseException {
        Reader reader = new InputStreamReader(stream, StandardCharsets.UTF_8);
        StringBuilder text = new StringBuilder();
        char[] buf = new char[8192];
        for (int n = reader.read(buf); n >= 0; n = reader.read(buf)) {
            text.append(buf, 0, n);
        }
        World.recordGeoJSON(text.toString());
        List<PathObject> out = new ArrayList<>();
        addObjects(JsonParser.parseString(text.toString()), out);
        return out;
    }

    private static void addObjects(JsonElement element, List<PathObject> out) {
        if (element == null || element.isJsonNull()) {
            return;
        }
        if (element.isJsonArray()) {
            for (JsonElement e : element.getAsJsonArray()) {
                addObjects(e, out);
            }
            return;
        }
        if (!element.isJsonObject() || !element.getAsJsonObject().has("type")) {
            return;
        }
        JsonObject o = element.getAsJsonObject();
        String type = o.get("type").getAsString();
        if ("Feature".equals(type)) {
            out.add(toObject(o));
        } else if ("FeatureCollection".equals(type)) {
            if (o.has("features") && o.get("features").isJsonArray()) {
                for (JsonElement e : o.getAsJsonArray("features")) {
                    out.add(toObject(e.getAsJsonObject()));
                }
            }
        } else if ("Polygon".equals(type) || "MultiPolygon".equals(type)) {
            out.add(PathObjects.createAnnotationObject(toROI(o)));
        }
    }

    /**
     * QuPathTypeAdapters.PathObjectTypeAdapter.parseObject: "id" (a UUID) becomes the object's
     * ID; properties.objectType (or object_type, type) picks the object: "tile", "cell" (with
     * "nucleusGeometry" as the nucleus ROI), "tmaCore" (an ellipse in the geometry's bounds,
     * "isMissing"), "detection", and "annotation" for annotation, a missing type or an unknown
     * one; then measurements, classification, name, color, isLocked.
     */
    private static PathObject toObject(JsonObject f) {
        JsonObject props = f.has("properties") && f.get("properties").isJsonObject()
            ? f.getAsJsonObject("properties") : new JsonObject();
        String objectType = "annotation";
        for (String key : new String[] {"objectType", "object_type", "type"}) {
            if (props.has(key)) {
                objectType = props.get(key).getAsString();
                break;
            }
        }
        ROI roi = toROI(f.get("geometry") != null && f.get("geometry").isJsonObject() ? f.getAsJsonObject("geometry") : null);
        PathObject o;
        if ("tile".equals(objectType)) {
            o = PathObjects.createTileObject(roi);
        } else if ("cell".equals(objectType)) {
            ROI nucleus = f.has("nucleusGeometry") ? toROI(f.getAsJsonObject("nucleusGeometry")) : null;
            o = PathObjects.createCellObject(roi, nucleus, null, null);
        } else if ("tmaCore".equals(objectType) || "tma_core".equals(objectType)) {
            boolean missing = props.has("isMissing") && props.get("isMissing").isJsonPrimitive()
                && props.get("isMissing").getAsBoolean();
            o = PathObjects.createTMACoreObject(roi.getBoundsX(), roi.getBoundsY(), roi.getBoundsWidth(),
                roi.getBoundsHeight(), missing);
        } else if ("detection".equals(objectType)) {
            o = PathObjects.createDetectionObject(roi);
        } else {
            if (!"annotation".equals(objectType)) {
                System.err.println("Unknown object type " + objectType + ", I will create an annotation");
            }
            o = PathObjects.createAnnotationObject(roi);
        }
        if (f.has("id") && f.get("id").isJsonPrimitive()) {
            try {
                o.setID(UUID.fromString(f.get("id").getAsString()));
            } catch (IllegalArgumentException e) {
                // QuPath ignores an id that is not a UUID
            }
        }
        if (props.has("measurements") && props.get("measurements").isJsonObject()) {
            for (Map.Entry<String, JsonElement> m : props.getAsJsonObject("measurements").entrySet()) {
                Double value = measurement(m.getKey(), m.getValue());
                if (value != null) {
                    o.getMeasurementList().put(m.getKey(), value);
                }
            }
        } else if (props.has("measurements") && props.get("measurements").isJsonArray()) {
            // QuPathTypeAdapters.MeasurementListTypeAdapter.read, BEGIN_ARRAY: the list form QuPath
            // wrote before v0.4.0, [{"name": ..., "value": ...}, ...], still read in v0.6.0.
            for (JsonElement m : props.getAsJsonArray("measurements")) {
                JsonObject entry = m.getAsJsonObject();
                o.getMeasurementList().put(entry.get("name").getAsString(), entry.get("value").getAsDouble());
            }
        }
        if (props.has("classification")) {
            o.setPathClass(toPathClass(props.get("classification")));
        }
        if (props.has("name")) {
            o.setName(props.get("name").getAsString());
        }
        if (props.has("color")) {
            Integer color = color(props.get("color"));
            if (color != null) {
                o.setColor(color);
            }
        }
        if (props.has("isLocked") && props.get("isLocked").isJsonPrimitive() && props.get("isLocked").getAsBoolean()) {
            o.setLocked(true);
        }
        return o;
    }

    /**
     * QuPathTypeAdapters.MeasurementListTypeAdapter.read, BEGIN_OBJECT: numbers, or the strings
     * "NaN", "Inf", "-Inf" (any case), or a number as a string (Double.parseDouble, which
     * throws for other text); any other value (true, null, an object) is skipped with a
     * warning ("Cannot parse measurement value for key ..."): null here.
     */
    private static Double measurement(String name, JsonElement v) {
        if (!v.isJsonPrimitive() || v.getAsJsonPrimitive().isBoolean()) {
            System.err.println("Cannot parse measurement value for key " + name + ": " + v);
            return null;
        }
        if (v.getAsJsonPrimitive().isNumber()) {
            return v.getAsDouble();
        }
        String s = v.getAsString().toLowerCase();
        if ("nan".equals(s)) {
            return Double.NaN;
        }
        if ("inf".equals(s)) {
            return Double.POSITIVE_INFINITY;
        }
        if ("-inf".equals(s)) {
            return Double.NEGATIVE_INFINITY;
        }
        return Double.parseDouble(v.getAsString());
    }

    /**
     * GsonTools.PathClassTypeAdapter.read: JSON null: no class; a string: PathClass.fromString
     * (so "Tumor: Positive" is a derived class), no colour given; an object with "name" (or
     * "names", a list) AND "color" ([r, g, b], [r, g, b, alpha] or one packed int):
     * fromString(name, colour) / fromCollection(names, colour); anything else, e.g. an object
     * without "color", is a JsonParseException.
     */
    private static PathClass toPathClass(JsonElement c) {
        if (c.isJsonNull()) {
            return null;
        }
        if (c.isJsonPrimitive() && c.getAsJsonPrimitive().isString()) {
            return PathClass.fromString(c.getAsString());
        }
        if (c.isJsonObject()) {
            JsonObject o = c.getAsJsonObject();
            if ((o.has("name") || o.has("names")) && o.has("color")) {
                Integer rgb = color(o.get("color"));
                if (o.has("name") && !o.get("name").isJsonNull()) {
                    return PathClass.fromString(o.get("name").getAsString(), rgb);
                }
                List<String> names = new ArrayList<>();
                if (o.get("names").isJsonArray()) {
                    for (JsonElement n : o.getAsJsonArray("names")) {
                        names.add(n.getAsString());
                    }
                }
                return names.isEmpty() ? null : PathClass.fromCollection(names, rgb);
            }
        }
        throw new JsonParseException("cannot read a classification from " + c
            + " (a string, or an object with \"name\" and \"color\")");
    }

    /** GsonTools.arrayToRgb / QuPathTypeAdapters: [r, g, b] (alpha 255), [r, g, b, a], one packed int; lower 8 bits of each. */
    private static Integer color(JsonElement c) {
        if (c == null || c.isJsonNull()) {
            return null;
        }
        if (c.isJsonPrimitive()) {
            return c.getAsInt();
        }
        JsonArray a = c.getAsJsonArray();
        if (a.size() == 0) {
            return null;
        }
        if (a.size() == 1) {
            return a.get(0).getAsInt();
        }
        if (a.size() == 3 || a.size() == 4) {
            int alpha = a.size() == 4 ? a.get(3).getAsInt() : 255;
            return ((alpha & 0xff) << 24) | ((a.get(0).getAsInt() & 0xff) << 16) | ((a.get(1).getAsInt() & 0xff) << 8)
                | (a.get(2).getAsInt() & 0xff);
        }
        throw new JsonParseException("a colour needs 0, 1, 3 or 4 values, not " + a.size() + ": " + a);
    }

    /**
     * ROITypeAdapters.ROITypeAdapter.read: coordinates snapped to QuPath's 0.01 px grid
     * (GeometryPrecisionReducer with GeometryTools' precision model), then "isEllipse": true
     * gives an EllipseROI in the geometry's bounds, otherwise GeometryTools.geometryToROI:
     * one polygon without holes that is an axis-aligned rectangle: RectangleROI; another
     * polygon without holes: PolygonROI; holes or several polygons: GeometryROI (see
     * ShapeROI.toROI). A one-part MultiPolygon is read as its polygon, the closing vertex not
     * repeated (QuPath goes through java.awt.geom.Area there). Rings whose edges cross after
     * snapping throw as QuPath does (see below); other invalid input (a part inside another,
     * edges that overlap without crossing) is not checked here: the Python tests check every
     * document with shapely.
     */
    private static ROI toROI(JsonObject geometry) {
        if (geometry == null || !geometry.has("type")) {
            throw new JsonParseException("feature without geometry");
        }
        String type = geometry.get("type").getAsString();
        if (!geometry.has("coordinates")) {
            throw new JsonParseException("geometry without coordinates: " + geometry);
        }
        JsonArray coords = geometry.getAsJsonArray("coordinates");
        List<List<double[][]>> polygons = new ArrayList<>();
        if ("Polygon".equals(type)) {
            polygons.add(polygon(coords));
        } else if ("MultiPolygon".equals(type)) {
            for (JsonElement p : coords) {
                polygons.add(polygon(p.getAsJsonArray()));
            }
        } else {
            throw new JsonParseException("geometry type " + type + " is not an area (Polygon/MultiPolygon): the stand-in reads areas only");
        }
        if (ShapeROI.edgesCross(polygons)) {
            // ROITypeAdapters.parseGeometry reduces the parsed geometry to the 0.01 px grid with
            // JTS GeometryPrecisionReducer.reduce, whose overlay fails on rings that cross
            // (themselves, each other, or another polygon's) and throws this
            // IllegalArgumentException, which nothing in PathIO/GsonTools catches: the whole
            // document fails. A ring that only touches itself at a vertex is reduced fine.
            throw new IllegalArgumentException("Reduction failed, possible invalid input");
        }
        List<List<double[][]>> snapped = ShapeROI.snapped(polygons);
        if (geometry.has("isEllipse") && geometry.get("isEllipse").getAsBoolean()) {
            ROI bounds = new GeometryROI(snapped, ImagePlane.getDefaultPlane());
            return ROIs.createEllipseROI(bounds.getBoundsX(), bounds.getBoundsY(), bounds.getBoundsWidth(),
                bounds.getBoundsHeight(), ImagePlane.getDefaultPlane());
        }
        if ("MultiPolygon".equals(type) && snapped.size() == 1 && snapped.get(0).size() == 1) {
            double[][] ring = snapped.get(0).get(0);
            double[] rect = ShapeROI.rectangle(ring);
            if (rect != null) {
                return ROIs.createRectangleROI(rect[0], rect[1], rect[2], rect[3], ImagePlane.getDefaultPlane());
            }
            List<Point2> points = new ArrayList<>();
            for (double[] p : ring) {
                points.add(new Point2(p[0], p[1]));
            }
            return ROIs.createPolygonROI(points, ImagePlane.getDefaultPlane());
        }
        return ShapeROI.toROI(snapped, ImagePlane.getDefaultPlane());
    }

    /** A GeoJSON polygon's rings (shell, then holes): closed rings of at least 4 positions, as JTS LinearRing requires. */
    private static List<double[][]> polygon(JsonArray rings) {
        if (rings.size() == 0) {
            throw new JsonParseException("polygon without rings");
        }
        List<double[][]> out = new ArrayList<>();
        for (JsonElement ringElement : rings) {
            JsonArray ring = ringElement.getAsJsonArray();
            if (ring.size() < 4) {
                throw new JsonParseException("polygon ring with fewer than 4 positions (JTS: invalid number of points in LinearRing)");
            }
            JsonArray first = ring.get(0).getAsJsonArray();
            JsonArray last = ring.get(ring.size() - 1).getAsJsonArray();
            if (first.get(0).getAsDouble() != last.get(0).getAsDouble()
                    || first.get(1).getAsDouble() != last.get(1).getAsDouble()) {
                throw new JsonParseException("polygon ring is not closed (JTS: points of LinearRing do not form a closed linestring)");
            }
            double[][] points = new double[ring.size() - 1][];
            for (int i = 0; i < ring.size() - 1; i++) {
                JsonArray p = ring.get(i).getAsJsonArray();
                points[i] = new double[] {p.get(0).getAsDouble(), p.get(1).getAsDouble()};
            }
            out.add(points);
        }
        return out;
    }
}
