package qupath.lib.objects.hierarchy.events;

import java.util.Collection;
import java.util.LinkedHashSet;
import java.util.Set;

import qupath.lib.objects.PathObject;

/** Stand-in for qupath.lib.objects.hierarchy.events.PathObjectSelectionModel (QuPath v0.5/v0.6). */
public class PathObjectSelectionModel {
    private final Set<PathObject> selected = new LinkedHashSet<>();

    /** QuPath: public synchronized Set&lt;PathObject&gt; getSelectedObjects(). */
    public synchronized Set<PathObject> getSelectedObjects() {
        return new LinkedHashSet<>(selected);
    }

    /** QuPath: public synchronized void setSelectedObjects(Collection&lt;? extends PathObject&gt; pathObjects, final PathObject primarySelectedObject). */
    public void setSelectedObjects(Collection<? extends PathObject> pathObjects, PathObject primarySelected) {
        selected.clear();
        selected.addAll(pathObjects);
    }
}
