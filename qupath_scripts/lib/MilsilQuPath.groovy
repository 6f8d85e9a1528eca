/*
 * MilsilQuPath.groovy -- the QuPath side shared by the milsil scripts: the image's name,
 * reading pixels with ImageServer.readRegion, turning the server's GeoJSON into QuPath
 * objects, probability tiles. No model logic lives here (that is the server's job) and no
 * gRPC either (that is MilsilClient's): every method takes the client as an argument.
 * Its neighbours: MilsilSettings (reading settings), MilsilSlidePaths (where the server
 * sees a slide), MilsilProgress (progress lines), MilsilBags (labelled bags), MilsilPixels
 * (a region's pixels, area-averaged), MilsilGeoJSON (the server's GeoJSON as QuPath objects).
 *
 * Every method only *builds* objects and results; none touches a hierarchy. The scripts add
 * what was built at the very end, so that a failure half-way changes nothing in the image.
 *
 * QuPath API used (stable from v0.4 to v0.7): ImageServer.getPath/getWidth/getHeight/getMetadata
 * (pixels through MilsilPixels, GeoJSON through MilsilGeoJSON),
 * ImageServerMetadata.getName, PathObject.getName/getPathClass/getID, ROI.getBounds*, ROI.contains, ROI.getArea,
 * RoiTools.intersection, PathROIObject.setROI (clears the measurements),
 * MeasurementList.asMap/put, PathObjects.createTileObject,
 * ROIs.createRectangleROI, ProjectImageEntry.getImageName, and GsonTools.getInstance().toJson(roi)
 * (a ROI as a GeoJSON geometry) for slides the server reads itself. Same Groovy subset as
 * MilsilClient (Groovy 2.4 and 4; getters called explicitly).
 *
 * Regions of any size: tiles are read one at a time, in row order (the order the server's
 * Heatmap/Annotate contract asks for), and sent as they are read, so QuPath never holds a
 * region's pixels at once; long regions print progress lines.
 */

import qupath.lib.io.GsonTools
import qupath.lib.objects.PathObject
import qupath.lib.objects.PathObjects
import qupath.lib.regions.ImagePlane
import qupath.lib.roi.ROIs
import qupath.lib.roi.RoiTools
import qupath.lib.roi.interfaces.ROI

class MilsilQuPath {
    // ------------------------------------------------------------------ the image and the model

    /**
     * The image's name as users know it, for every line, CSV row and patient id: the project
     * entry's name in a project; else the name in the image's metadata (QuPath 0.6:
     * ImageServer.getMetadata().getName(), qupath-core .../images/servers/ImageServer.java and
     * ImageServerMetadata.java; the name the viewer shows); only when the image has no name, its
     * server path's file name, or the path itself (for an image with no file behind it that is
     * a random id: ImageServerMetadata.Builder.build() sets a UUID when no path is given).
     */
    static String imageName(Object entry, Object imageData) {
        if (entry != null) {
            return entry.getImageName()
        }
        Object server = imageData.getServer()
        Object metadata = server.getMetadata()
        String named = metadata == null ? null : metadata.getName()
        if (named != null && named.trim()) {
            return named.trim()
        }
        String path = server.getPath()
        String name = new File(path.replaceAll('[?#].*$', '')).getName()
        return name ?: path
    }


    /**
     * A region (an annotation, a TMA core) as every line names it: 'whole image' for null,
     * the object's name, else its class (or 'annotation') and the first 8 characters of its
     * id (PathObject.getID(), a UUID), so that two unnamed annotations can be told apart.
     */
    static String regionName(PathObject o) {
        if (o == null) {
            return 'whole image'
        }
        if (o.getName()) {
            return o.getName()
        }
        String kind = o.getPathClass() == null ? (o.isTMACore() ? 'core' : 'annotation') : o.getPathClass().toString()
        return kind + ' ' + o.getID().toString().substring(0, 8)
    }

    /** Model named in the settings, or the newest one on the server; checked before any pixel is read. */
    static Map resolveModel(Object client, Object configured) {
        String name = configured == null ? '' : configured.toString().trim()
        if (!name) {
            List<Map> models = client.listModels()
            if (models.isEmpty()) {
                throw failure('FAILED_PRECONDITION', 'the server has no models; train or import one first')
            }
            return models.get(0)
        }
        return client.getModel(name)
    }

    /** A one-line failure (same format as the client's and the server's). */
    static MilsilFailure failure(String code, String message) {
        return new MilsilFailure(code, message)
    }


