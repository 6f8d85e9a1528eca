package qupath.lib.objects;

import qupath.lib.measurements.MeasurementList;
import qupath.lib.objects.classes.PathClass;
import qupath.lib.regions.ImagePlane;
import qupath.lib.roi.ROIs;
import qupath.lib.roi.interfaces.ROI;

/**
 * Stand-in for qupath.lib.objects.PathObjects (QuPath v0.6.0,
 * qupath-core/src/main/java/qupath/lib/objects/PathObjects.java): object factory methods. A
 * MeasurementList passed in becomes the object's own list (not a copy); null: an empty one
 * is made when first asked for. Annotation, detection and tile objects need a ROI
 * (IllegalArgumentException); QuPath does not check the cell ROI.
 */
public class PathObjects {
    private PathObjects() {
    }

    /** QuPath: public static PathObject createAnnotationObject(final ROI roi, final PathClass pathClass, final MeasurementList measurements). */
    public static PathObject createAnnotationObject(final ROI roi, final PathClass pathClass, final MeasurementList measurements) {
        if (roi == null) {
            throw new IllegalArgumentException("A ROI is required to create an annotation object!");
        }
        return new PathAnnotationObject(roi, pathClass, measurements);
    }

    /** QuPath: public static PathObject createAnnotationObject(final ROI roi, final PathClass pathClass). */
    public static PathObject createAnnotationObject(final ROI roi, final PathClass pathClass) {
        return createAnnotationObject(roi, pathClass, null);
    }

    /** QuPath: public static PathObject createAnnotationObject(final ROI roi). */
    public static PathObject createAnnotationObject(final ROI roi) {
        return createAnnotationObject(roi, null);
    }

    /** QuPath: public static PathObject createDetectionObject(final ROI roi, final PathClass pathClass, final MeasurementList measurements). */
    public static PathObject createDetectionObject(final ROI roi, final PathClass pathClass, final MeasurementList measurements) {
        if (roi == null) {
            throw new IllegalArgumentException("A ROI is required to create a detection object!");
        }
        return new PathDetectionObject(roi, pathClass, measurements);
    }

    /** QuPath: public static PathObject createDetectionObject(final ROI roi, final PathClass pathClass). */
    public static PathObject createDetectionObject(final ROI roi, final PathClass pathClass) {
        return createDetectionObject(roi, pathClass, null);
    }

    /** QuPath: public static PathObject createDetectionObject(final ROI roi). */
    public static PathObject createDetectionObject(final ROI roi) {
        return createDetectionObject(roi, null);
    }

    /** QuPath: public static PathObject createTileObject(final ROI roi, final PathClass pathClass, final MeasurementList measurements). */
    public static PathObject createTileObject(final ROI roi, final PathClass pathClass, final MeasurementList measurements) {
        if (roi == null) {
            throw new IllegalArgumentException("A ROI is required to create a detection object!");  // sic, QuPath v0.6.0
        }
        return new PathTileObject(roi, pathClass, measurements);
    }

    /** QuPath: public static PathObject createTileObject(final ROI roi, final PathClass pathClass). */
    public static PathObject createTileObject(final ROI roi, final PathClass pathClass) {
        return createTileObject(roi, pathClass, null);
    }

    /** QuPath: public static PathObject createTileObject(final ROI roi). */
    public static PathObject createTileObject(final ROI roi) {
        return createTileObject(roi, null);
    }

    /**
     * QuPath: public static PathObject createCellObject(final ROI roiCell, final ROI roiNucleus,
     * final PathClass pathClass, final MeasurementList measurements): a PathCellObject whose
     * getROI() is roiCell and getNucleusROI() is roiNucleus (may be null).
     */
    public static PathObject createCellObject(final ROI roiCell, final ROI roiNucleus, final PathClass pathClass, final MeasurementList measurements) {
        return new PathCellObject(roiCell, roiNucleus, pathClass, measurements);
    }

    /** QuPath: public static PathObject createCellObject(final ROI roiCell, final ROI roiNucleus, final PathClass pathClass). */
    public static PathObject createCellObject(final ROI roiCell, final ROI roiNucleus, final PathClass pathClass) {
        return createCellObject(roiCell, roiNucleus, pathClass, null);
    }

    /** QuPath: public static PathObject createCellObject(final ROI roiCell, final ROI roiNucleus). */
    public static PathObject createCellObject(final ROI roiCell, final ROI roiNucleus) {
        return createCellObject(roiCell, roiNucleus, null);
    }

    /** QuPath: public static TMACoreObject createTMACoreObject(double x, double y, double width, double height, boolean isMissing) (an ellipse ROI). */
    public static TMACoreObject createTMACoreObject(double x, double y, double width, double height, boolean isMissing) {
        return createTMACoreObject(x, y, width, height, isMissing, ImagePlane.getDefaultPlane());
    }

    /** QuPath: public static TMACoreObject createTMACoreObject(double x, double y, double width, double height, boolean isMissing, ImagePlane plane). */
    public static TMACoreObject createTMACoreObject(double x, double y, double width, double height, boolean isMissing, ImagePlane plane) {
        return new TMACoreObject(ROIs.createEllipseROI(x, y, width, height, plane), isMissing);
    }

    /** QuPath: public static TMACoreObject createTMACoreObject(double xCenter, double yCenter, double diameter, boolean isMissing). */
    public static TMACoreObject createTMACoreObject(double xCenter, double yCenter, double diameter, boolean isMissing) {
        return createTMACoreObject(xCenter - diameter / 2, yCenter - diameter / 2, diameter, diameter, isMissing);
    }
}
