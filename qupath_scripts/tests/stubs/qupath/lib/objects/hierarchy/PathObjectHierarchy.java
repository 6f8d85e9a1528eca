package qupath.lib.objects.hierarchy;

import java.util.ArrayList;
import java.util.Collection;
import java.util.Collections;
import java.util.LinkedHashSet;
import java.util.List;

import milsilstub.ShapeROI;
import qupath.lib.objects.PathAnnotationObject;
import qupath.lib.objects.PathCellObject;
import qupath.lib.objects.PathDetectionObject;
import qupath.lib.objects.PathObject;
import qupath.lib.objects.PathRootObject;
import qupath.lib.objects.PathTileObject;
import qupath.lib.objects.TMACoreObject;
import qupath.lib.objects.hierarchy.events.PathObjectSelectionModel;
import qupath.lib.roi.interfaces.ROI;

/**
 * Stand-in for qupath.lib.objects.hierarchy.PathObjectHierarchy (QuPath v0.6.0,
 * qupath-core/src/main/java/qupath/lib/objects/hierarchy/PathObjectHierarchy.java).
 * addObject/addObjects put objects directly below the root, as QuPath 0.6 does (only
 * insertPathObject, not here, finds a parent by location); addObjectBelowParent below the
 * parent named. Listeners and the spatial cache are left out; changeCount() (test plumbing)
 * counts every change and event, fired or not.
 */
public class PathObjectHierarchy {
    private final PathRootObject root = new PathRootObject();
    private final PathObjectSelectionModel selection = new PathObjectSelectionModel();
    private TMAGrid grid;
    private int changes;
    private long events;

    /** QuPath: public PathObject getRootObject(). */
    public PathObject getRootObject() {
        return root;
    }

    /** QuPath: public synchronized boolean isEmpty() (no TMA cores and no objects). */
    public synchronized boolean isEmpty() {
        return (grid == null || grid.getTMACoreList().isEmpty()) && !root.hasChildObjects();
    }

    /** QuPath: public synchronized TMAGrid getTMAGrid(). */
    public synchronized TMAGrid getTMAGrid() {
        return grid;
    }

    /** QuPath: public synchronized void setTMAGrid(TMAGrid tmaGrid) (the old grid's cores removed, the new ones added below the root). */
    public synchronized void setTMAGrid(TMAGrid tmaGrid) {
        if (this.grid == tmaGrid) {
            return;
        }
        if (this.grid != null) {
            for (TMACoreObject core : this.grid.getTMACoreList()) {
                if (core.getParent() != null) {
                    core.getParent().removeChildObject(core);
                }
            }
        }
        this.grid = tmaGrid;
        if (tmaGrid != null) {
            for (TMACoreObject core : tmaGrid.getTMACoreList()) {
                root.addChildObject(core);
            }
        }
    }

    /** QuPath: public PathObjectSelectionModel getSelectionModel(). */
    public PathObjectSelectionModel getSelectionModel() {
        return selection;
    }

    /**
     * QuPath: public synchronized boolean addObjectBelowParent(PathObject pathObjectParent,
     * PathObject pathObject, boolean fireUpdate): a null parent is addObject; the object as
     * its own parent is an IllegalArgumentException.
     */
    public synchronized boolean addObjectBelowParent(PathObject pathObjectParent, PathObject pathObject, boolean fireUpdate) {
        if (pathObjectParent == pathObject) {
            throw new IllegalArgumentException("Cannot add a PathObject as a descendent of itself!");
        }
        if (pathObjectParent == null) {
            return addObject(pathObject, fireUpdate);
        }
        pathObjectParent.addChildObject(pathObject);
        changes++;
        return true;
    }

    /** QuPath: public boolean addObject(PathObject pathObject, boolean fireUpdate) (below the root; false for the root or an object without a ROI). */
    public synchronized boolean addObject(PathObject pathObject, boolean fireUpdate) {
        if (pathObject == root || !pathObject.hasROI()) {
            return false;
        }
        root.addChildObject(pathObject);
        changes++;
        return true;
    }

    /** QuPath: public boolean addObject(PathObject pathObject). */
    public boolean addObject(PathObject pathObject) {
        return addObject(pathObject, true);
    }

    /** QuPath: public synchronized boolean addObjects(Collection&lt;? extends PathObject&gt; pathObjects) (each below the root). */
    public synchronized boolean addObjects(Collection<? extends PathObject> pathObjects) {
        boolean changed = false;
        for (PathObject p : new ArrayList<>(pathObjects)) {
            root.addChildObject(p);
            changed = true;
        }
        if (changed) {
            changes++;
        }
        return changed;
    }

    /** QuPath: public Collection&lt;PathObject&gt; getAnnotationObjects() (depth first, parents before children). */
    public Collection<PathObject> getAnnotationObjects() {
        return getObjects(null, PathAnnotationObject.class);
    }

    /** QuPath: public Collection&lt;PathObject&gt; getDetectionObjects() (cells and tiles included). */
    public Collection<PathObject> getDetectionObjects() {
        return getObjects(null, PathDetectionObject.class);
    }

    /** QuPath: public Collection&lt;PathObject&gt; getCellObjects(). */
    public Collection<PathObject> getCellObjects() {
        return getObjects(null, PathCellObject.class);
    }

    /** QuPath: public Collection&lt;PathObject&gt; getTileObjects(). */
    public Collection<PathObject> getTileObjects() {
        return getObjects(null, PathTileObject.class);
    }

