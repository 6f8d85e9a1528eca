package qupath.lib.roi;

import java.awt.Shape;
import java.awt.geom.Area;
import java.awt.geom.Ellipse2D;
import java.awt.geom.Path2D;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;

import qupath.lib.geom.Point2;
import qupath.lib.regions.ImagePlane;

/**
 * Stand-in for qupath.lib.roi.EllipseROI (QuPath v0.6.0,
 * qupath-core/src/main/java/qupath/lib/roi/EllipseROI.java and AbstractPathBoundedROI.java):
 * made by ROIs.createEllipseROI (TMA cores too) and by GeoJSON import with "isEllipse": true.
 * Name "Ellipse". Its geometry (for intersections, the hierarchy and GeoJSON) is QuPath's:
 * a 100-vertex polygon (see {@link #polygons()}); its area, contains and shape are the exact
 * ellipse's, as in QuPath.
 */
public class EllipseROI extends AbstractPathBoundedROI {
    EllipseROI(double x, double y, double width, double height, ImagePlane plane) {
        super("Ellipse", x, y, width, height, plane);
    }

    /** JTS GeometricShapeFactory's default number of points, which QuPath leaves as it is. */
    static final int GEOMETRY_POINTS = 100;

    /**
     * QuPath AbstractPathROI.getGeometry -> GeometryTools.GeometryConverter.areaToGeometry
     * (v0.6.0, qupath-core/src/main/java/qupath/lib/roi/GeometryTools.java): an EllipseROI
     * becomes JTS GeometricShapeFactory.createEllipse() in the bounds (JTS 1.20,
     * util/GeometricShapeFactory.java): 100 points at angles i * 2 pi / 100 from the centre,
     * x = cx + a cos, y = cy + b sin (Angle.cosSnap/sinSnap: |value| &lt; 5e-16 is 0), each made
     * precise on QuPath's 0.01 px grid; the ring closed by repeating the first point (101
     * coordinates in GeoJSON). Open here, as every stand-in ring.
     */
    @Override
    public List<List<double[][]>> polygons() {
        double a = (x2 - x) / 2.0;
        double b = (y2 - y) / 2.0;
        double cx = x + a;
        double cy = y + b;
        double[][] ring = new double[GEOMETRY_POINTS][];
        for (int i = 0; i < GEOMETRY_POINTS; i++) {
            double angle = i * (2 * Math.PI / GEOMETRY_POINTS);
            ring[i] = new double[] {snap(a * snapZero(Math.cos(angle)) + cx), snap(b * snapZero(Math.sin(angle)) + cy)};
        }
        List<double[][]> polygon = new ArrayList<>();
        polygon.add(ring);
        List<List<double[][]>> out = new ArrayList<>();
        out.add(polygon);
        return out;
    }

    private static double snapZero(double v) {
        return Math.abs(v) < 5e-16 ? 0.0 : v;
    }

    /** The 100-vertex geometry's area, for set operations and the hierarchy (QuPath uses the geometry there). */
    @Override
    public Area area() {
        Path2D.Double path = new Path2D.Double(Path2D.WIND_EVEN_ODD);
        double[][] ring = polygons().get(0).get(0);
        path.moveTo(ring[0][0], ring[0][1]);
        for (int i = 1; i < ring.length; i++) {
            path.lineTo(ring[i][0], ring[i][1]);
        }
        path.closePath();
        return new Area(path);
    }

    /** QuPath EllipseROI.getScaledArea: pi * a * b, exactly (not the flattened polygon's). */
    @Override
    public double getArea() {
        return Math.PI * (x2 - x) * 0.5 * (y2 - y) * 0.5;
    }

    /** QuPath EllipseROI.contains: (dx/a)^2 + (dy/b)^2 &lt;= 1 (the boundary is inside). */
    @Override
    public boolean contains(double px, double py) {
        double dx = px - getCentroidX();
        double dy = py - getCentroidY();
        double a = (x2 - x) * 0.5;
        double b = (y2 - y) * 0.5;
        return dx * dx / (a * a) + dy * dy / (b * b) <= 1;
    }

    /** QuPath EllipseROI.getAllPoints: the 4 points where the ellipse touches its bounds (top, right, bottom, left). */
    @Override
    public List<Point2> getAllPoints() {
        double cx = (x + x2) * 0.5;
        double cy = (y + y2) * 0.5;
        return Arrays.asList(new Point2(cx, y), new Point2(x2, cy), new Point2(cx, y2), new Point2(x, cy));
    }

    /** QuPath EllipseROI.getShape: an Ellipse2D. */
    @Override
    public Shape getShape() {
        return new Ellipse2D.Double(x, y, x2 - x, y2 - y);
    }
}
