package qupath.lib.objects;

import qupath.lib.roi.interfaces.ROI;

/** Stand-in for qupath.lib.objects.PathRootObject: the hierarchy's root (no ROI). */
public class PathRootObject extends PathObject {
    @Override
    public ROI getROI() {
        return null;
    }
}