    /**
     * Pixels (at the region's downsample) of real image the server needs around a region on
     * each side for seamless output: the model's `context_pixels`, which the server computes
     * (4 for BagNet-9); where the image ends, the server mirrors it.
     */
    static int contextPixels(Map model) {
        Object context = model.get('context_pixels')
        if (context == null) {
            throw new IllegalStateException('the descriptor milsil_v1.desc predates Model.context_pixels; ' +
                'use the one that came with the server (python proto/generate.py writes it)')
        }
        return ((Number) context).intValue()
    }

    // ------------------------------------------------------------------ pixels

    /**
     * Level-0 rectangle of a ROI (or the whole image when roi is null), widened by `margin`
     * level-0 pixels and clipped to the image, as integers [x, y, width, height].
     */
    static Map rect(Object server, ROI roi, double margin) {
        double x0 = roi == null ? 0 : roi.getBoundsX()
        double y0 = roi == null ? 0 : roi.getBoundsY()
        double x1 = roi == null ? server.getWidth() : roi.getBoundsX() + roi.getBoundsWidth()
        double y1 = roi == null ? server.getHeight() : roi.getBoundsY() + roi.getBoundsHeight()
        int ix0 = (int) Math.max(0, Math.floor(x0 - margin))
        int iy0 = (int) Math.max(0, Math.floor(y0 - margin))
        int ix1 = (int) Math.min((double) server.getWidth(), Math.ceil(x1 + margin))
        int iy1 = (int) Math.min((double) server.getHeight(), Math.ceil(y1 + margin))
        return [x: ix0, y: iy0, width: Math.max(0, ix1 - ix0), height: Math.max(0, iy1 - iy0)]
    }

    /**
     * Reads `area` (level-0 rect) at `downsample` in tiles of `tileSize` output pixels, in row
     * order, and calls sendTile(tile map) for each, reading each tile only when it is sent.
     * Tiles overlap by one output pixel so that rounding never leaves a gap. `progress`
     * (optional; anything with `update(long sent, long total, double eta)`, e.g. a
     * MilsilProgress) hears of every tile sent.
     */
    static int streamTiles(Object client, Object server, Map area, double downsample, int tileSize, Closure sendTile,
                           Object progress = null) {
        int step = Math.max(1, (int) Math.floor(tileSize * downsample))
        int overlap = (int) Math.ceil(downsample)
        int count = 0
        int ax = (int) area.get('x')
        int ay = (int) area.get('y')
        int aw = (int) area.get('width')
        int ah = (int) area.get('height')
        long total = (long) Math.ceil(aw / (double) step) * (long) Math.ceil(ah / (double) step)
        for (int y = ay; y < ay + ah; y += step) {
            for (int x = ax; x < ax + aw; x += step) {
                int w = Math.min(step + overlap, ax + aw - x)
                int h = Math.min(step + overlap, ay + ah - y)
                def image = MilsilPixels.readArea(server, downsample, x, y, w, h)
                sendTile.call(client.rgbTile(image, (double) x, (double) y, downsample))
                count++
                if (progress != null) {
                    progress.update(count, total, -1.0d)
                }
            }
        }
        return count
    }

    /**
     * Square patches of `patchSize` output pixels on a grid over the ROI's bounds whose centre
     * lies inside the ROI (a bag, as the paper crops images exhaustively); at most `maxPatches`,
     * evenly spaced when there are more.
     */
    static List<Map> patchTiles(Object client, Object server, ROI roi, double downsample, int patchSize, int maxPatches) {
        int side = (int) Math.round(patchSize * downsample)
        Map r = rect(server, roi, 0)
        List<List<Integer>> origins = []
        int rx = (int) r.get('x')
        int ry = (int) r.get('y')
        for (int y = ry; y + side <= ry + (int) r.get('height'); y += side) {
            for (int x = rx; x + side <= rx + (int) r.get('width'); x += side) {
                if (roi == null || roi.contains(x + side / 2.0d, y + side / 2.0d)) {
                    origins.add([x, y])
                }
            }
        }
        if (maxPatches > 0 && origins.size() > maxPatches) {
            List<List<Integer>> kept = []
            for (int i = 0; i < maxPatches; i++) {
                kept.add(origins.get((int) Math.floor(i * origins.size() / (double) maxPatches)))
            }
            origins = kept
        }
        List<Map> tiles = []
        for (List<Integer> o : origins) {
            def image = MilsilPixels.readArea(server, downsample, (int) o.get(0), (int) o.get(1), side, side)
            if (image.getWidth() != patchSize || image.getHeight() != patchSize) {
                image = resize(image, patchSize)
            }
            tiles.add(client.rgbTile(image, (double) o.get(0), (double) o.get(1), downsample))
        }
        return tiles
    }

