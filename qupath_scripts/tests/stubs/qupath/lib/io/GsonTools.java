package qupath.lib.io;

import java.io.IOException;
import java.text.NumberFormat;
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
 * Stand-in for qupath.lib.io.GsonTools (QuPath v0.6.0,
 * qupath-core/src/main/java/qupath/lib/io/GsonTools.java and ROITypeAdapters.java): only
 * getInstance(), whose Gson
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
                List<List<double[][]>> polygons = ((ShapeROI) roi).polygons();
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

    /** QuPath's GeneralTools.formatNumber(Locale.US, value, 2): a NumberFormat without
     * grouping and at most 2 fraction digits. */
    private static String format(double value) {
        NumberFormat nf = NumberFormat.getInstance(Locale.US);
        nf.setGroupingUsed(false);
        nf.setMaximumFractionDigits(2);
        return nf.format(value);
    }

}
