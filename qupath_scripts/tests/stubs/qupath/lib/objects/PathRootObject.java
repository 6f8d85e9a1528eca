package qupath.lib.objects;

import qupath.lib.objects.classes.PathClass;
import qupath.lib.roi.interfaces.ROI;

/**
 * Stand-in for qupath.lib.objects.PathRootObject (QuPath v0.6.0,
 * qupath-core/src/main/java/qupath/lib/objects/PathRootObject.java): the hierarchy's root,
 * without a ROI; its class is StandardPathClasses.IMAGE_ROOT ("Image", grey) and cannot be
 * changed; locked as PathObject's default says (isLocked() true, unlocking throws).
 */
public class PathRootObject extends PathObject {
    public PathRootObject() {
        super();
    }

    @Override
    public ROI getROI() {
        return null;
    }

    @Override
    public PathClass getPathClass() {
        return PathClass.getInstance("Image", 0xff808080);
    }

    /** QuPath: a class cannot be set on the root (ignored with a warning). */
    @Override
    public void setPathClass(PathClass pathClass, double classProbability) {
        if (pathClass != getPathClass()) {
            System.err.println("The root object cannot be classified: ignored");
        }
    }

    @Override
    public double getClassProbability() {
        return Double.NaN;
    }
}
