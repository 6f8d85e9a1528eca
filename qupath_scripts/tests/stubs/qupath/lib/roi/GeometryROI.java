package qupath.lib.roi;

import java.util.ArrayList;
import java.util.List;

import milsilstub.ShapeROI;
import qupath.lib.regions.ImagePlane;

/**
 * Stand-in for qupath.lib.roi.GeometryROI (QuPath v0.6.0,
 * qupath-core/src/main/java/qupath/lib/roi/GeometryROI.java): several polygons, or a polygon
 * with holes, as GeometryTools.geometryToROI makes them (RoiTools results, GeoJSON import).
 * Name "Geometry". Bounds, centroid (area-weighted), area, contains (boundary inside) and
 * getAllPoints (every ring closed) are ShapeROI's, which follow this class.
 */
public class GeometryROI extends ShapeROI {
    private final List<List<double[][]>> polygons;

    /** Not QuPath API (there it takes a JTS Geometry): polygons as rings, shell first, open. */
    public GeometryROI(List<List<double[][]>> polygons, ImagePlane plane) {
        super("Geometry", plane);
        this.polygons = new ArrayList<>(polygons);
    }

    @Override
    public List<List<double[][]>> polygons() {
        return new ArrayList<>(polygons);
    }
}
