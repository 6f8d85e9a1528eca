package qupath.lib.objects;

import qupath.lib.measurements.MeasurementList;
import qupath.lib.objects.classes.PathClass;
import qupath.lib.roi.interfaces.ROI;

/**
 * Stand-in for qupath.lib.objects.PathROIObject (QuPath v0.6.0,
 * qupath-core/src/main/java/qupath/lib/objects/PathROIObject.java): an object with a ROI, a
 * classification and a locked flag.
 */
public abstract class PathROIObject extends PathObject {
    private ROI roi;
    private PathClass pathClass;
    private double classProbability = Double.NaN;
    private boolean locked;

    PathROIObject(ROI roi, PathClass pathClass, MeasurementList measurements) {
        super(measurements);
        this.roi = roi;
        setPathClass(pathClass);
    }

    /**
     * QuPath: public void setROI(final ROI roi). A null ROI is an IllegalArgumentException. A
     * different ROI object (even an equal one) replaces the old one and CLEARS the measurement
     * list, if it has any; setting the same object again changes nothing. So: set
     * measurements after the ROI.
     */
    public void setROI(final ROI roi) {
        if (roi == null) {
            throw new IllegalArgumentException("PathROIObject.setROI cannot be called with null!");
        }
        if (this.roi != roi) {
            this.roi = roi;
            if (hasMeasurements()) {
                getMeasurementList().clear();
            }
        }
    }

    @Override
    public ROI getROI() {
        return roi;
    }

    @Override
    public PathClass getPathClass() {
        return pathClass;
    }

    /**
     * QuPath: public void setPathClass(PathClass pathClass, double classProbability):
     * NULL_CLASS (and any invalid class) is stored as null; setting a class clears the object's
     * own colour (so the class's colour shows).
     */
    @Override
    public void setPathClass(PathClass pathClass, double classProbability) {
        if (pathClass != null && (pathClass == PathClass.NULL_CLASS || !pathClass.isValid())) {
            pathClass = null;
        }
        this.pathClass = pathClass;
        this.classProbability = classProbability;
        if (pathClass != null && getColor() != null) {
            setColor(null);
        }
    }

    @Override
    public double getClassProbability() {
        return classProbability;
    }

    /** QuPath: public boolean isLocked() (false until setLocked(true)). */
    @Override
    public boolean isLocked() {
        return locked;
    }

    /** QuPath: public void setLocked(final boolean locked). */
    @Override
    public void setLocked(final boolean locked) {
        this.locked = locked;
    }
}
