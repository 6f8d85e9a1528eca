package qupath.lib.objects;

import qupath.lib.roi.interfaces.ROI;

/** Stand-in for qupath.lib.objects.PathAnnotationObject (QuPath v0.5/v0.6); made by PathObjects. */
public class PathAnnotationObject extends PathROIObject {
    PathAnnotationObject(ROI roi) {
        super(roi);
    }

    @Override
    public boolean isAnnotation() {
        return true;
    }
}
