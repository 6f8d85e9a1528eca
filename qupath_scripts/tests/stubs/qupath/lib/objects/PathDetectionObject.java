package qupath.lib.objects;

import milsilstub.SimpleMeasurementList;
import qupath.lib.measurements.MeasurementList;
import qupath.lib.objects.classes.PathClass;
import qupath.lib.roi.interfaces.ROI;

/**
 * Stand-in for qupath.lib.objects.PathDetectionObject (QuPath v0.6.0,
 * qupath-core/src/main/java/qupath/lib/objects/PathDetectionObject.java); made by
 * PathObjects.createDetectionObject. The superclass of PathCellObject and PathTileObject, so
 * isDetection() is true for cells and tiles. Its own measurement list keeps float values
 * (createEmptyMeasurementList: MeasurementListType.FLOAT), so a value read back may differ
 * from the double put in.
 */
public class PathDetectionObject extends PathROIObject {
    PathDetectionObject(ROI roi, PathClass pathClass, MeasurementList measurements) {
        super(roi, pathClass, measurements);
    }

    /** QuPath: protected MeasurementList createEmptyMeasurementList() (FLOAT). */
    @Override
    protected MeasurementList createEmptyMeasurementList() {
        return new SimpleMeasurementList(true);
    }
}
