package qupath.lib.io;

import java.io.IOException;
import java.text.NumberFormat;
import java.util.ArrayList;
import java.util.Comparator;
import java.util.List;
import java.util.Locale;

import com.google.gson.Gson;
import com.google.gson.GsonBuilder;
import com.google.gson.TypeAdapter;
import com.google.gson.stream.JsonReader;
import com.google.gson.stream.JsonWriter;

import milsilstub.ShapeROI;
import qupath.lib.roi.GeometryROI;
import qupath.lib.roi.interfaces.ROI;

/**
 * Stand-in for qupath.lib.io.GsonTools (QuPath v0.6.0,
 * qupath-core/src/main/java/qupath/lib/io/GsonTools.java and ROITypeAdapters.java): only
 * getInstance(), whose Gson
 * writes a ROI the way QuPath's qupath.lib.io.ROITypeAdapters.ROITypeAdapter.write does:
 * one object with the ROI's JTS geometry as GeoJSON ("type" and "coordinates" only; a
 * Polygon's rings shell first, then holes; a MultiPolygon for several shells), coordinates
 * written with 2 decimals (GeneralTools.formatNumber(Locale.US, x, 2)), then "plane" if it
 * is not the default plane (never here) and "isEllipse": true for an ellipse ROI. Rings are
 * closed (JTS repeats the first point) and oriented as JTS orients them (see
 * {@link #normalized}). Reading ROIs back is not needed by the scripts.
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
                List<List<double[][]>> polygons = normalized(((ShapeROI) roi).polygons(), !(roi instanceof GeometryROI));
                out.name("type").value(polygons.size() > 1 ? "MultiPolygon" : "Polygon");
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

    /**
     * The rings as QuPath's ROI.getGeometry() holds them (v0.6.0). A Rectangle, Ellipse or
     * Polygon ROI's geometry is GeometryTools.GeometryConverter.roiToGeometry(roi).norm()
     * (qupath-core/src/main/java/qupath/lib/roi/GeometryTools.java: "since v0.6.0 this returns
     * a normalized geometry"): JTS Polygon.normalize (JTS 1.20, geom/Polygon.java) starts each
     * ring at its smallest coordinate (x, then y), turns the shell clockwise and the holes
     * counter-clockwise (JTS Orientation.isCCW: a positive shoelace sum of x_i y_(i+1) -
     * x_(i+1) y_i is counter-clockwise), sorts the holes, and a MultiPolygon's polygons
     * (GeometryCollection.normalize: Arrays.sort, ring by ring, coordinate by coordinate). A
     * GeometryROI keeps the geometry it was made with (GeometryROI.getGeometry), which QuPath
     * gets from JTS overlay or GeometryPrecisionReducer: shells clockwise, holes
     * counter-clockwise, start and order as they come (`scroll` false).
     */
    static List<List<double[][]>> normalized(List<List<double[][]>> polygons, boolean scroll) {
        Comparator<double[][]> byCoordinates = GsonTools::compareRings;
        List<List<double[][]>> out = new ArrayList<>();
        for (List<double[][]> polygon : polygons) {
            List<double[][]> rings = new ArrayList<>();
            for (int i = 0; i < polygon.size(); i++) {
                rings.add(oriented(polygon.get(i), i == 0, scroll));
            }
            if (scroll && rings.size() > 2) {
                rings.subList(1, rings.size()).sort(byCoordinates);
            }
            out.add(rings);
        }
        if (scroll) {
            out.sort((p, q) -> compareRings(p.get(0), q.get(0)));
        }
        return out;
    }

    /** One open ring clockwise (a shell) or counter-clockwise, from its smallest coordinate if `scroll`. */
    private static double[][] oriented(double[][] ring, boolean clockwise, boolean scroll) {
        int n = ring.length;
        int start = 0;
        for (int i = 1; scroll && i < n; i++) {
            if (compare(ring[i], ring[start]) < 0) {
                start = i;
            }
        }
        boolean reverse = (ShapeROI.signedArea(ring) > 0) == clockwise;  // positive: counter-clockwise
        double[][] out = new double[n][];
        for (int i = 0; i < n; i++) {
            out[i] = ring[Math.floorMod(reverse ? start - i : start + i, n)];
        }
        return out;
    }

    private static int compare(double[] p, double[] q) {
        int c = Double.compare(p[0], q[0]);
        return c != 0 ? c : Double.compare(p[1], q[1]);
    }

    /** JTS LineString.compareToSameClass: coordinate by coordinate, then the shorter first. */
    private static int compareRings(double[][] a, double[][] b) {
        for (int i = 0; i < Math.min(a.length, b.length); i++) {
            int c = compare(a[i], b[i]);
            if (c != 0) {
                return c;
            }
        }
        return Integer.compare(a.length, b.length);
    }

    /** QuPath's GeneralTools.formatNumber(Locale.US, value, 2): a NumberFormat without
     * grouping and at most 2 fraction digits. */
    private static String format(double value) {
        NumberFormat nf = NumberFormat.getInstance(Locale.US);
        nf.setGroupingUsed(false);
        nf.setMaximumFractionDigits(2);
        return nf.format(value);
    }

}
