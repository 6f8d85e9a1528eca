/*
 * milsil: lib/MilsilPixels.groovy -- pixels of a level-0 rectangle at a downsample, shrunk by
 * milsil's one resampling rule (area averaging, milsil.data.shrink), so that the pixels the
 * scripts stream equal those the library and the server read from files and slides.
 *
 * QuPath calls: ImageServer.getPreferredDownsamples/readRegion/getPath,
 * RegionRequest.createInstance(path, downsample, x, y, w, h).
 */

import qupath.lib.regions.RegionRequest

class MilsilPixels {

    /**
     * The level-0 rectangle [x, y, w, h] at `downsample` (round(w / downsample) x round(h /
     * downsample) pixels, as readRegion gives), shrunk by area averaging: milsil's one
     * resampling rule (milsil.data.shrink), which slide pyramids hold. QuPath 0.6 shrinks a
     * region from the nearest level at or below the downsample with Java2D bilinear sampling
     * (qupath-core AbstractTileableImageServer.readRegion, RGB branch): the 2x2 mean at twice
     * a level's downsample, but the middle pixel of each 3x3 block at three times. So the
     * region is read at a level (for a whole downsample the deepest one it is a whole
     * multiple of, as milsil.wsi.reader.Slide.read chooses) and averaged here: output pixel j
     * is the mean (rounded half up) of the level's pixels whose centres lie in
     * (j f, (j + 1) f], f = downsample / level, as Pillow's BOX. At the level itself, or
     * twice it, readRegion's pixels are already those.
     */
    static Object readArea(Object server, double downsample, int x, int y, int w, int h) {
        boolean whole = Math.abs(downsample - Math.round(downsample)) < 1e-9
        double level = 1.0d
        for (double d : (double[]) server.getPreferredDownsamples()) {
            double ratio = downsample / d
            boolean multiple = !whole || Math.abs(ratio - Math.round(ratio)) < 1e-3
            if (d <= downsample * (1 + 1e-9) && d > level && multiple) {
                level = d
            }
        }
        double f = downsample / level
        if (Math.abs(f - Math.round(f)) < 1e-3) {
            f = (double) Math.round(f)
        }
        if (Math.abs(f - 1) < 1e-9 || Math.abs(f - 2) < 1e-9) {
            return server.readRegion(RegionRequest.createInstance(server.getPath(), downsample, x, y, w, h))
        }
        java.awt.image.BufferedImage src = (java.awt.image.BufferedImage) server.readRegion(
            RegionRequest.createInstance(server.getPath(), level, x, y, w, h))
        int sw = src.getWidth()
        int sh = src.getHeight()
        int[] rgb = src.getRGB(0, 0, sw, sh, null, 0, sw)
        int ow = (int) Math.max(1, Math.round(w / downsample))
        int oh = (int) Math.max(1, Math.round(h / downsample))
        int[] out = new int[ow * oh]
        for (int i = 0; i < oh; i++) {
            int r0 = Math.min(sh - 1, (int) (i * f + 0.5d))
            int r1 = Math.max(r0 + 1, Math.min(sh, (int) ((i + 1) * f + 0.5d)))
            for (int j = 0; j < ow; j++) {
                int c0 = Math.min(sw - 1, (int) (j * f + 0.5d))
                int c1 = Math.max(c0 + 1, Math.min(sw, (int) ((j + 1) * f + 0.5d)))
                long red = 0L
                long green = 0L
                long blue = 0L
                for (int r = r0; r < r1; r++) {
                    for (int c = c0; c < c1; c++) {
                        int v = rgb[r * sw + c]
                        red += (v >> 16) & 0xff
                        green += (v >> 8) & 0xff
                        blue += v & 0xff
                    }
                }
                long n = (long) (r1 - r0) * (c1 - c0)
                out[i * ow + j] = (int) ((((red + n.intdiv(2)).intdiv(n)) << 16) |
                    (((green + n.intdiv(2)).intdiv(n)) << 8) | ((blue + n.intdiv(2)).intdiv(n)))
            }
        }
        java.awt.image.BufferedImage image = new java.awt.image.BufferedImage(ow, oh,
            java.awt.image.BufferedImage.TYPE_INT_RGB)
        image.setRGB(0, 0, ow, oh, out, 0, ow)
        return image
    }
}
