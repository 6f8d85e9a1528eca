package qupath.lib.objects;

import qupath.lib.roi.interfaces.ROI;

/** Stand-in for qupath.lib.objects.TMACoreObject (QuPath v0.5/v0.6): a TMA core, maybe missing. */
public class TMACoreObject extends PathROIObject {
    private boolean missing;

    TMACoreObject(ROI roi, boolean missing) {
        super(roi);
        this.missing = missing;
    }

    /** QuPath: public boolean isMissing(). */
    public boolean isMissing() {
        return missing;
    }

    /** QuPath: public void setMissing(boolean missing). */
    public void setMissing(boolean missing) {
        this.missing = missing;
    }

    @Override
    public boolean isTMACore() {
        return true;
    }
}
