package qupath.lib.objects;

import qupath.lib.roi.interfaces.ROI;

/** Stand-in for qupath.lib.objects.PathROIObject (QuPath v0.5/v0.6): an object with a settable ROI. */
public abstract class PathROIObject extends PathObject {
    private ROI roi;

    protected PathROIObject(ROI roi) {
        this.roi = roi;
    }

    /** QuPath: public void setROI(final ROI roi). */
    public void setROI(final ROI roi) {
        this.roi = roi;
    }

    @Override
    public ROI getROI() {
        return roi;
    }
}
