package milsilstub;

import java.awt.Graphics2D;
import java.awt.RenderingHints;
import java.awt.image.BufferedImage;
import java.io.File;
import java.io.IOException;
import java.net.URI;
import java.util.Collection;
import java.util.Collections;

import javax.imageio.ImageIO;

import qupath.lib.images.servers.ImageServer;
import qupath.lib.images.servers.ImageServerMetadata;
import qupath.lib.images.servers.PixelCalibration;
import qupath.lib.regions.RegionRequest;

/**
 * Test plumbing: an ImageServer over one PNG, as QuPath 0.6 reads an image file (ImageJServer
 * or Bio-Formats on a flat file: one resolution level, one tile the size of the image;
 * qupath-core-processing/src/main/java/qupath/imagej/images/servers/ImageJServer.java,
 * ImageServerMetadata.Builder.build()). readRegion follows
 * qupath-core/src/main/java/qupath/lib/images/servers/AbstractTileableImageServer.java
 * readRegion, RGB branch: the output is round(width / downsample) x round(height /
 * downsample) pixels (at least 1) and the level-0 tile is drawn into it with Java2D scaled by
 * 1/downsample under VALUE_INTERPOLATION_BILINEAR: bilinear sampling at each output pixel's
 * centre, which at downsample 2 is the 2x2 mean and at 3 the middle pixel of each 3x3 block
 * (no area averaging). Pixels outside the image are black. Counts reads and keeps the largest
 * read (pixels). getURIs() names the PNG, or the slide file the image stands for (a
 * whole-slide file holding the same pixels, which a milsil server may read).
 */
public class PngImageServer implements ImageServer<BufferedImage> {
    private final String path;
    private final URI uri;
    private final ImageServerMetadata metadata;
    private final BufferedImage image;
    public int reads;
    public long largestRead;
    /** µm per pixel of getPixelCalibration(); NaN: an uncalibrated image (QuPath answers NaN). */
    public double pixelSizeMicrons = 0.5;

    public PngImageServer(String path) throws IOException {
        this(path, null);
    }

    public PngImageServer(String path, String slide) throws IOException {
        this(path, slide, new File(path).getName(), false);
    }

    /**
     * `name`: the metadata's name (QuPath's file-backed servers name the image after its file;
     * null: none). `noFile`: an image with no file behind it (pasted, generated): no URIs, and
     * its path is the metadata's random UUID, as QuPath's ImageServerMetadata.Builder.build().
     */
    public PngImageServer(String path, String slide, String name, boolean noFile) throws IOException {
        this.metadata = new ImageServerMetadata.Builder(PngImageServer.class,
            noFile ? null : new File(path).getAbsolutePath()).name(name).build();
        this.path = metadata.getPath();
        this.uri = noFile ? null : new File(slide == null ? path : slide).getAbsoluteFile().toURI();
        BufferedImage raw = ImageIO.read(new File(path));
        if (raw == null) {
            throw new IOException("not an image: " + path);
        }
        image = new BufferedImage(raw.getWidth(), raw.getHeight(), BufferedImage.TYPE_INT_RGB);
        Graphics2D g = image.createGraphics();
        g.drawImage(raw, 0, 0, null);
        g.dispose();
    }

    @Override
    public String getPath() {
        return path;
    }

    @Override
    public Collection<URI> getURIs() {
        return uri == null ? Collections.<URI>emptyList() : Collections.singletonList(uri);
    }

    /** One level (QuPath: ImageServerMetadata without levels has one, at downsample 1). */
    @Override
    public double[] getPreferredDownsamples() {
        return new double[] {1.0};
    }

    @Override
    public int getWidth() {
        return image.getWidth();
    }

    @Override
    public int getHeight() {
        return image.getHeight();
    }

    @Override
    public boolean isRGB() {
        return true;
    }

    @Override
    public PixelCalibration getPixelCalibration() {
        return new PixelCalibration(pixelSizeMicrons);
    }

    @Override
    public BufferedImage readRegion(RegionRequest request) throws IOException {
        reads++;
        double ds = request.getDownsample();
        int w = (int) Math.max(1, Math.round(request.getWidth() / ds));
        int h = (int) Math.max(1, Math.round(request.getHeight() / ds));
        largestRead = Math.max(largestRead, (long) w * h);
        BufferedImage out = new BufferedImage(w, h, BufferedImage.TYPE_INT_RGB);
        Graphics2D g = out.createGraphics();
        g.setRenderingHint(RenderingHints.KEY_INTERPOLATION, RenderingHints.VALUE_INTERPOLATION_BILINEAR);
        g.drawImage(image, 0, 0, w, h, request.getX(), request.getY(),
            request.getX() + request.getWidth(), request.getY() + request.getHeight(), null);
        g.dispose();
        return out;
    }

    /** The image's name (the PNG's file name, or as given) and its path. */
    @Override
    public ImageServerMetadata getMetadata() {
        return metadata;
    }

    @Override
    public void close() {
    }
}
