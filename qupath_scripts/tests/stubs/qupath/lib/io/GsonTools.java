package qupath.lib.io;

import java.io.IOException;
import java.text.NumberFormat;
import java.util.ArrayList;
import java.util.List;
import java.util.Locale;

import com.google.gson.Gson;
import com.google.gson.GsonBuilder;
import com.google.gson.TypeAdapter;
import com.google.gson.stream.JsonReader;
import com.google.gson.stream.JsonWriter;

import milsilstub.ShapeROI;
import qupath.lib.roi.interfaces.ROI;

/**
 * Stand-in for qupath.lib.io.GsonTools (QuPath v0.6.0): only getInstance(), whose Gson
 * writes a ROI the way QuPath's qupath.lib.io.ROITypeAdapters.ROITypeAdapter.write does:
 * one object with the ROI's JTS geometry as GeoJSON ("type" and "coordinates" only; a
 * Polygon's rings shell first, then holes; a MultiPolygon for several shells), coordinates
 * written with 2 decimals (GeneralTools.formatNumber(Locale.US, x, 2)), then "plane" if it
 * is not the default plane (never here) and "isEllipse": true for an ellipse ROI. Rings are
 * closed (JTS repeats the first point). Reading ROIs back is not needed by the scripts.
 */
public final class GsonTools {
    private static final Gson GSON = new GsonBuilder()
        .registerTypeHierarchyAdapter(ROI.class, new RoiAdapter())
        .create();

    private GsonTools() {
    }

    /** QuPath: public static Gson getInstance(). */
    public static Gson getInstance() {
        return GSON;
    }

    private static final class RoiAdapter extends TypeAdapter<ROI> {
        @Override
        public void write(JsonWriter out, ROI roi) throws IOException {
            out.beginObject();
            if (roi != null) {
                List<List<double[][]>> polygons = polygons(((ShapeROI) roi).rings());
                out.name("type").value(polygons.size() == 1 ? "Polygon" : "MultiPolygon");
                out.name("coordinates");
                if (polygons.size() != 1) {
                    out.beginArray();
                }
                for (List<double[][]> polygon : polygons) {
                    out.beginArray();
                    for (double[][] ring : polygon) {
                        out.beginArray();
                        for (int i = 0; i <= ring.length; i++) {
                            double[] p = ring[i % ring.length];
                            out.jsonValue("[" + format(p[0]) + ", " + format(p[1]) + "]");
                        }
                        out.endArray();
                    }
                    out.endArray();
                }
                if (polygons.size() != 1) {
                    out.endArray();
                }
                if ("Ellipse".equals(roi.getRoiName())) {
                    out.name("isEllipse").value(true);
                }
            }
            out.endObject();
        }

        @Override
        public ROI read(JsonReader in) throws IOException {
            throw new UnsupportedOperationException("the QuPath stand-in only writes ROIs");
        }
    }

    /** QuPath's GeneralTools.formatNumber(Locale.US, value, 2): a NumberFormat without
     * grouping and at most 2 fraction digits. */
    private static String format(double value) {
        NumberFormat nf = NumberFormat.getInstance(Locale.US);
        nf.setGroupingUsed(false);
        nf.setMaximumFractionDigits(2);
        return nf.format(value);
    }

    /** Rings (java.awt.geom.Area: shells and holes wound oppositely) as polygons, holes in their shell. */
    private static List<List<double[][]>> polygons(List<double[][]> rings) {
        List<List<double[][]>> shells = new ArrayList<>();
        List<double[][]> holes = new ArrayList<>();
        double sign = 0;
        for (double[][] ring : rings) {
            if (Math.abs(area(ring)) > Math.abs(sign)) {
                sign = area(ring);  // the largest ring is a shell: its winding marks shells
            }
        }
        for (double[][] ring : rings) {
            if (area(ring) * sign > 0) {
                List<double[][]> polygon = new ArrayList<>();
                polygon.add(ring);
                shells.add(polygon);
            } else {
                holes.add(ring);
            }
        }
        for (double[][] hole : holes) {
            for (List<double[][]> polygon : shells) {
                if (contains(polygon.get(0), hole[0][0], hole[0][1])) {
                    polygon.add(hole);
                    break;
                }
            }
        }
        return shells;
    }

    private static double area(double[][] ring) {
        double s = 0;
        for (int i = 0; i < ring.length; i++) {
            double[] a = ring[i];
            double[] b = ring[(i + 1) % ring.length];
            s += a[0] * b[1] - b[0] * a[1];
        }
        return s / 2;
    }

    private static boolean contains(double[][] ring, double x, double y) {
        boolean inside = false;
        for (int i = 0, j = ring.length - 1; i < ring.length; j = i++) {
            if ((ring[i][1] > y) != (ring[j][1] > y)
                && x < (ring[j][0] - ring[i][0]) * (y - ring[i][1]) / (ring[j][1] - ring[i][1]) + ring[i][0]) {
                inside = !inside;
            }
        }
        return inside;
    }
}
