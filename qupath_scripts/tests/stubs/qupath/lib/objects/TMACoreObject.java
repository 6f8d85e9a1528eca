package qupath.lib.objects;

import qupath.lib.roi.interfaces.ROI;

/**
 * Stand-in for qupath.lib.objects.TMACoreObject (QuPath v0.6.0,
 * qupath-core/src/main/java/qupath/lib/objects/TMACoreObject.java): a TMA core (an ellipse
 * ROI), maybe missing; made by PathObjects.createTMACoreObject.
 */
public class TMACoreObject extends PathROIObject {
    private boolean missing;

    TMACoreObject(ROI roi, boolean missing) {
        super(roi, null, null);
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
}
