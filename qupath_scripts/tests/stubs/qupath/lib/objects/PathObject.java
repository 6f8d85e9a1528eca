package qupath.lib.objects;

import java.util.ArrayList;
import java.util.Collection;
import java.util.Collections;
import java.util.LinkedHashSet;
import java.util.Map;
import java.util.Set;
import java.util.UUID;

import milsilstub.SimpleMeasurementList;
import qupath.lib.measurements.MeasurementList;
import qupath.lib.objects.classes.PathClass;
import qupath.lib.roi.interfaces.ROI;

/**
 * Stand-in for qupath.lib.objects.PathObject (QuPath v0.6.0,
 * qupath-core/src/main/java/qupath/lib/objects/PathObject.java): the hierarchy's node type.
 * Classification, ROI and locking live in the subclasses, as in QuPath (PathROIObject,
 * PathRootObject).
 */
public abstract class PathObject {
    private PathObject parent;
    /** QuPath: a synchronized LinkedHashSet; getChildObjects() is a live unmodifiable view of it. */
    private final Set<PathObject> children = Collections.synchronizedSet(new LinkedHashSet<PathObject>());
    private final Collection<PathObject> childrenView = Collections.unmodifiableCollection(children);
    private MeasurementList measurements;
    private String name;
    private Integer color;
    private UUID id = UUID.randomUUID();

    /** QuPath: public PathObject() (the measurement list is made when first asked for). */
    protected PathObject() {
    }

    /** QuPath: public PathObject(MeasurementList measurements) (that very list; null: made when first asked for). */
    protected PathObject(MeasurementList measurements) {
        this.measurements = measurements;
    }

    /** QuPath: public abstract ROI getROI(). */
    public abstract ROI getROI();

    /** QuPath: public boolean hasROI(). */
    public boolean hasROI() {
        return getROI() != null;
    }

    /** QuPath: public PathObject getParent(). */
    public PathObject getParent() {
        return parent;
    }

    /** QuPath: public int getLevel() (0 without a parent, else the parent's level + 1). */
    public int getLevel() {
        return parent == null ? 0 : parent.getLevel() + 1;
    }

    /** QuPath: public boolean isRootObject(). */
    public boolean isRootObject() {
        return this instanceof PathRootObject;
    }

    /** QuPath: public synchronized MeasurementList getMeasurementList() (made by createEmptyMeasurementList when first asked for). */
    public synchronized MeasurementList getMeasurementList() {
        if (measurements == null) {
            measurements = createEmptyMeasurementList();
        }
        return measurements;
    }

    /** QuPath: protected MeasurementList createEmptyMeasurementList() (GENERAL: double values). */
    protected MeasurementList createEmptyMeasurementList() {
        return new SimpleMeasurementList(false);
    }

    /**
     * QuPath: public Map&lt;String, Number&gt; getMeasurements(): a live map view of the
     * measurement list (getMeasurementList().asMap()); a missing name gives null.
     */
    public Map<String, Number> getMeasurements() {
        return getMeasurementList().asMap();
    }

    /** QuPath: public boolean hasMeasurements() (a non-empty list). */
    public boolean hasMeasurements() {
        return measurements != null && !measurements.isEmpty();
    }

    /** QuPath: public synchronized void addChildObject(PathObject pathObject) (moved from any previous parent; the root cannot be a child). */
    public synchronized void addChildObject(PathObject pathObject) {
        if (pathObject instanceof PathRootObject) {
            throw new IllegalArgumentException("PathRootObject cannot be added as child to another PathObject");
        }
        if (pathObject.parent != this) {
            if (pathObject.parent != null) {
                pathObject.parent.children.remove(pathObject);
            }
            pathObject.parent = this;
        }
        children.add(pathObject);
    }

    /** QuPath: public synchronized void addChildObjects(Collection&lt;? extends PathObject&gt; pathObjects). */
    public synchronized void addChildObjects(Collection<? extends PathObject> pathObjects) {
        for (PathObject p : new ArrayList<>(pathObjects)) {
            addChildObject(p);
        }
    }

    /** QuPath: public void removeChildObject(PathObject pathObject). */
    public void removeChildObject(PathObject pathObject) {
        if (pathObject.parent == this) {
            pathObject.parent = null;
        }
        children.remove(pathObject);
    }

    /** QuPath: public synchronized void removeChildObjects(Collection&lt;PathObject&gt; pathObjects). */
    public synchronized void removeChildObjects(Collection<PathObject> pathObjects) {
        for (PathObject p : new ArrayList<>(pathObjects)) {
            removeChildObject(p);
        }
    }

    /** QuPath: public void clearChildObjects(). */
    public void clearChildObjects() {
        synchronized (children) {
            for (PathObject p : children) {
                if (p.parent == this) {
                    p.parent = null;
                }
            }
            children.clear();
        }
    }

    /**
     * QuPath: public Collection&lt;PathObject&gt; getChildObjects(): an unmodifiable LIVE view (adding
     * children while iterating it throws ConcurrentModificationException, as in QuPath; copy it
     * first, or use getChildObjectsAsArray()).
     */
    public Collection<PathObject> getChildObjects() {
        return hasChildObjects() ? childrenView : Collections.<PathObject>emptyList();
    }

