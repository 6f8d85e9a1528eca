package qupath.lib.objects;

import qupath.lib.measurements.MeasurementList;
import qupath.lib.objects.classes.PathClass;
import qupath.lib.roi.interfaces.ROI;

/**
 * Stand-in for qupath.lib.objects.PathTileObject (QuPath v0.6.0,
 * qupath-core/src/main/java/qupath/lib/objects/PathTileObject.java): a detection subclass
 * (isTile() and isDetection() both true; float-valued measurements); made by
 * PathObjects.createTileObject.
 */
public class PathTileObject extends PathDetectionObject {
    PathTileObject(ROI roi, PathClass pathClass, MeasurementList measurements) {
        super(roi, pathClass, measurements);
    }
}
