package milsilstub;

import java.awt.image.BufferedImage;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Map;

import com.google.gson.JsonArray;
import com.google.gson.JsonObject;

import qupath.lib.images.ImageData;
import qupath.lib.objects.PathCellObject;
import qupath.lib.objects.PathObject;
import qupath.lib.objects.TMACoreObject;
import qupath.lib.objects.hierarchy.PathObjectHierarchy;
import qupath.lib.projects.Project;
import qupath.lib.projects.ProjectImageEntry;

/** Test plumbing: what QuPath would consider "current", and a record of parsed GeoJSON. */
public final class World {
    public static ImageData<BufferedImage> imageData;
    public static Project<BufferedImage> project;
    public static ProjectImageEntry<BufferedImage> entry;
    public static Path geojsonDir;
    private static int geojsonCount;

    private World() {
    }

    public static synchronized void recordGeoJSON(String text) {
        if (geojsonDir == null) {
            return;
        }
        try {
            Files.createDirectories(geojsonDir);
            Files.write(geojsonDir.resolve(String.format("geojson_%03d.json", geojsonCount++)),
                text.getBytes(StandardCharsets.UTF_8));
        } catch (IOException e) {
            throw new RuntimeException(e);
        }
    }

    /** The hierarchy as JSON: every object with type, id, class (its last name), classification (the whole, "milsil: unlike training"), colour, name, ROI type and rings (and a cell's nucleus rings), measurements, children. */
    public static JsonObject dump(PathObjectHierarchy hierarchy) {
        JsonObject out = new JsonObject();
        out.add("objects", children(hierarchy.getRootObject()));
        out.addProperty("changes", hierarchy.changeCount());
        return out;
    }

    private static JsonArray children(PathObject parent) {
        JsonArray list = new JsonArray();
        for (PathObject o : parent.getChildObjects()) {
            JsonObject j = new JsonObject();
            j.addProperty("type", o.isTMACore() ? "tmaCore" : o.isTile() ? "tile" : o.isCell() ? "cell"
                : o.isDetection() ? "detection" : "annotation");
            j.addProperty("id", o.getID().toString());
            j.addProperty("name", o.getName());
            if (o.getPathClass() != null) {
                j.addProperty("class", o.getPathClass().getName());
                j.addProperty("classification", o.getPathClass().toString());
                j.addProperty("color", o.getPathClass().getColor());
            }
            if (o instanceof TMACoreObject) {
                j.addProperty("missing", ((TMACoreObject) o).isMissing());
            }
            if (o.getROI() instanceof ShapeROI) {
                ShapeROI roi = (ShapeROI) o.getROI();
                j.addProperty("roi", roi.getRoiName());
                j.addProperty("area", roi.getArea());
                j.add("rings", rings(roi));
            }
            if (o instanceof PathCellObject && ((PathCellObject) o).getNucleusROI() instanceof ShapeROI) {
                j.add("nucleus_rings", rings((ShapeROI) ((PathCellObject) o).getNucleusROI()));
            }
            JsonObject m = new JsonObject();
            for (Map.Entry<String, Number> e : o.getMeasurementList().asMap().entrySet()) {
                m.addProperty(e.getKey(), e.getValue());
            }
            j.add("measurements", m);
            j.add("children", children(o));
            list.add(j);
        }
        return list;
    }

    private static JsonArray rings(ShapeROI roi) {
        JsonArray rings = new JsonArray();
        for (double[][] ring : roi.rings()) {
            JsonArray r = new JsonArray();
            for (double[] p : ring) {
                JsonArray xy = new JsonArray();
                xy.add(p[0]);
                xy.add(p[1]);
                r.add(xy);
            }
            rings.add(r);
        }
        return rings;
    }
}
