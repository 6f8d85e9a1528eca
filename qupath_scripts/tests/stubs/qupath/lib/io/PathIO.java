package qupath.lib.io;

import java.awt.geom.Path2D;
import java.io.IOException;
import java.io.InputStream;
import java.io.InputStreamReader;
import java.io.Reader;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Map;

import com.google.gson.JsonArray;
import com.google.gson.JsonElement;
import com.google.gson.JsonObject;
import com.google.gson.JsonParseException;
import com.google.gson.JsonParser;

import milsilstub.ShapeROI;
import milsilstub.World;
import qupath.lib.objects.PathObject;
import qupath.lib.objects.PathObjects;
import qupath.lib.objects.classes.PathClass;
import qupath.lib.roi.interfaces.ROI;

/**
 * Stand-in for qupath.lib.io.PathIO (QuPath v0.4.3-v0.7.0):
 * {@code public static List<PathObject> readObjectsFromGeoJSON(InputStream stream) throws
 * IOException, JsonSyntaxException, JsonParseException}. Parses strictly by the rules QuPath's
 * GeoJSON adapters apply to what the milsil server writes: a Feature / FeatureCollection whose
 * features have properties.objectType (annotation, detection, tile, cell, tmaCore), a
 * classification object with both "name" and an [r, g, b] "color" (QuPath rejects one without
 * colour), measurements as a name -> number map, and Polygon / MultiPolygon geometry with
 * closed rings (shell, then holes). Every document is also recorded for the Python checks.
 */
public class PathIO {
    private static final List<String> OBJECT_TYPES =
        Arrays.asList("annotation", "detection", "tile", "cell", "tmaCore");

    private PathIO() {
    }

    public static List<PathObject> readObjectsFromGeoJSON(InputStream stream) throws IOException, JsonParseException {
        Reader reader = new InputStreamReader(stream, StandardCharsets.UTF_8);
        StringBuilder text = new StringBuilder();
        char[] buf = new char[8192];
        for (int n = reader.read(buf); n >= 0; n = reader.read(buf)) {
            text.append(buf, 0, n);
        }
        World.recordGeoJSON(text.toString());
        JsonElement root = JsonParser.parseString(text.toString());
        List<JsonObject> features = new ArrayList<>();
        if (root.isJsonArray()) {
            for (JsonElement e : root.getAsJsonArray()) {
                features.add(e.getAsJsonObject());
            }
        } else {
            JsonObject o = root.getAsJsonObject();
            String type = o.has("type") ? o.get("type").getAsString() : "";
            if ("FeatureCollection".equals(type)) {
                for (JsonElement e : o.getAsJsonArray("features")) {
                    features.add(e.getAsJsonObject());
                }
            } else if ("Feature".equals(type)) {
                features.add(o);
            } else {
                throw new JsonParseException("GeoJSON type must be Feature or FeatureCollection, got '" + type + "'");
            }
        }
        List<PathObject> out = new ArrayList<>();
        for (JsonObject f : features) {
            out.add(toObject(f));
        }
        return out;
    }

    private static PathObject toObject(JsonObject f) {
        if (!"Feature".equals(f.get("type").getAsString())) {
            throw new JsonParseException("not a Feature: " + f.get("type"));
        }
        JsonObject props = f.has("properties") ? f.getAsJsonObject("properties") : new JsonObject();
        if (!props.has("objectType")) {
            throw new JsonParseException("feature without properties.objectType");
        }
        String objectType = props.get("objectType").getAsString();
        if (!OBJECT_TYPES.contains(objectType)) {
            throw new JsonParseException("unknown objectType '" + objectType + "'");
        }
        ROI roi = toROI(f.getAsJsonObject("geometry"));
        PathClass pathClass = null;
        if (props.has("classification")) {
            JsonObject c = props.getAsJsonObject("classification");
            if (!c.has("name") || !c.has("color")) {
                throw new JsonParseException("classification needs both name and color: " + c);
            }
            JsonArray rgb = c.getAsJsonArray("color");
            if (rgb.size() != 3) {
                throw new JsonParseException("classification color must be [r, g, b]: " + rgb);
            }
            int packed = 0;
            for (int i = 0; i < 3; i++) {
                int v = rgb.get(i).getAsInt();
                if (v < 0 || v > 255) {
                    throw new JsonParseException("color component out of 0-255: " + v);
                }
                packed = (packed << 8) | v;
            }
            pathClass = PathClass.fromString(c.get("name").getAsString(), packed);
        }
        PathObject o;
        if ("tile".equals(objectType)) {
            o = PathObjects.createTileObject(roi, pathClass);
        } else if ("detection".equals(objectType) || "cell".equals(objectType)) {
            o = PathObjects.createDetectionObject(roi, pathClass);
        } else {
            o = PathObjects.createAnnotationObject(roi, pathClass);
        }
        if (props.has("name")) {
            o.setName(props.get("name").getAsString());
        }
        if (props.has("isLocked")) {
            o.setLocked(props.get("isLocked").getAsBoolean());
        }
        if (props.has("measurements")) {
            for (Map.Entry<String, JsonElement> m : props.getAsJsonObject("measurements").entrySet()) {
                o.getMeasurementList().put(m.getKey(), m.getValue().getAsDouble());
            }
        }
        return o;
    }

    private static ROI toROI(JsonObject geometry) {
        if (geometry == null) {
            throw new JsonParseException("feature without geometry");
        }
        String type = geometry.get("type").getAsString();
        JsonArray coords = geometry.getAsJsonArray("coordinates");
        Path2D.Double path = new Path2D.Double(Path2D.WIND_EVEN_ODD);
        if ("Polygon".equals(type)) {
            addPolygon(path, coords);
        } else if ("MultiPolygon".equals(type)) {
            for (JsonElement polygon : coords) {
                addPolygon(path, polygon.getAsJsonArray());
            }
        } else {
            throw new JsonParseException("geometry type " + type + " is not an area (Polygon/MultiPolygon)");
        }
        return new ShapeROI(path, "Geometry");
    }

    private static void addPolygon(Path2D.Double path, JsonArray rings) {
        if (rings.size() == 0) {
            throw new JsonParseException("polygon without rings");
        }
        for (JsonElement ringElement : rings) {
            JsonArray ring = ringElement.getAsJsonArray();
            if (ring.size() < 4) {
                throw new JsonParseException("polygon ring with fewer than 4 positions");
            }
            JsonArray first = ring.get(0).getAsJsonArray();
            JsonArray last = ring.get(ring.size() - 1).getAsJsonArray();
            if (first.get(0).getAsDouble() != last.get(0).getAsDouble()
                    || first.get(1).getAsDouble() != last.get(1).getAsDouble()) {
                throw new JsonParseException("polygon ring is not closed");
            }
            for (int i = 0; i < ring.size() - 1; i++) {
                JsonArray p = ring.get(i).getAsJsonArray();
                if (i == 0) {
                    path.moveTo(p.get(0).getAsDouble(), p.get(1).getAsDouble());
                } else {
                    path.lineTo(p.get(0).getAsDouble(), p.get(1).getAsDouble());
                }
            }
            path.closePath();
        }
    }
}
