package qupath.lib.objects;

import qupath.lib.measurements.MeasurementList;
import qupath.lib.objects.classes.PathClass;
import qupath.lib.roi.interfaces.ROI;

/**
 * Stand-in for qupath.lib.objects.PathAnnotationObject (QuPath v0.6.0,
 * qupath-core/src/main/java/qupath/lib/objects/PathAnnotationObject.java); made by
 * PathObjects.createAnnotationObject. Double-valued measurement list.
 */
public class PathAnnotationObject extends PathROIObject {
    PathAnnotationObject(ROI roi, PathClass pathClass, MeasurementList measurements) {
        super(roi, pathClass, measurements);
    }
}
