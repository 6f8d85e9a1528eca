package qupath.lib.objects.classes;

import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;

/**
 * Stand-in for qupath.lib.objects.classes.PathClass (QuPath v0.5/v0.6): interned classification
 * with a packed RGB colour; toString() is the name.
 */
public final class PathClass {
    private static final Map<String, PathClass> CACHE = new ConcurrentHashMap<>();
    private final String name;
    private Integer color;

    private PathClass(String name, Integer color) {
        this.name = name;
        this.color = color;
    }

    /** QuPath: public static PathClass fromString(String string). */
    public static PathClass fromString(String string) {
        return fromString(string, null);
    }

    /** QuPath: public static PathClass fromString(String string, Integer color). */
    public static PathClass fromString(String string, Integer color) {
        if (string == null || string.isEmpty()) {
            return null;
        }
        PathClass pc = CACHE.computeIfAbsent(string, s -> new PathClass(s, color));
        if (pc.color == null && color != null) {
            pc.color = color;
        }
        return pc;
    }

    /** QuPath: public static PathClass getInstance(String name, Integer color). */
    public static PathClass getInstance(String name, Integer color) {
        return fromString(name, color);
    }

    /** QuPath: public String getName(). */
    public String getName() {
        return name;
    }

    /** QuPath: public Integer getColor(). */
    public Integer getColor() {
        return color;
    }

    @Override
    public String toString() {
        return name;
    }
}
