package qupath.lib.roi;

import java.awt.Shape;
import java.awt.geom.Rectangle2D;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;

import qupath.lib.geom.Point2;
import qupath.lib.regions.ImagePlane;

/**
 * Stand-in for qupath.lib.roi.RectangleROI (QuPath v0.6.0,
 * qupath-core/src/main/java/qupath/lib/roi/RectangleROI.java and AbstractPathBoundedROI.java):
 * made by ROIs.createRectangleROI, by RoiTools/GeoJSON import for axis-aligned rectangles, and
 * as the empty ROI (0 x 0). Name "Rectangle".
 */
public class RectangleROI extends AbstractPathBoundedROI {
    RectangleROI(double x, double y, double width, double height, ImagePlane plane) {
        super("Rectangle", x, y, width, height, plane);
    }

    @Override
    public List<List<double[][]>> polygons() {
        List<List<double[][]>> out = new ArrayList<>();
        if (!isEmpty()) {
            List<double[][]> polygon = new ArrayList<>();
            polygon.add(new double[][] {{x, y}, {x2, y}, {x2, y2}, {x, y2}});
            out.add(polygon);
        }
        return out;
    }

    /** QuPath RectangleROI.getScaledArea: width * height. */
    @Override
    public double getArea() {
        return (x2 - x) * (y2 - y);
    }

    /** QuPath RectangleROI.contains: half-open, x &lt;= px &lt; x2 and y &lt;= py &lt; y2. */
    @Override
    public boolean contains(double px, double py) {
        return px >= x && px < x2 && py >= y && py < y2;
    }

    /** QuPath RectangleROI.getAllPoints: the 4 corners, clockwise from the top left (not closed). */
    @Override
    public List<Point2> getAllPoints() {
        return Arrays.asList(new Point2(x, y), new Point2(x2, y), new Point2(x2, y2), new Point2(x, y2));
    }

    /** QuPath RectangleROI.getShape: a Rectangle2D. */
    @Override
    public Shape getShape() {
        return new Rectangle2D.Double(x, y, x2 - x, y2 - y);
    }
}
