package qupath.lib.images;

import qupath.lib.images.servers.ImageServer;
import qupath.lib.objects.hierarchy.PathObjectHierarchy;

/** Stand-in for qupath.lib.images.ImageData&lt;T&gt; (QuPath v0.5/v0.6): server + hierarchy. */
public class ImageData<T> {
    private final ImageServer<T> server;
    private final PathObjectHierarchy hierarchy;

    public ImageData(ImageServer<T> server, PathObjectHierarchy hierarchy) {
        this.server = server;
        this.hierarchy = hierarchy;
    }

    /** QuPath: public ImageServer&lt;T&gt; getServer(). */
    public ImageServer<T> getServer() {
        return server;
    }

    /** QuPath: public String getServerPath(). */
    public String getServerPath() {
        return server.getPath();
    }

    /** QuPath: public PathObjectHierarchy getHierarchy(). */
    public PathObjectHierarchy getHierarchy() {
        return hierarchy;
    }
}
