package qupath.lib.objects.hierarchy;

import java.util.ArrayList;
import java.util.Collection;
import java.util.List;

import qupath.lib.objects.PathObject;
import qupath.lib.objects.PathRootObject;
import qupath.lib.objects.TMACoreObject;
import qupath.lib.objects.hierarchy.events.PathObjectSelectionModel;

/**
 * Stand-in for qupath.lib.objects.hierarchy.PathObjectHierarchy (QuPath v0.5/v0.6). Objects
 * added without a parent go below the root (QuPath would resolve the parent by location; the
 * scripts always name the parent they mean). Counts change events for the tests.
 */
public class PathObjectHierarchy {
    private final PathRootObject root = new PathRootObject();
    private final PathObjectSelectionModel selection = new PathObjectSelectionModel();
    private TMAGrid grid;
    private int changes;

    /** QuPath: public PathObject getRootObject(). */
    public PathObject getRootObject() {
        return root;
    }

    /** QuPath: public synchronized TMAGrid getTMAGrid(). */
    public synchronized TMAGrid getTMAGrid() {
        return grid;
    }

    /** QuPath: public synchronized void setTMAGrid(TMAGrid tmaGrid) (adds the cores below the root). */
    public void setTMAGrid(TMAGrid tmaGrid) {
        this.grid = tmaGrid;
        for (TMACoreObject core : tmaGrid.getTMACoreList()) {
            root.addChildObject(core);
        }
    }

    /** QuPath: public PathObjectSelectionModel getSelectionModel(). */
    public PathObjectSelectionModel getSelectionModel() {
        return selection;
    }

    /** QuPath: public synchronized boolean addObjectBelowParent(PathObject pathObjectParent, PathObject pathObject, boolean fireUpdate). */
    public synchronized boolean addObjectBelowParent(PathObject pathObjectParent, PathObject pathObject, boolean fireUpdate) {
        (pathObjectParent == null ? root : pathObjectParent).addChildObject(pathObject);
        changes++;
        return true;
    }

    /** QuPath: public boolean addObject(PathObject pathObject, boolean fireUpdate). */
    public boolean addObject(PathObject pathObject, boolean fireUpdate) {
        return addObjectBelowParent(root, pathObject, fireUpdate);
    }

    /** QuPath: public boolean addObject(PathObject pathObject). */
    public boolean addObject(PathObject pathObject) {
        return addObject(pathObject, true);
    }

    /** QuPath: public synchronized boolean addObjects(Collection&lt;? extends PathObject&gt; pathObjects). */
    public synchronized boolean addObjects(Collection<? extends PathObject> pathObjects) {
        for (PathObject p : pathObjects) {
            root.addChildObject(p);
        }
        changes++;
        return !pathObjects.isEmpty();
    }

    /** QuPath: public Collection&lt;PathObject&gt; getAnnotationObjects(). */
    public Collection<PathObject> getAnnotationObjects() {
        List<PathObject> out = new ArrayList<>();
        collect(root, out);
        return out;
    }

    private static void collect(PathObject o, List<PathObject> out) {
        for (PathObject c : o.getChildObjects()) {
            if (c.isAnnotation()) {
                out.add(c);
            }
            collect(c, out);
        }
    }

    /** QuPath: public void fireHierarchyChangedEvent(Object source). */
    public void fireHierarchyChangedEvent(Object source) {
        changes++;
    }

    /** Test plumbing: how many changes and change events there were. */
    public int changeCount() {
        return changes;
    }
}
