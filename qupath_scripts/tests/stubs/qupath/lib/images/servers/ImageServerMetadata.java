package qupath.lib.images.servers;

import java.util.UUID;

/**
 * Stand-in for qupath.lib.images.servers.ImageServerMetadata (QuPath v0.6.0,
 * qupath-core/src/main/java/qupath/lib/images/servers/ImageServerMetadata.java); only what
 * the scripts read: getName() (the image's name; null when the server set none) and getPath().
 * As QuPath's Builder.build(), a metadata built without a path gets a random UUID as its path
 * (an image with no file behind it).
 */
public class ImageServerMetadata {
    private String path;
    private String name;

    ImageServerMetadata() {
    }

    /** QuPath: public String getPath(). */
    public String getPath() {
        return path;
    }

    /** QuPath: public String getName(). */
    public String getName() {
        return name;
    }

    /** QuPath: ImageServerMetadata.Builder (only path, name and build). */
    public static class Builder {
        private final ImageServerMetadata metadata = new ImageServerMetadata();

        /** QuPath: public Builder(Class&lt;? extends ImageServer&lt;?&gt;&gt; serverClass, String path). */
        public Builder(Class<?> serverClass, String path) {
            metadata.path = path;
        }

        /** QuPath: public Builder name(String name). */
        public Builder name(String name) {
            metadata.name = name;
            return this;
        }

        /** QuPath: public ImageServerMetadata build() ("We need a unique path, somehow": a random UUID). */
        public ImageServerMetadata build() {
            if (metadata.path == null) {
                metadata.path = UUID.randomUUID().toString();
            }
            return metadata;
        }
    }
}
