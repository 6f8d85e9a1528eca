package milsilstub;

import java.awt.image.BufferedImage;
import java.io.IOException;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

import qupath.lib.images.ImageData;
import qupath.lib.objects.hierarchy.PathObjectHierarchy;
import qupath.lib.projects.Project;
import qupath.lib.projects.ProjectImageEntry;

/** Test plumbing: a project whose entries keep their ImageData in memory ("saved" = kept). */
public class StubProject implements Project<BufferedImage> {
    private final Path path;
    private final List<ProjectImageEntry<BufferedImage>> entries = new ArrayList<>();

    public StubProject(Path path) {
        this.path = path;
    }

    public Entry add(String name, ImageData<BufferedImage> data, Map<String, String> metadata) {
        Entry e = new Entry(String.valueOf(entries.size() + 1), name, data, metadata);
        entries.add(e);
        return e;
    }

    @Override
    public List<ProjectImageEntry<BufferedImage>> getImageList() {
        return new ArrayList<>(entries);
    }

    @Override
    public Path getPath() {
        return path;
    }

    /** One image of the project. */
    public static class Entry implements ProjectImageEntry<BufferedImage> {
        private final String id;
        private final String name;
        public ImageData<BufferedImage> data;
        private final Map<String, String> metadata;
        public int reads;

        Entry(String id, String name, ImageData<BufferedImage> data, Map<String, String> metadata) {
            this.id = id;
            this.name = name;
            this.data = data;
            this.metadata = new LinkedHashMap<>(metadata);
        }

        @Override
        public String getID() {
            return id;
        }

        @Override
        public String getImageName() {
            return name;
        }

        @Override
        public String getMetadataValue(String key) {
            return metadata.get(key);
        }

        @Override
        public ImageData<BufferedImage> readImageData() throws IOException {
            reads++;
            return data;
        }

        @Override
        public PathObjectHierarchy readHierarchy() throws IOException {
            return data.getHierarchy();
        }

        @Override
        public void saveImageData(ImageData<BufferedImage> imageData) throws IOException {
            this.data = imageData;
        }
    }
}
