package qupath.lib.regions;

/** Stand-in for qupath.lib.regions.ImageRegion: an integer level-0 rectangle on a plane. */
public class ImageRegion {
    private final int x;
    private final int y;
    private final int width;
    private final int height;

    protected ImageRegion(int x, int y, int width, int height) {
        this.x = x;
        this.y = y;
        this.width = width;
        this.height = height;
    }

    public int getX() {
        return x;
    }

    public int getY() {
        return y;
    }

    public int getWidth() {
        return width;
    }

    public int getHeight() {
        return height;
    }

    public int getMaxX() {
        return x + width;
    }

    public int getMaxY() {
        return y + height;
    }
}
