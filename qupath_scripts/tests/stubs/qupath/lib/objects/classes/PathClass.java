package qupath.lib.objects.classes;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collection;
import java.util.Collections;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Map;
import java.util.Random;
import java.util.Set;
import java.util.concurrent.ConcurrentHashMap;
import java.util.regex.Pattern;

/**
 * Stand-in for qupath.lib.objects.classes.PathClass (QuPath v0.6.0,
 * qupath-core/src/main/java/qupath/lib/objects/classes/PathClass.java). One instance per
 * classification (compare with ==; Groovy's == calls compareTo, which compares toString()),
 * possibly derived from a parent class ("Tumor: Positive" is "Positive" derived from "Tumor").
 * A packed ARGB colour (alpha 255, as ColorTools.packRGB); a new class without a given colour
 * gets one: the standard intensity colours for Positive/Negative/1+/2+/3+, otherwise a random
 * colour seeded by the class's name (never very dark). NULL_CLASS stands for "no class"
 * (name null, toString "Unclassified"); PathObject.setPathClass(NULL_CLASS) stores null.
 */
public final class PathClass implements Comparable<PathClass> {
    /** QuPath: public static final String DELIMITER (system property pathClassDelimiter, default ":"). */
    public static final String DELIMITER = delimiter(System.getProperty("pathClassDelimiter"));

    /** QuPath: public static final String NAME_POSITIVE etc. (the intensity classes). */
    public static final String NAME_POSITIVE = "Positive";
    public static final String NAME_NEGATIVE = "Negative";
    public static final String NAME_ONE_PLUS = "1+";
    public static final String NAME_TWO_PLUS = "2+";
    public static final String NAME_THREE_PLUS = "3+";

    private static final Map<String, PathClass> CACHE = new ConcurrentHashMap<>();
    private static final String KEY_SEPARATOR = "\n";
    private static final Pattern NAME_CHARACTERS = Pattern.compile("[\\w\\p{L}\\d\\p{Punct} ]+");

    /** QuPath: public static final PathClass NULL_CLASS (no name, no colour, no parent). */
    public static final PathClass NULL_CLASS = new PathClass(null, null, null);

    private final PathClass parent;
    private final String name;
    private Integer color;

    private PathClass(PathClass parent, String name, Integer color) {
        this.parent = parent;
        this.name = name;
        this.color = color;
    }

    private static String delimiter(String d) {
        return d == null || d.isEmpty() || d.contains("\n") ? ":" : d;
    }

    /** QuPath ColorTools.packRGB: alpha 255 in the top byte. */
    private static int packRGB(int r, int g, int b) {
        return (0xff << 24) | ((r & 0xff) << 16) | ((g & 0xff) << 8) | (b & 0xff);
    }

    /** QuPath ColorTools.makeScaledRGB: each channel times scale, capped at 255. */
    private static int scaled(int rgb, double scale) {
        return packRGB((int) Math.min(255, ((rgb >> 16) & 0xff) * scale),
            (int) Math.min(255, ((rgb >> 8) & 0xff) * scale), (int) Math.min(255, (rgb & 0xff) * scale));
    }

    /** QuPath: public static PathClass fromString(String string) (no colour). */
    public static PathClass fromString(String string) {
        return fromString(string, null);
    }

    /**
     * QuPath: public static PathClass fromString(String string, Integer color): null gives
     * NULL_CLASS; otherwise the string is split on DELIMITER, each part stripped, and the parts
     * make a base class and the classes derived from it (fromCollection). The colour is used
     * only if the (last) class is new. An empty or blank part is an IllegalArgumentException
     * ("" too: it is one blank name).
     */
    public static PathClass fromString(String string, Integer color) {
        if (string == null) {
            return NULL_CLASS;
        }
        List<String> names = new ArrayList<>();
        for (String part : string.split(Pattern.quote(DELIMITER))) {
            names.add(part.trim());
        }
        return fromCollection(names, color);
    }

    /** QuPath: public static PathClass fromCollection(Collection&lt;String&gt; names). */
    public static PathClass fromCollection(Collection<String> names) {
        return fromCollection(names, null);
    }

