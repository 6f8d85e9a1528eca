package qupath.lib.roi;

import milsilstub.ShapeROI;
import qupath.lib.regions.ImagePlane;

/**
 * Stand-in for qupath.lib.roi.AbstractPathBoundedROI (QuPath v0.6.0,
 * qupath-core/src/main/java/qupath/lib/roi/AbstractPathBoundedROI.java): the common base of
 * the rectangle and ellipse ROIs, held as their bounds (x, y, x2, y2).
 */
abstract class AbstractPathBoundedROI extends ShapeROI {
    protected final double x;
    protected final double y;
    protected final double x2;
    protected final double y2;

    AbstractPathBoundedROI(String name, double x, double y, double width, double height, ImagePlane plane) {
        super(name, plane);
        this.x = x;
        this.y = y;
        this.x2 = x + width;
        this.y2 = y + height;
    }

    @Override
    public double getBoundsX() {
        return x;
    }

    @Override
    public double getBoundsY() {
        return y;
    }

    @Override
    public double getBoundsWidth() {
        return x2 - x;
    }

    @Override
    public double getBoundsHeight() {
        return y2 - y;
    }

    /** QuPath AbstractPathBoundedROI.getCentroidX: the middle of the bounds. */
    @Override
    public double getCentroidX() {
        return (x + x2) * 0.5;
    }

    /** QuPath AbstractPathBoundedROI.getCentroidY: the middle of the bounds. */
    @Override
    public double getCentroidY() {
        return (y + y2) * 0.5;
    }

    /** QuPath AbstractPathBoundedROI.isEmpty: zero width or height. */
    @Override
    public boolean isEmpty() {
        return x == x2 || y == y2;
    }

    /** QuPath RectangleROI/EllipseROI.getNumPoints: 4. */
    @Override
    public int getNumPoints() {
        return 4;
    }
}
