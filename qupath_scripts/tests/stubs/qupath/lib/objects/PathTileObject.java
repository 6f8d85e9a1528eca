package qupath.lib.objects;

import qupath.lib.roi.interfaces.ROI;

/** Stand-in for qupath.lib.objects.PathTileObject (QuPath v0.5/v0.6); made by PathObjects. */
public class PathTileObject extends PathROIObject {
    PathTileObject(ROI roi) {
        super(roi);
    }

    @Override
    public boolean isTile() {
        return true;
    }
}