    /**
     * QuPath: public static PathClass fromCollection(Collection&lt;String&gt; names, Integer color):
     * empty gives NULL_CLASS; one name is getInstance(name, color); more derive each from the
     * one before, the colour going to the last only.
     */
    public static PathClass fromCollection(Collection<String> names, Integer color) {
        if (names.isEmpty()) {
            return NULL_CLASS;
        }
        List<String> list = new ArrayList<>(names);
        PathClass pc = null;
        for (int i = 0; i < list.size(); i++) {
            pc = getInstance(pc, list.get(i), i == list.size() - 1 ? color : null);
        }
        return pc;
    }

    /** QuPath: public static PathClass fromArray(String... names). */
    public static PathClass fromArray(String... names) {
        return fromCollection(Arrays.asList(names));
    }

    /** QuPath: public static PathClass getInstance(String name). */
    public static PathClass getInstance(String name) {
        return getInstance(name, null);
    }

    /** QuPath: public static PathClass getInstance(String name, Integer color) (a base class). */
    public static PathClass getInstance(String name, Integer color) {
        return getInstance(null, name, color);
    }

    /**
     * QuPath: public static PathClass getInstance(PathClass parent, String name, Integer color).
     * The one instance for this parent and name (surrounding whitespace stripped), made with
     * `color` (or a default colour) if new. A name with the DELIMITER, a line break, or that
     * is blank is an IllegalArgumentException; a null name gives NULL_CLASS without a parent,
     * an IllegalArgumentException with one.
     */
    public static PathClass getInstance(PathClass parent, String name, Integer color) {
        if (parent == NULL_CLASS) {
            parent = null;
        }
        if (name != null && name.contains(DELIMITER)) {
            throw new IllegalArgumentException(String.format(
                "Name '%s' contains the delimiter '%s' - please use a valid name or getInstanceFromString()", name, DELIMITER));
        }
        if (name == null) {
            if (parent == null) {
                return NULL_CLASS;
            }
            throw new IllegalArgumentException("Cannot derive a PathClass with a null name and non-null parent");
        }
        String stripped = name.trim();
        String key = parent == null ? stripped : parent.key() + KEY_SEPARATOR + stripped;
        PathClass existing = CACHE.get(key);
        if (existing != null) {
            return existing;
        }
        if (stripped.isEmpty()) {
            throw new IllegalArgumentException("Requested PathClass name cannot be blank!");
        }
        if (stripped.contains("\n") || stripped.contains("\r")) {
            throw new IllegalArgumentException(stripped + " is not a valid PathClass name!");
        }
        if (!NAME_CHARACTERS.matcher(stripped).matches()) {
            System.err.println("PathClass name '" + stripped + "' has characters later QuPath versions may reject");
        }
        Integer rgb = color != null ? color : defaultColor(parent, stripped, key);
        final PathClass p = parent;
        return CACHE.computeIfAbsent(key, k -> new PathClass(p, stripped, rgb));
    }

    private String key() {
        return parent == null ? name : parent.key() + KEY_SEPARATOR + name;
    }