    /** readRegion may be off by a pixel at fractional downsamples: bags need equal tiles. */
    static Object resize(Object image, int size) {
        java.awt.image.BufferedImage out = new java.awt.image.BufferedImage(size, size,
            java.awt.image.BufferedImage.TYPE_INT_RGB)
        java.awt.Graphics2D g = out.createGraphics()
        g.drawImage((java.awt.Image) image, 0, 0, size, size, null)
        g.dispose()
        return out
    }

    // ------------------------------------------------------------------ heatmaps -> objects

    /**
     * Annotate one region: stream its tiles (plus the model's `context_pixels` of context where
     * the image has it), parse the returned QuPath GeoJSON with PathIO and clip the objects to the
     * parent's ROI. With `serverSlides`, the server reads the slide itself (annotateOnServer)
     * when it can. Returns [objects: List<PathObject>, geojson: String, response: Map (with the
     * region's `familiarity`, for MilsilTrust), serverRead: true when the server read the slide
     * (each object then carries its own slide tile's "milsil OOD score")].
     * `label` names the region in progress lines ("slide.svs: Tumor 1"); `log` prints them.
     */
    static Map annotate(Object client, Map s, Object server, Map model, PathObject parent, String label = null,
                        Closure log = null) {
        if (MilsilSettings.flag(s, 'serverSlides')) {
            Map done = annotateOnServer(client, s, server, model, parent, label, log)
            if (done != null) {
                return done
            }
        }
        ROI roi = parent == null ? null : parent.getROI()
        double ds = MilsilSettings.num(s.get('downsample'))
        Map region = rect(server, roi, 0)
        if ((int) region.get('width') < 1 || (int) region.get('height') < 1) {
            throw failure('INVALID_ARGUMENT', 'the region lies outside the image')
        }
        Map area = rect(server, roi, contextPixels(model) * ds)
        Map config = [
            heatmap           : [model : model.get('name'),
                                 region: [x: region.get('x'), y: region.get('y'), width: region.get('width'),
                                          height: region.get('height'), downsample: ds],
                                 stride: MilsilSettings.integer(s.get('stride'))],
            class_name        : (s.get('className') ?: '').toString(),
            threshold_on      : 'PROBABILITY',
            threshold         : MilsilSettings.num(s.get('threshold')),
            outline           : outlineSettings(s),
            pixel_size_um     : pixelSizeMicrons(server),
            classification    : (s.get('classification') ?: '').toString(),
            color             : MilsilSettings.list(s.get('color')).collect { String c -> Integer.parseInt(c) },
        ]
        MilsilProgress progress = new MilsilProgress(label ?: 'region', s.get('progressEverySeconds'), log)
        Map response = client.annotate(config, { Closure sendTile ->
            progress.restart()
            streamTiles(client, server, area, ds, MilsilSettings.integer(s.get('tileSize')), sendTile, progress)
        })
        String geojson = (String) response.get('geojson')
        return [objects: clipped(MilsilGeoJSON.read(geojson, log), roi), geojson: geojson, response: response]
    }


    /**
     * The outline clean-up of the settings (the contract's OutlineSettings: 0 = the server's
     * default, negative = off): areas in um^2 and distances in um with the image's pixel
     * calibration (pixelSizeMicrons), in level-0 pixels without it; `simplify` a fraction of
     * one heatmap sample.
     */
    static Map outlineSettings(Map s) {
        return [min_area      : MilsilSettings.num(s.get('minAreaMicrons')),
                min_hole_area : MilsilSettings.num(s.get('minHoleAreaMicrons')),
                smooth_sigma  : MilsilSettings.num(s.get('smoothSigmaMicrons')),
                merge_distance: MilsilSettings.num(s.get('mergeDistanceMicrons')),
                simplify      : MilsilSettings.num(s.get('simplify'))]
    }

    /**
     * QuPath's pixel calibration, um per level-0 pixel (averaged over x and y), sent as
     * `pixel_size_um`; 0 (the server then takes the outline settings as pixels) when the
     * image has none: QuPath answers NaN.
     */
    static double pixelSizeMicrons(Object server) {
        double um = server.getPixelCalibration().getAveragedPixelSizeMicrons()
        return Double.isNaN(um) || Double.isInfinite(um) || um <= 0 ? 0d : um
    }

