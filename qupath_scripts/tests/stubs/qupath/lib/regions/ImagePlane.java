package qupath.lib.regions;

/** Stand-in for qupath.lib.regions.ImagePlane (QuPath v0.5/v0.6): z and t of a 2D plane. */
public class ImagePlane {
    private static final ImagePlane DEFAULT = new ImagePlane(0, 0);
    private final int z;
    private final int t;

    private ImagePlane(int z, int t) {
        this.z = z;
        this.t = t;
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