    /**
     * QuPath PathClass.getDefaultColor: base Positive/Negative/1+/2+/3+ get their standard
     * colours brightened 1.25x; derived ones are shades of the parent's colour (or the standard
     * ones below "Tumor"); anything else a random colour from java.util.Random seeded with the
     * hash of the class's key (names joined by line breaks), redrawn while all channels are
     * below 40.
     */
    private static Integer defaultColor(PathClass parent, String name, String key) {
        int positive = packRGB(200, 50, 50);
        int negative = packRGB(90, 90, 180);
        int onePlus = packRGB(255, 215, 0);
        int twoPlus = packRGB(225, 150, 50);
        int threePlus = packRGB(200, 50, 50);
        if (parent == null) {
            switch (name) {
                case NAME_ONE_PLUS:
                    return scaled(onePlus, 1.25);
                case NAME_TWO_PLUS:
                    return scaled(twoPlus, 1.25);
                case NAME_THREE_PLUS:
                    return scaled(threePlus, 1.25);
                case NAME_POSITIVE:
                    return scaled(positive, 1.25);
                case NAME_NEGATIVE:
                    return scaled(negative, 1.25);
                default:
                    break;
            }
        } else {
            boolean tumor = !parent.isDerivedClass() && "Tumor".equals(parent.getName());
            int p = parent.getColor() == null ? 0 : parent.getColor();
            switch (name) {
                case NAME_ONE_PLUS:
                    return tumor ? onePlus : scaled(p, 0.9);
                case NAME_TWO_PLUS:
                    return tumor ? twoPlus : scaled(p, 0.6);
                case NAME_THREE_PLUS:
                    return tumor ? threePlus : scaled(p, 0.4);
                case NAME_POSITIVE:
                    return tumor ? positive : scaled(p, 0.75);
                case NAME_NEGATIVE:
                    return tumor ? negative : scaled(p, 1.25);
                default:
                    break;
            }
        }
        Random random = new Random(key.hashCode());
        int r = 0;
        int g = 0;
        int b = 0;
        while (r < 40 && g < 40 && b < 40) {
            r = random.nextInt(256);
            g = random.nextInt(256);
            b = random.nextInt(256);
        }
        return packRGB(r, g, b);
    }

    /** QuPath: public static PathClass getNullClass(). */
    public static PathClass getNullClass() {
        return NULL_CLASS;
    }

    /** QuPath: public PathClass getParentClass() (null for a base class). */
    public PathClass getParentClass() {
        return parent;
    }

    /** QuPath: public boolean isDerivedClass(). */
    public boolean isDerivedClass() {
        return parent != null;
    }

    /** QuPath: public boolean isDerivedFrom(PathClass parentClass) (itself included). */
    public boolean isDerivedFrom(PathClass parentClass) {
        for (PathClass pc = this; pc != null; pc = pc.parent) {
            if (pc == parentClass) {
                return true;
            }
        }
        return false;
    }

    /** QuPath: public boolean isAncestorOf(PathClass childClass) (itself included). */
    public boolean isAncestorOf(PathClass childClass) {
        return childClass != null && childClass.isDerivedFrom(this);
    }

    /** QuPath: public PathClass getBaseClass(). */
    public PathClass getBaseClass() {
        PathClass pc = this;
        while (pc.parent != null) {
            pc = pc.parent;
        }
        return pc;
    }

    /** QuPath: public String getName() (the last part only; null for NULL_CLASS). */
    public String getName() {
        return name;
    }

    /** QuPath: public Integer getColor() (packed ARGB). */
    public Integer getColor() {
        return color;
    }

    /** QuPath: public void setColor(Integer colorRGB). */
    public void setColor(Integer colorRGB) {
        this.color = colorRGB;
    }

    /** QuPath: public void setColor(int red, int green, int blue). */
    public void setColor(int red, int green, int blue) {
        setColor(packRGB(red, green, blue));
    }

    /** QuPath: public boolean isValid() (false only for NULL_CLASS). */
    public boolean isValid() {
        return name != null;
    }

    /** QuPath: public Set&lt;String&gt; toSet() (the names, base first). */
    public Set<String> toSet() {
        return Collections.unmodifiableSet(new LinkedHashSet<>(names()));
    }

    private List<String> names() {
        List<String> out = new ArrayList<>();
        for (PathClass pc = this; pc != null && pc.name != null; pc = pc.parent) {
            out.add(0, pc.name);
        }
        return out;
    }

    /** QuPath: public String toString(String delimiter). */
    public String toString(String delimiter) {
        if (name == null) {
            return "Unclassified";
        }
        return String.join(delimiter, names());
    }

    /** QuPath: public String toString(): the names joined by DELIMITER + " " ("Tumor: Positive"); "Unclassified" for NULL_CLASS. */
    @Override
    public String toString() {
        return toString(DELIMITER + " ");
    }

    /** QuPath: public int compareTo(PathClass o): toString().compareTo(o.toString()). */
    @Override
    public int compareTo(PathClass o) {
        return toString().compareTo(o.toString());
    }
}
