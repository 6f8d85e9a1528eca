package qupath.lib.roi;

import java.util.ArrayList;
import java.util.List;

import qupath.lib.geom.Point2;
import qupath.lib.regions.ImagePlane;
import qupath.lib.roi.interfaces.ROI;

/**
 * Stand-in for qupath.lib.roi.ROIs (QuPath v0.6.0, qupath-core/src/main/java/qupath/lib/roi/ROIs.java):
 * the area ROI factory methods. Each returns the QuPath type (RectangleROI, EllipseROI,
 * PolygonROI); createEmptyROI is a 0 x 0 rectangle at the origin, as in QuPath.
 */
public class ROIs {
    private ROIs() {
    }

    /** QuPath: public static ROI createEmptyROI() (createRectangleROI(0, 0, 0, 0, default plane)). */
    public static ROI createEmptyROI() {
        return createRectangleROI(0, 0, 0, 0, ImagePlane.getDefaultPlane());
    }

    /** QuPath: public static ROI createRectangleROI(double x, double y, double width, double height, ImagePlane plane). */
    public static ROI createRectangleROI(double x, double y, double width, double height, ImagePlane plane) {
        return new RectangleROI(x, y, width, height, plane);
    }

    /** QuPath: public static ROI createRectangleROI(double x, double y, double width, double height) (default plane). */
    public static ROI createRectangleROI(double x, double y, double width, double height) {
        return createRectangleROI(x, y, width, height, ImagePlane.getDefaultPlane());
    }

    /** QuPath: public static ROI createEllipseROI(double x, double y, double width, double height, ImagePlane plane). */
    public static ROI createEllipseROI(double x, double y, double width, double height, ImagePlane plane) {
        return new EllipseROI(x, y, width, height, plane);
    }

    /** QuPath: public static ROI createEllipseROI(double x, double y, double width, double height) (default plane). */
    public static ROI createEllipseROI(double x, double y, double width, double height) {
        return createEllipseROI(x, y, width, height, ImagePlane.getDefaultPlane());
    }

    /** QuPath: public static PolygonROI createPolygonROI(List&lt;? extends Point2&gt; points, ImagePlane plane). */
    public static PolygonROI createPolygonROI(List<? extends Point2> points, ImagePlane plane) {
        return new PolygonROI(points, plane);
    }

    /** QuPath: public static ROI createPolygonROI(double[] x, double[] y, ImagePlane plane) (lengths must match). */
    public static ROI createPolygonROI(double[] x, double[] y, ImagePlane plane) {
        if (x.length != y.length) {
            throw new IllegalArgumentException("Arrays have different lengths!");
        }
        List<Point2> points = new ArrayList<>();
        for (int i = 0; i < x.length; i++) {
            points.add(new Point2(x[i], y[i]));
        }
        return createPolygonROI(points, plane);
    }

    /** QuPath: public static ROI createPolygonROI(double[] x, double[] y) (default plane). */
    public static ROI createPolygonROI(double[] x, double[] y) {
        return createPolygonROI(x, y, ImagePlane.getDefaultPlane());
    }
}
