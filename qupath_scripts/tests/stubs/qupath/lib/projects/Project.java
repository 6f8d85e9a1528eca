package qupath.lib.projects;

import java.nio.file.Path;
import java.util.List;

/** Stand-in for qupath.lib.projects.Project&lt;T&gt; (QuPath v0.5/v0.6, an interface). */
public interface Project<T> {
    /** QuPath: List&lt;ProjectImageEntry&lt;T&gt;&gt; getImageList(). */
    List<ProjectImageEntry<T>> getImageList();

    /** QuPath: Path getPath() (the project.qpproj file). */
    Path getPath();
}
