package qupath.lib.objects;

import java.util.ArrayList;
import java.util.Collection;
import java.util.Collections;
import java.util.List;

import milsilstub.SimpleMeasurementList;
import qupath.lib.measurements.MeasurementList;
import qupath.lib.objects.classes.PathClass;
import qupath.lib.roi.interfaces.ROI;

/** Stand-in for qupath.lib.objects.PathObject (QuPath v0.5/v0.6): the hierarchy's node type. */
public abstract class PathObject {
    private PathObject parent;
    private final List<PathObject> children = new ArrayList<>();
    private final MeasurementList measurements = new SimpleMeasurementList();
    private PathClass pathClass;
    private String name;
    private boolean locked;

    /** QuPath: public abstract ROI getROI(). */
    public abstract ROI getROI();

    /** QuPath: public PathObject getParent(). */
    public PathObject getParent() {
        return parent;
    }

    /** QuPath: public synchronized MeasurementList getMeasurementList(). */
    public synchronized MeasurementList getMeasurementList() {
        return measurements;
    }

    /** QuPath: public synchronized void addChildObject(PathObject pathObject). */
    public synchronized void addChildObject(PathObject pathObject) {
        if (pathObject.parent != null) {
            pathObject.parent.children.remove(pathObject);
        }
        pathObject.parent = this;
        children.add(pathObject);
    }

    /** QuPath: public synchronized void addChildObjects(Collection&lt;? extends PathObject&gt; pathObjects). */
    public synchronized void addChildObjects(Collection<? extends PathObject> pathObjects) {
        for (PathObject p : pathObjects) {
            addChildObject(p);
        }
    }

    /** QuPath: public Collection&lt;PathObject&gt; getChildObjects(). */
    public Collection<PathObject> getChildObjects() {
        return Collections.unmodifiableList(new ArrayList<>(children));
    }

    /** QuPath: public boolean hasChildObjects(). */
    public boolean hasChildObjects() {
        return !children.isEmpty();
    }

    /** QuPath: public PathClass getPathClass() (abstract there). */
    public PathClass getPathClass() {
        return pathClass;
    }

    /** QuPath: public void setPathClass(PathClass pathClass). */
    public void setPathClass(PathClass pathClass) {
        this.pathClass = pathClass;
    }

    /** QuPath: public String getName(). */
    public String getName() {
        return name;
    }

    /** QuPath: public void setName(String name). */
    public void setName(String name) {
        this.name = name;
    }

    /** QuPath: public boolean isLocked(). */
    public boolean isLocked() {
        return locked;
    }

    /** QuPath: public void setLocked(boolean locked). */
    public void setLocked(boolean locked) {
        this.locked = locked;
    }

    /** QuPath: public boolean isAnnotation() (and isTile/isTMACore/isDetection). */
    public boolean isAnnotation() {
        return false;
    }

    public boolean isTile() {
        return false;
    }

    public boolean isTMACore() {
        return false;
    }

    public boolean isDetection() {
        return false;
    }
}
