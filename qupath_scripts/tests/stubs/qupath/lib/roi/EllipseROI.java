package qupath.lib.roi;

import java.awt.Shape;
import java.awt.geom.Area;
import java.awt.geom.Ellipse2D;
import java.util.Arrays;
import java.util.List;

import qupath.lib.geom.Point2;
import qupath.lib.regions.ImagePlane;

/**
 * Stand-in for qupath.lib.roi.EllipseROI (QuPath v0.6.0,
 * qupath-core/src/main/java/qupath/lib/roi/EllipseROI.java and AbstractPathBoundedROI.java):
 * made by ROIs.createEllipseROI (TMA cores too) and by GeoJSON import with "isEllipse": true.
 * Name "Ellipse". Its geometry (for intersections and GeoJSON) is the ellipse flattened to
 * 0.05 px.
 */
public class EllipseROI extends AbstractPathBoundedROI {
    EllipseROI(double x, double y, double width, double height, ImagePlane plane) {
        super("Ellipse", x, y, width, height, plane);
    }

    @Override
    public List<List<double[][]>> polygons() {
        return polygonsOf(ringsOf(new Area(getShape())));
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
