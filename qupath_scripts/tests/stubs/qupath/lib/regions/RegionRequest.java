package qupath.lib.regions;

import qupath.lib.roi.interfaces.ROI;

/**
 * Stand-in for qupath.lib.regions.RegionRequest (QuPath v0.5/v0.6): an ImageRegion plus the
 * server path and a downsample. x, y, width, height are level-0 pixels.
 */
public class RegionRequest extends ImageRegion {
    private final String path;
    private final double downsample;

    private RegionRequest(String path, double downsample, int x, int y, int width, int height) {
        super(x, y, width, height);
        this.path = path;
        this.downsample = downsample;
    }

    /** QuPath: public static RegionRequest createInstance(String path, double downsample, int x, int y, int width, int height). */
    public static RegionRequest createInstance(String path, double downsample, int x, int y, int width, int height) {
        return new RegionRequest(path, downsample, x, y, width, height);
    }

    /**
     * QuPath: public static RegionRequest createInstance(String path, double downsample, ROI roi):
     * the ROI's bounds as ImageRegion.createInstance(ROI) takes them (QuPath v0.6.0,
     * qupath-core/src/main/java/qupath/lib/regions/ImageRegion.java): x and y cast to int
     * (towards zero, not floor), the far edges rounded up.
     */
    public static RegionRequest createInstance(String path, double downsample, ROI roi) {
        int x = (int) roi.getBoundsX();
        int y = (int) roi.getBoundsY();
        int x2 = (int) Math.ceil(roi.getBoundsX() + roi.getBoundsWidth());
        int y2 = (int) Math.ceil(roi.getBoundsY() + roi.getBoundsHeight());
        return new RegionRequest(path, downsample, x, y, x2 - x, y2 - y);
    }

    /** QuPath: public String getPath(). */
    public String getPath() {
        return path;
    }

    /** QuPath: public double getDownsample(). */
    public double getDownsample() {
        return downsample;
    }
}
