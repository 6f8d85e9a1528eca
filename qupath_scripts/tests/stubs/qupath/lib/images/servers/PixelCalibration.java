package qupath.lib.images.servers;

/** Stand-in for qupath.lib.images.servers.PixelCalibration (QuPath v0.5/v0.6). */
public class PixelCalibration {
    private final double micronsPerPixel;

    public PixelCalibration(double micronsPerPixel) {
        this.micronsPerPixel = micronsPerPixel;
    }

    /** QuPath: public boolean hasPixelSizeMicrons(). */
    public boolean hasPixelSizeMicrons() {
        return !Double.isNaN(micronsPerPixel);
    }

    /** QuPath: public double getAveragedPixelSizeMicrons(). */
    public double getAveragedPixelSizeMicrons() {
        return micronsPerPixel;
    }
}
