package qupath.lib.projects;

import java.io.IOException;

import qupath.lib.images.ImageData;
import qupath.lib.objects.hierarchy.PathObjectHierarchy;

/** Stand-in for qupath.lib.projects.ProjectImageEntry&lt;T&gt; (QuPath v0.5/v0.6, an interface). */
public interface ProjectImageEntry<T> {
    /** QuPath: String getID(). */
    String getID();

    /** QuPath: String getImageName(). */
    String getImageName();

    /** QuPath: String getMetadataValue(final String key) (deprecated in v0.6 for getMetadata().get, still there). */
    String getMetadataValue(final String key);

    /** QuPath: ImageData&lt;T&gt; readImageData() throws IOException. */
    ImageData<T> readImageData() throws IOException;

    /** QuPath: PathObjectHierarchy readHierarchy() throws IOException. */
    PathObjectHierarchy readHierarchy() throws IOException;

    /** QuPath: void saveImageData(ImageData&lt;T&gt; imageData) throws IOException. */
    void saveImageData(ImageData<T> imageData) throws IOException;
}