    /**
     * One line when the server computes heatmaps in a fast mode (the model's
     * `heatmap_precision`: "tf32" or "bf16", from `milsil serve --tf32` or `--bf16`): the
     * outlines, cell scores and probability tiles then come from logits within about
     * `expected_max_logit_deviation` of exact. Nothing when exact, or from a server too old
     * to say.
     */
    static void sayPrecision(Map model, String name, Closure log) {
        Object mode = model.get('heatmap_precision')
        if (mode == null || mode.toString() in ['', 'exact']) {
            return
        }
        Object deviation = model.get('expected_max_logit_deviation')
        String cost = deviation instanceof Number && ((Number) deviation).doubleValue() > 0d ?
            ' (logits within about ' + String.format(Locale.ROOT, '%.1e', ((Number) deviation).doubleValue()) +
                ' of exact)' : ''
        MilsilProgress.say(log, 'milsil: ' + name + ': the server computes heatmaps in fast mode ' + mode + cost)
    }

    /** One line when the image has no pixel calibration: its outline settings are pixels. */
    static void sayOutlineUnits(Object server, String name, Closure log) {
        if (pixelSizeMicrons(server) == 0d) {
            MilsilProgress.say(log, 'milsil: ' + name + ': the image has no pixel calibration: the outline ' +
                'settings (minAreaMicrons, minHoleAreaMicrons, smoothSigmaMicrons, mergeDistanceMicrons) are ' +
                'taken as pixels')
        }
    }

    /**
     * The objects clipped to `roi` (a rectangle clips nothing: the region is its bounds), with
     * all their measurements; `area` becomes the clipped outline's. QuPath's
     * PathROIObject.setROI clears the measurement list whenever the ROI object changes
     * (v0.4 to v0.7; RoiTools.intersection always returns a new ROI), so the server's
     * measurements are copied first and put back after the new ROI.
     */
    static List<PathObject> clipped(List<PathObject> objects, ROI roi) {
        List<PathObject> kept = []
        boolean clip = roi != null && roi.getRoiName() != 'Rectangle'
        for (PathObject o : objects) {
            if (clip) {
                ROI inside = RoiTools.intersection(o.getROI(), roi)
                if (inside == null || inside.isEmpty() || inside.getArea() <= 0) {
                    continue
                }
                Map<String, Number> measurements = new LinkedHashMap<String, Number>(o.getMeasurementList().asMap())
                o.setROI(inside)
                def list = o.getMeasurementList()
                for (Map.Entry<String, Number> m : measurements.entrySet()) {
                    list.put(m.getKey(), m.getValue().doubleValue())
                }
                list.put('area', inside.getArea())
            }
            kept.add(o)
        }
        return kept
    }

    // ------------------------------------------------------------------ slides the server reads

    /**
     * Annotate one region by letting the server read the slide (AnnotateSlide with the
     * annotation's ROI as a GeoJSON geometry): no pixels cross the network. Needs the image
     * to be a local file that `slidePathMap` maps to a path under the server's --slide-root.
     * Returns null, after one line saying why, when the server cannot see the slide (the
     * caller then streams pixels).
     */
    static Map annotateOnServer(Object client, Map s, Object server, Map model, PathObject parent, String label,
                                Closure log) {
        String name = label ?: 'region'
        String remote = MilsilSlidePaths.remote(s, server, name, log)
        if (remote == null) {
            return null
        }
        ROI roi = parent == null ? null : parent.getROI()
        Map request = [
            config            : [model      : model.get('name'), path: remote, stride: MilsilSettings.integer(s.get('stride')),
                                 downsample : MilsilSettings.num(s.get('downsample')), tissue_only: false,
                                 class_name : (s.get('className') ?: '').toString(),
                                 roi        : roi == null ? '' : GsonTools.getInstance().toJson(roi),
                                 outline    : outlineSettings(s), pixel_size_um: pixelSizeMicrons(server)],
            threshold         : MilsilSettings.num(s.get('threshold')),
        ]
        MilsilProgress progress = new MilsilProgress(name, s.get('progressEverySeconds'), log)
        try {
            Map result = client.annotateSlide(request, { Map p ->
                if (p.get('stage') == 'heatmap') {
                    progress.update(((Number) p.get('tiles_done')).longValue(),
                        ((Number) p.get('tiles_total')).longValue(), ((Number) p.get('eta_seconds')).doubleValue())
                }
            })
            String geojson = (String) result.get('geojson')
            Map summary = (Map) result.get('summary')
            return [objects: MilsilGeoJSON.read(geojson, log), geojson: geojson,
                    response: [class_name: summary.get('class_name'), familiarity: summary.get('familiarity')],
                    serverRead: true]
        } catch (Throwable t) {
            MilsilSlidePaths.cannotRead(t, name, log)
            return null
        }
    }


