package qupath.lib.images.servers;

import java.io.IOException;
import java.net.URI;
import java.util.Collection;

import qupath.lib.regions.RegionRequest;

/**
 * Stand-in for qupath.lib.images.servers.ImageServer&lt;T&gt; (QuPath v0.5/v0.6: "public
 * interface ImageServer&lt;T&gt; extends AutoCloseable"); only the methods the scripts call.
 */
public interface ImageServer<T> extends AutoCloseable {
    /** QuPath: public String getPath(). */
    String getPath();

    /**
     * QuPath: public Collection&lt;URI&gt; getURIs() ("the URIs for images required for this
     * server"; a local file's URI for OpenSlide and Bio-Formats servers).
     */
    Collection<URI> getURIs();

    /**
     * QuPath: public ImageServerMetadata getMetadata() (qupath-core .../images/servers/ImageServer.java,
     * v0.6.0): the image's metadata, its name included.
     */
    ImageServerMetadata getMetadata();

    /**
     * QuPath: public double[] getPreferredDownsamples() ("an array of downsample factors
     * supported by the server": its pyramid levels, 1 first).
     */
    double[] getPreferredDownsamples();

    /** QuPath: public int getWidth() (full resolution). */
    int getWidth();

    /** QuPath: public int getHeight() (full resolution). */
    int getHeight();

    /** QuPath: public boolean isRGB(). */
    boolean isRGB();

    /** QuPath: public default PixelCalibration getPixelCalibration(). */
    PixelCalibration getPixelCalibration();

    /** QuPath: public default T readRegion(RegionRequest request) throws IOException. */
    T readRegion(RegionRequest request) throws IOException;

    /** QuPath: AutoCloseable.close(). */
    @Override
    void close() throws Exception;
}
