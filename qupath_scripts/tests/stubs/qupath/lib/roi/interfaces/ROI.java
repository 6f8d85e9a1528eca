package qupath.lib.roi.interfaces;

import java.awt.Shape;

import qupath.lib.regions.ImagePlane;

/**
 * Stand-in for qupath.lib.roi.interfaces.ROI (QuPath v0.5/v0.6). Level-0 pixel coordinates.
 * getGeometry() (a JTS Geometry) is left out: the scripts do not call it.
 */
public interface ROI {
    /** QuPath: String getRoiName() ("Rectangle", "Polygon", "Geometry", ...). */
    String getRoiName();

    /** QuPath: ImagePlane getImagePlane(). */
    ImagePlane getImagePlane();

    /** QuPath: double getBoundsX(). */
    double getBoundsX();

    /** QuPath: double getBoundsY(). */
    double getBoundsY();

    /** QuPath: double getBoundsWidth(). */
    double getBoundsWidth();

    /** QuPath: double getBoundsHeight(). */
    double getBoundsHeight();

    /** QuPath: double getCentroidX(). */
    double getCentroidX();

    /** QuPath: double getCentroidY(). */
    double getCentroidY();

    /** QuPath: Shape getShape(). */
    Shape getShape();

    /** QuPath: boolean isArea(). */
    boolean isArea();

    /** QuPath: double getArea(). */
    double getArea();

    /** QuPath: boolean contains(double x, double y). */
    boolean contains(double x, double y);

    /** QuPath: boolean isEmpty(). */
    boolean isEmpty();
}