    /**
     * Per-sample probabilities as tile objects (for QuPath's measurement maps): a Heatmap call
     * with stride `tileStride`; each sample becomes its grid cell, centred on the sample the way
     * the server draws its outlines (MilsilGrid.cellEdge; clipped to the region, so the tiles
     * cover it exactly), with "milsil p(<class>)" measurements.
     */
    static List<PathObject> probabilityTiles(Object client, Map s, Object server, Map model, PathObject parent,
                                             String label = null, Closure log = null) {
        ROI roi = parent == null ? null : parent.getROI()
        double ds = MilsilSettings.num(s.get('downsample'))
        Map region = rect(server, roi, 0)
        Map area = rect(server, roi, contextPixels(model) * ds)
        Map config = [model : model.get('name'),
                      region: [x: region.get('x'), y: region.get('y'), width: region.get('width'),
                               height: region.get('height'), downsample: ds],
                      stride: MilsilSettings.integer(s.get('tileStride')), value_type: 'VALUE_TYPE_FLOAT32',
                      include_probabilities: true]
        double rx0 = MilsilSettings.num(region.get('x'))
        double ry0 = MilsilSettings.num(region.get('y'))
        // The region's size in region pixels, as the server rounds it (Python round: half-even).
        double rw = Math.rint(MilsilSettings.num(region.get('width')) / ds)
        double rh = Math.rint(MilsilSettings.num(region.get('height')) / ds)
        List<PathObject> tiles = []
        BitSet seen = new BitSet()   // request tiles overlap: samples may repeat
        MilsilProgress progress = new MilsilProgress((label ?: 'region') + ' (probability tiles)', s.get('progressEverySeconds'), log)
        client.heatmap(config, { Closure sendTile ->
            progress.restart()
            tiles.clear()
            seen.clear()
            streamTiles(client, server, area, ds, MilsilSettings.integer(s.get('tileSize')), sendTile, progress)
        }, { Map header, Map t ->
            // Each reply as it comes (while tiles are still being sent): only the objects stay.
            List<String> classes = (List<String>) header.get('class_names')
            int stride = ((Number) header.get('stride')).intValue()
            int gridRows = ((Number) header.get('rows')).intValue()
            int gridCols = ((Number) header.get('cols')).intValue()
            int rows = (int) t.get('rows')
            int cols = (int) t.get('cols')
            float[] probs = (float[]) t.get('probabilities')
            for (int i = 0; i < rows; i++) {
                for (int j = 0; j < cols; j++) {
                    // Sample (r, c) is computed at region pixel (c * stride, r * stride), whose
                    // centre is level-0 (rx0 + ds * (c * stride + 0.5), ...) (the header's
                    // origin_x + c * step). Its cell runs half a stride either side of that,
                    // clipped to the region: MilsilGrid.cellEdge, so the tiles tile
                    // the region without gaps or overlaps, like the server's outlines.
                    int r = (int) t.get('row') + i
                    int c = (int) t.get('col') + j
                    double x0 = rx0 + ds * MilsilGrid.cellEdge(c, gridCols, stride, rw)
                    double x1 = rx0 + ds * MilsilGrid.cellEdge(c + 1, gridCols, stride, rw)
                    double y0 = ry0 + ds * MilsilGrid.cellEdge(r, gridRows, stride, rh)
                    double y1 = ry0 + ds * MilsilGrid.cellEdge(r + 1, gridRows, stride, rh)
                    double cx = (x0 + x1) / 2
                    double cy = (y0 + y1) / 2
                    int key = r * gridCols + c
                    if (seen.get(key) || x1 <= x0 || y1 <= y0 || (roi != null && !roi.contains(cx, cy))) {
                        continue
                    }
                    seen.set(key)
                    PathObject tile = PathObjects.createTileObject(
                        ROIs.createRectangleROI(x0, y0, x1 - x0, y1 - y0, ImagePlane.getDefaultPlane()))
                    for (int k = 0; k < classes.size(); k++) {
                        tile.getMeasurementList().put('milsil p(' + classes.get(k) + ')',
                            (double) probs[(k * rows + i) * cols + j])
                    }
                    tiles.add(tile)
                }
            }
        })
        return tiles
    }

    /** Value of a QuPath batch attribute ("qupath.script.batchIndex", ...) or `otherwise`. */
    static Object batch(Object binding, String key, Object otherwise) {
        try {
            Map vars = binding.getVariables()
            return vars.containsKey(key) ? vars.get(key) : otherwise
        } catch (Throwable ignored) {
            return otherwise
        }
    }
}
