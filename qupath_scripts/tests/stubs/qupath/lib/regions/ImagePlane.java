package qupath.lib.regions;

/**
 * Stand-in for qupath.lib.regions.ImagePlane (QuPath v0.6.0,
 * qupath-core/src/main/java/qupath/lib/regions/ImagePlane.java): channel, z and t of a 2D
 * plane; the default plane is c = -1 (all channels), z = 0, t = 0.
 */
public class ImagePlane {
    private static final ImagePlane DEFAULT = new ImagePlane(-1, 0, 0);
    private final int c;
    private final int z;
    private final int t;

    private ImagePlane(int c, int z, int t) {
        this.c = c;
        this.z = z;
        this.t = t;
    }

    /** QuPath: public int getC() (-1: all channels). */
    public int getC() {
        return c;
    }

    /** QuPath: public static ImagePlane getDefaultPlane(). */
    public static ImagePlane getDefaultPlane() {
        return DEFAULT;
    }

    public int getZ() {
        return z;
    }

    public int getT() {
        return t;
    }
}
