package qupath.lib.objects;

import qupath.lib.objects.classes.PathClass;
import qupath.lib.regions.ImagePlane;
import qupath.lib.roi.ROIs;
import qupath.lib.roi.interfaces.ROI;

/** Stand-in for qupath.lib.objects.PathObjects (QuPath v0.5/v0.6): object factory methods. */
public class PathObjects {
    private PathObjects() {
    }

    /** QuPath: public static PathObject createAnnotationObject(final ROI roi, final PathClass pathClass). */
    public static PathObject createAnnotationObject(final ROI roi, final PathClass pathClass) {
        PathObject o = new PathAnnotationObject(roi);
        o.setPathClass(pathClass);
        return o;
    }

    /** QuPath: public static PathObject createAnnotationObject(final ROI roi). */
    public static PathObject createAnnotationObject(final ROI roi) {
        return createAnnotationObject(roi, null);
    }

    /** QuPath: public static PathObject createTileObject(final ROI roi, final PathClass pathClass). */
    public static PathObject createTileObject(final ROI roi, final PathClass pathClass) {
        PathObject o = new PathTileObject(roi);
        o.setPathClass(pathClass);
        return o;
    }

    /** QuPath: public static PathObject createTileObject(final ROI roi). */
    public static PathObject createTileObject(final ROI roi) {
        return createTileObject(roi, null);
    }

    /** QuPath: public static PathObject createDetectionObject(final ROI roi, final PathClass pathClass). */
    public static PathObject createDetectionObject(final ROI roi, final PathClass pathClass) {
        PathObject o = new PathDetectionObject(roi);
        o.setPathClass(pathClass);
        return o;
    }

    /** QuPath: public static TMACoreObject createTMACoreObject(double x, double y, double width, double height, boolean isMissing). */
    public static TMACoreObject createTMACoreObject(double x, double y, double width, double height, boolean isMissing) {
        return new TMACoreObject(ROIs.createEllipseROI(x, y, width, height, ImagePlane.getDefaultPlane()), isMissing);
    }
}
