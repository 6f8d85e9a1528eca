package qupath.lib.roi.interfaces;

import java.awt.Shape;
import java.util.List;

import qupath.lib.geom.Point2;
import qupath.lib.regions.ImagePlane;

/**
 * Stand-in for qupath.lib.roi.interfaces.ROI (QuPath v0.6.0,
 * qupath-core/src/main/java/qupath/lib/roi/interfaces/ROI.java). Level-0 pixel coordinates.
 * Only area ROIs exist here (RectangleROI, EllipseROI, PolygonROI, GeometryROI in
 * qupath.lib.roi): what each method returns for each type is documented on those classes.
 * Not here: line/point ROIs, translate/scale, getConvexHull, getLength.
 */
public interface ROI {
    /** QuPath ROI.RoiType: AREA, LINE or POINT. */
    enum RoiType {
        AREA,
        LINE,
        POINT
    }

    /** QuPath: String getRoiName() ("Rectangle", "Ellipse", "Polygon", "Geometry"). */
    String getRoiName();

    /** QuPath: ImagePlane getImagePlane(). */
    ImagePlane getImagePlane();

    /** QuPath: int getC() (the plane's channel; -1 on the default plane). */
    default int getC() {
        return getImagePlane().getC();
    }

    /** QuPath: int getZ(). */
    default int getZ() {
        return getImagePlane().getZ();
    }

    /** QuPath: int getT(). */
    default int getT() {
        return getImagePlane().getT();
    }

    /** QuPath: double getBoundsX(). */
    double getBoundsX();

    /** QuPath: double getBoundsY(). */
    double getBoundsY();

    /** QuPath: double getBoundsWidth(). */
    double getBoundsWidth();

    /** QuPath: double getBoundsHeight(). */
    double getBoundsHeight();

    /** QuPath: double getCentroidX() (bounds centre of a rectangle/ellipse, area centroid otherwise). */
    double getCentroidX();

    /** QuPath: double getCentroidY(). */
    double getCentroidY();

    /** QuPath: List&lt;Point2&gt; getAllPoints() (the vertices; see each ROI type). */
    List<Point2> getAllPoints();

    /** QuPath: int getNumPoints(). */
    int getNumPoints();

    /** QuPath: Shape getShape(). */
    Shape getShape();

    /**
     * QuPath: Geometry getGeometry(), a JTS org.locationtech.jts.geom.Geometry. JTS is not on
     * the tests' class path, so this stand-in declares Object: with JTS (Debian libjts-java)
     * on the class path it returns a real JTS Geometry (scripts calling its methods work),
     * without it it throws UnsupportedOperationException naming the jar.
     */
    Object getGeometry();

    /** QuPath: RoiType getRoiType() (AREA for every ROI here). */
    default RoiType getRoiType() {
        return RoiType.AREA;
    }

    /** QuPath: boolean isArea(). */
    default boolean isArea() {
        return getRoiType() == RoiType.AREA;
    }

    /** QuPath: boolean isLine(). */
    default boolean isLine() {
        return getRoiType() == RoiType.LINE;
    }

    /** QuPath: boolean isPoint(). */
    default boolean isPoint() {
        return getRoiType() == RoiType.POINT;
    }

    /** QuPath: double getArea() (square pixels). */
    double getArea();

    /** QuPath: double getScaledArea(double pixelWidth, double pixelHeight). */
    double getScaledArea(double pixelWidth, double pixelHeight);

    /** QuPath: boolean contains(double x, double y) (boundary rules differ by type, see each class). */
    boolean contains(double x, double y);

    /** QuPath: boolean isEmpty(). */
    boolean isEmpty();
}
