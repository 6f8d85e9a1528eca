package qupath.lib.roi;

import java.awt.geom.Ellipse2D;
import java.awt.geom.Path2D;
import java.awt.geom.Rectangle2D;

import milsilstub.ShapeROI;
import qupath.lib.regions.ImagePlane;
import qupath.lib.roi.interfaces.ROI;

/** Stand-in for qupath.lib.roi.ROIs (QuPath v0.5/v0.6): ROI factory methods. */
public class ROIs {
    private ROIs() {
    }

    /** QuPath: public static ROI createRectangleROI(double x, double y, double width, double height, ImagePlane plane). */
    public static ROI createRectangleROI(double x, double y, double width, double height, ImagePlane plane) {
        return new ShapeROI(new Rectangle2D.Double(x, y, width, height), "Rectangle");
    }

    /** QuPath: public static ROI createEllipseROI(double x, double y, double width, double height, ImagePlane plane). */
    public static ROI createEllipseROI(double x, double y, double width, double height, ImagePlane plane) {
        return new ShapeROI(new Ellipse2D.Double(x, y, width, height), "Ellipse");
    }

    /** QuPath: public static ROI createPolygonROI(double[] x, double[] y, ImagePlane plane). */
    public static ROI createPolygonROI(double[] x, double[] y, ImagePlane plane) {
        Path2D.Double path = new Path2D.Double();
        for (int i = 0; i < x.length; i++) {
            if (i == 0) {
                path.moveTo(x[i], y[i]);
            } else {
                path.lineTo(x[i], y[i]);
            }
        }
        path.closePath();
        return new ShapeROI(path, "Polygon");
    }
}
