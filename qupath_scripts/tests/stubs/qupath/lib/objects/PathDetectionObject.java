package qupath.lib.objects;

import qupath.lib.roi.interfaces.ROI;

/** Stand-in for qupath.lib.objects.PathDetectionObject (QuPath v0.5/v0.6); made by PathObjects. */
public class PathDetectionObject extends PathROIObject {
    PathDetectionObject(ROI roi) {
        super(roi);
    }

    @Override
    public boolean isDetection() {
        return true;
    }
}