    /** QuPath: public PathObject[] getChildObjectsAsArray() (a copy). */
    public PathObject[] getChildObjectsAsArray() {
        synchronized (children) {
            return children.toArray(new PathObject[0]);
        }
    }

    /** QuPath: public Collection&lt;PathObject&gt; getDescendantObjects(Collection&lt;PathObject&gt; descendants) (depth first, parents before children). */
    public Collection<PathObject> getDescendantObjects(Collection<PathObject> descendants) {
        if (!hasChildObjects()) {
            return descendants == null ? Collections.<PathObject>emptyList() : descendants;
        }
        if (descendants == null) {
            descendants = new ArrayList<>();
        }
        for (PathObject c : getChildObjectsAsArray()) {
            descendants.add(c);
            c.getDescendantObjects(descendants);
        }
        return descendants;
    }

    /** QuPath: public boolean hasChildObjects(). */
    public boolean hasChildObjects() {
        return !children.isEmpty();
    }

    /** QuPath: public int nChildObjects(). */
    public int nChildObjects() {
        return children.size();
    }

    /** QuPath: public abstract PathClass getPathClass(). */
    public abstract PathClass getPathClass();

    /** QuPath: public void setPathClass(PathClass pathClass) (= setPathClass(pathClass, NaN)). */
    public void setPathClass(PathClass pathClass) {
        setPathClass(pathClass, Double.NaN);
    }

    /** QuPath: public abstract void setPathClass(PathClass pathClass, double classProbability). */
    public abstract void setPathClass(PathClass pathClass, double classProbability);

    /** QuPath: public abstract double getClassProbability(). */
    public abstract double getClassProbability();

    /** QuPath: public boolean resetPathClass() (true if there was a class). */
    public boolean resetPathClass() {
        if (getPathClass() == null) {
            return false;
        }
        setPathClass(null);
        return true;
    }

    /** QuPath (v0.6.0): public String getClassification() (null when unclassified, else getPathClass().toString()). */
    public String getClassification() {
        PathClass pc = getPathClass();
        return pc == null || pc == PathClass.NULL_CLASS ? null : pc.toString();
    }

    /** QuPath (v0.6.0): public void setClassification(String classification) (null or "" resets; else PathClass.fromString). */
    public void setClassification(String classification) {
        if (classification == null || classification.isEmpty()) {
            resetPathClass();
        } else {
            setPathClass(PathClass.fromString(classification));
        }
    }

    /** QuPath: public Set&lt;String&gt; getClassifications() (the class's names, base first; empty when unclassified). */
    public Set<String> getClassifications() {
        PathClass pc = getPathClass();
        return pc == null ? Collections.<String>emptySet() : pc.toSet();
    }

    /** QuPath: public String getName(). */
    public String getName() {
        return name;
    }

    /** QuPath: public void setName(String name). */
    public void setName(String name) {
        this.name = name;
    }

    /** QuPath: public Integer getColor() (the object's own colour; null: its class's). */
    public Integer getColor() {
        return color;
    }

    /** QuPath: public void setColor(Integer color). */
    public void setColor(Integer color) {
        this.color = color;
    }

    /** QuPath: public UUID getID() (random at creation; GeoJSON import sets the file's "id"). */
    public UUID getID() {
        return id;
    }

    /** QuPath: public void setID(UUID id) (null is an IllegalArgumentException). */
    public void setID(UUID id) {
        if (id == null) {
            throw new IllegalArgumentException("ID of an object cannot be null!");
        }
        this.id = id;
    }

    /** QuPath: public void refreshID(). */
    public void refreshID() {
        setID(UUID.randomUUID());
    }

    /** QuPath: public boolean isLocked() (true unless a subclass says otherwise). */
    public boolean isLocked() {
        return true;
    }

    /** QuPath: public void setLocked(boolean locked) (only locking is allowed unless a subclass says otherwise). */
    public void setLocked(boolean locked) {
        if (!locked) {
            throw new UnsupportedOperationException("Locked status cannot be unset!");
        }
    }

    /** QuPath: public boolean isAnnotation() (instanceof PathAnnotationObject). */
    public boolean isAnnotation() {
        return this instanceof PathAnnotationObject;
    }

    /** QuPath: public boolean isDetection() (instanceof PathDetectionObject: cells and tiles too). */
    public boolean isDetection() {
        return this instanceof PathDetectionObject;
    }

    /** QuPath: public boolean isCell() (instanceof PathCellObject). */
    public boolean isCell() {
        return this instanceof PathCellObject;
    }

    /** QuPath: public boolean isTile() (instanceof PathTileObject). */
    public boolean isTile() {
        return this instanceof PathTileObject;
    }

    /** QuPath: public boolean isTMACore() (instanceof TMACoreObject). */
    public boolean isTMACore() {
        return this instanceof TMACoreObject;
    }
}