    /**
     * QuPath: public Collection&lt;PathObject&gt; getObjects(Collection&lt;PathObject&gt; pathObjects,
     * Class&lt;? extends PathObject&gt; cls): every object that is an instance of cls (null: all,
     * the root too), depth first, added to pathObjects (a new list if null).
     */
    public Collection<PathObject> getObjects(Collection<PathObject> pathObjects, Class<? extends PathObject> cls) {
        if (pathObjects == null) {
            pathObjects = new ArrayList<>();
        }
        if (cls == null || cls.isAssignableFrom(PathRootObject.class)) {
            pathObjects.add(root);
        }
        for (PathObject o : root.getDescendantObjects(null)) {
            if (cls == null || cls.isInstance(o)) {
                pathObjects.add(o);
            }
        }
        return pathObjects;
    }

    /** QuPath: public synchronized Collection&lt;PathObject&gt; getAllObjects(boolean includeRoot). */
    public synchronized Collection<PathObject> getAllObjects(boolean includeRoot) {
        Collection<PathObject> all = new LinkedHashSet<>(getObjects(null, PathObject.class));
        if (!includeRoot) {
            all.remove(root);
        }
        return all;
    }

    /** QuPath: public synchronized int nObjects() (the root not counted). */
    public synchronized int nObjects() {
        return root.getDescendantObjects(null).size();
    }

    /**
     * QuPath: public Collection&lt;PathObject&gt; getObjectsForROI(Class&lt;? extends PathObject&gt; cls, ROI roi)
     * (discouraged since v0.6.0 in favour of the methods below, same rule): the objects in the
     * hierarchy of class cls (subclasses included; null: any) "inside" roi by the hierarchy's
     * rule (filterObjectsForROI): a detection (cells, tiles) when its ROI's CENTROID is not
     * outside roi's geometry (the boundary counts), anything else (annotations, TMA cores) when
     * roi COVERS its ROI, within 0.02 px. An object whose ROI only overlaps roi is not
     * returned. An empty or non-area roi gives an empty list. QuPath returns them in no
     * particular order; here in hierarchy order.
     */
    public Collection<PathObject> getObjectsForROI(Class<? extends PathObject> cls, ROI roi) {
        if (roi == null || roi.isEmpty() || !roi.isArea()) {
            return Collections.emptyList();
        }
        ShapeROI area = (ShapeROI) roi;
        List<PathObject> out = new ArrayList<>();
        for (PathObject o : root.getDescendantObjects(null)) {
            ROI r = o.getROI();
            if (r == null || (cls != null && !cls.isInstance(o)) || r.getZ() != roi.getZ() || r.getT() != roi.getT()) {
                continue;
            }
            boolean inside = o.isDetection() ? area.geometryContains(r.getCentroidX(), r.getCentroidY())
                : area.coversWithTolerance((ShapeROI) r);
            if (inside) {
                out.add(o);
            }
        }
        return out;
    }

    /** QuPath (v0.6.0): public Collection&lt;PathObject&gt; getAllObjectsForROI(ROI roi) (getObjectsForROI(null, roi)). */
    public Collection<PathObject> getAllObjectsForROI(ROI roi) {
        return getObjectsForROI(null, roi);
    }

    /** QuPath (v0.6.0): public Collection&lt;PathObject&gt; getAnnotationsForROI(ROI roi) (covered by roi; an annotation with this very ROI too). */
    public Collection<PathObject> getAnnotationsForROI(ROI roi) {
        return getObjectsForROI(PathAnnotationObject.class, roi);
    }

    /** QuPath (v0.6.0): public Collection&lt;PathObject&gt; getTilesForROI(ROI roi) (centroid inside). */
    public Collection<PathObject> getTilesForROI(ROI roi) {
        return getObjectsForROI(PathTileObject.class, roi);
    }

    /** QuPath (v0.6.0): public Collection&lt;PathObject&gt; getCellsForROI(ROI roi) (centroid of the cell ROI inside). */
    public Collection<PathObject> getCellsForROI(ROI roi) {
        return getObjectsForROI(PathCellObject.class, roi);
    }

    /** QuPath (v0.6.0): public Collection&lt;PathObject&gt; getAllDetectionsForROI(ROI roi) (detections, cells and tiles with their centroid inside). */
    public Collection<PathObject> getAllDetectionsForROI(ROI roi) {
        return getObjectsForROI(PathDetectionObject.class, roi);
    }

    /** QuPath: public void fireHierarchyChangedEvent(Object source). */
    public void fireHierarchyChangedEvent(Object source) {
        fireHierarchyChangedEvent(source, root);
    }

    /** QuPath: public void fireHierarchyChangedEvent(Object source, PathObject pathObject). */
    public synchronized void fireHierarchyChangedEvent(Object source, PathObject pathObject) {
        changes++;
        events++;
    }

    /** QuPath: public void fireObjectClassificationsChangedEvent(Object source, Collection&lt;? extends PathObject&gt; pathObjects). */
    public synchronized void fireObjectClassificationsChangedEvent(Object source, Collection<? extends PathObject> pathObjects) {
        changes++;
        events++;
    }

    /** QuPath: public void fireObjectMeasurementsChangedEvent(Object source, Collection&lt;? extends PathObject&gt; pathObjects). */
    public synchronized void fireObjectMeasurementsChangedEvent(Object source, Collection<? extends PathObject> pathObjects) {
        changes++;
        events++;
    }

    /** QuPath: public void fireObjectsChangedEvent(Object source, Collection&lt;? extends PathObject&gt; pathObjects). */
    public synchronized void fireObjectsChangedEvent(Object source, Collection<? extends PathObject> pathObjects) {
        changes++;
        events++;
    }

    /** QuPath (v0.6.0): public long getEventCount() (events fired). */
    public synchronized long getEventCount() {
        return events;
    }

    /** Test plumbing: how many changes and change events there were. */
    public synchronized int changeCount() {
        return changes;
    }
}
