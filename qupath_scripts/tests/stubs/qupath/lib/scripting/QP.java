package qupath.lib.scripting;

import java.awt.image.BufferedImage;
import java.io.File;
import java.util.ArrayList;
import java.util.Collection;
import java.util.Collections;
import java.util.List;

import milsilstub.World;
import qupath.lib.images.ImageData;
import qupath.lib.images.servers.ImageServer;
import qupath.lib.objects.PathObject;
import qupath.lib.objects.TMACoreObject;
import qupath.lib.objects.classes.PathClass;
import qupath.lib.objects.hierarchy.PathObjectHierarchy;
import qupath.lib.projects.Project;
import qupath.lib.projects.ProjectImageEntry;

/**
 * Stand-in for qupath.lib.scripting.QP (QuPath v0.6.0,
 * qupath-core-processing/src/main/java/qupath/lib/scripting/QP.java), the static script API QuPath
 * imports into every script. "Current" image and project come from milsilstub.World, as
 * QuPath's come from the open viewer or the "Run for project" loop.
 */
public class QP {
    /** QuPath: public static final String PROJECT_BASE_DIR = "{%PROJECT}". */
    public static final String PROJECT_BASE_DIR = "{%PROJECT}";

    /** QuPath: public static ImageData&lt;BufferedImage&gt; getCurrentImageData(). */
    public static ImageData<BufferedImage> getCurrentImageData() {
        return World.imageData;
    }

    /** QuPath: public static ImageServer&lt;?&gt; getCurrentServer(). */
    public static ImageServer<?> getCurrentServer() {
        return World.imageData == null ? null : World.imageData.getServer();
    }

    /** QuPath: public static PathObjectHierarchy getCurrentHierarchy(). */
    public static PathObjectHierarchy getCurrentHierarchy() {
        return World.imageData == null ? null : World.imageData.getHierarchy();
    }

    /** QuPath: public static Project&lt;BufferedImage&gt; getProject(). */
    public static Project<BufferedImage> getProject() {
        return World.project;
    }

    /** QuPath: public static ProjectImageEntry&lt;BufferedImage&gt; getProjectEntry(). */
    public static ProjectImageEntry<BufferedImage> getProjectEntry() {
        return World.entry;
    }

    /** QuPath: public static String getProjectEntryMetadataValue(final String key). */
    public static String getProjectEntryMetadataValue(final String key) {
        return World.entry == null ? null : World.entry.getMetadataValue(key);
    }

    /** QuPath: public static String getCurrentImageName(). */
    public static String getCurrentImageName() {
        if (World.entry != null) {
            return World.entry.getImageName();
        }
        return World.imageData == null ? null : new File(World.imageData.getServerPath()).getName();
    }

    /** QuPath: public static Collection&lt;PathObject&gt; getSelectedObjects() (null without an image, as in QuPath v0.6.0). */
    public static Collection<PathObject> getSelectedObjects() {
        PathObjectHierarchy h = getCurrentHierarchy();
        return h == null ? null : h.getSelectionModel().getSelectedObjects();
    }

    /** QuPath: public static Collection&lt;PathObject&gt; getAnnotationObjects(). */
    public static Collection<PathObject> getAnnotationObjects() {
        PathObjectHierarchy h = getCurrentHierarchy();
        return h == null ? Collections.<PathObject>emptyList() : h.getAnnotationObjects();
    }

    /** QuPath: public static Collection&lt;PathObject&gt; getDetectionObjects() (cells and tiles included). */
    public static Collection<PathObject> getDetectionObjects() {
        PathObjectHierarchy h = getCurrentHierarchy();
        return h == null ? Collections.<PathObject>emptyList() : h.getDetectionObjects();
    }

    /** QuPath: public static Collection&lt;PathObject&gt; getCellObjects(). */
    public static Collection<PathObject> getCellObjects() {
        PathObjectHierarchy h = getCurrentHierarchy();
        return h == null ? Collections.<PathObject>emptyList() : h.getCellObjects();
    }

    /** QuPath: public static Collection&lt;PathObject&gt; getTileObjects(). */
    public static Collection<PathObject> getTileObjects() {
        PathObjectHierarchy h = getCurrentHierarchy();
        return h == null ? Collections.<PathObject>emptyList() : h.getTileObjects();
    }

    /** QuPath: public static Collection&lt;PathObject&gt; getAllObjects(boolean includeRootObject). */
    public static Collection<PathObject> getAllObjects(boolean includeRootObject) {
        PathObjectHierarchy h = getCurrentHierarchy();
        return h == null ? Collections.<PathObject>emptyList() : new ArrayList<>(h.getAllObjects(includeRootObject));
    }

    /** QuPath: public static List&lt;TMACoreObject&gt; getTMACoreList(). */
    public static List<TMACoreObject> getTMACoreList() {
        PathObjectHierarchy h = getCurrentHierarchy();
        if (h == null || h.getTMAGrid() == null) {
            return Collections.emptyList();
        }
        return h.getTMAGrid().getTMACoreList();
    }

    /** QuPath: public static void addObjects(Collection&lt;PathObject&gt; pathObjects). */
    public static void addObjects(Collection<PathObject> pathObjects) {
        getCurrentHierarchy().addObjects(pathObjects);
    }

    /** QuPath: public static void addObject(PathObject pathObject). */
    public static void addObject(PathObject pathObject) {
        getCurrentHierarchy().addObject(pathObject);
    }

    /** QuPath: public static void fireHierarchyUpdate(). */
    public static void fireHierarchyUpdate() {
        fireHierarchyUpdate(getCurrentHierarchy());
    }

    /** QuPath: public static void fireHierarchyUpdate(final PathObjectHierarchy hierarchy). */
    public static void fireHierarchyUpdate(final PathObjectHierarchy hierarchy) {
        if (hierarchy != null) {
            hierarchy.fireHierarchyChangedEvent(QP.class);
        }
    }

    /** QuPath: public static PathClass getPathClass(final String name) (PathClass.fromString: null gives NULL_CLASS). */
    public static PathClass getPathClass(final String name) {
        return PathClass.fromString(name);
    }

    /** QuPath: public static PathClass getPathClass(final String name, final Integer rgb) (the colour only for a new class). */
    public static PathClass getPathClass(final String name, final Integer rgb) {
        return PathClass.fromString(name, rgb);
    }

    /** QuPath: public static String buildFilePath(String first, String... more) (PROJECT_BASE_DIR resolved). */
    public static String buildFilePath(String first, String... more) {
        String base = first;
        if (first.contains(PROJECT_BASE_DIR)) {
            if (World.project == null) {
                throw new IllegalArgumentException("No project open: cannot resolve " + PROJECT_BASE_DIR);
            }
            base = first.replace(PROJECT_BASE_DIR, World.project.getPath().getParent().toString());
        }
        File f = new File(base);
        for (String m : more) {
            f = new File(f, m);
        }
        return f.getPath();
    }

    /** QuPath: public static boolean mkdirs(String path). */
    public static boolean mkdirs(String path) {
        return new File(path).mkdirs();
    }
}
