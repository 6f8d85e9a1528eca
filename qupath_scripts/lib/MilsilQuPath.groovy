/*
 * MilsilQuPath.groovy -- the QuPath side shared by the milsil scripts: reading pixels with
 * ImageServer.readRegion, turning the server's GeoJSON into QuPath objects, collecting
 * labelled bags from a project. No model logic lives here (that is the server's job) and no
 * gRPC either (that is MilsilClient's): every method takes the client as an argument.
 *
 * Every method only *builds* objects and results; none touches a hierarchy. The scripts add
 * what was built at the very end, so that a failure half-way changes nothing in the image.
 *
 * QuPath API used (stable from v0.4 to v0.7): RegionRequest.createInstance(path, downsample,
 * x, y, w, h), ImageServer.readRegion/getPath/getWidth/getHeight, ROI.getBounds*,
 * ROI.contains, ROI.getArea, RoiTools.intersection, PathROIObject.setROI (clears the
 * measurements), MeasurementList.asMap/put, PathIO.readObjectsFromGeoJSON,
 * PathObjects.createTileObject, ROIs.createRectangleROI, PathClass.fromString,
 * ProjectImageEntry.getImageName/getMetadataValue/readImageData, ImageServer.getURIs and
 * GsonTools.getInstance().toJson(roi) (a ROI as a GeoJSON geometry) for slides the server
 * reads itself. Same Groovy subset as MilsilClient (Groovy 2.4 and 4; getters called
 * explicitly).
 *
 * Regions of any size: tiles are read one at a time, in row order (the order the server's
 * Heatmap/Annotate contract asks for), and sent as they are read, so QuPath never holds a
 * region's pixels at once; long regions print progress lines.
 */

import com.google.gson.JsonElement
import com.google.gson.JsonObject
import com.google.gson.JsonParser
import qupath.lib.io.GsonTools
import qupath.lib.io.PathIO
import qupath.lib.objects.PathObject
import qupath.lib.objects.PathObjects
import qupath.lib.objects.classes.PathClass
import qupath.lib.regions.ImagePlane
import qupath.lib.regions.RegionRequest
import qupath.lib.roi.ROIs
import qupath.lib.roi.RoiTools
import qupath.lib.roi.interfaces.ROI

import java.nio.charset.StandardCharsets

class MilsilQuPath {

    // ------------------------------------------------------------------ settings

    static double num(Object v) {
        if (v instanceof Number) {
            return ((Number) v).doubleValue()
        }
        return Double.parseDouble(v.toString().trim())
    }

    static int integer(Object v) {
        return (int) Math.round(num(v))
    }

    static boolean flag(Object v) {
        if (v instanceof Boolean) {
            return (Boolean) v
        }
        String s = v == null ? '' : v.toString().trim().toLowerCase()
        return s == 'true' || s == '1' || s == 'yes'
    }

    /** A list setting: a Groovy list, or a comma-separated string (system-property overrides). */
    static List<String> list(Object v) {
        if (v == null) {
            return []
        }
        if (v instanceof Collection) {
            return ((Collection) v).collect { Object x -> x.toString() }
        }
        String s = v.toString().trim()
        if (s.startsWith('[') && s.endsWith(']')) {
            s = s.substring(1, s.length() - 1)
        }
        return s ? s.split(',').collect { String x -> x.trim() }.findAll { String x -> x } : []
    }

    /** Name of the image, for logs, CSVs and patient ids. */
    static String imageName(Object entry, Object imageData) {
        if (entry != null) {
            return entry.getImageName()
        }
        String path = imageData.getServer().getPath()
        String name = new File(path.replaceAll('[?#].*$', '')).getName()
        return name ?: path
    }

    /** Model named in the settings, or the newest one on the server; checked before any pixel is read. */
    static Map resolveModel(Object client, Object configured) {
        String name = configured == null ? '' : configured.toString().trim()
        if (!name) {
            List<Map> models = client.listModels()
            if (models.isEmpty()) {
                throw failure(client, 'FAILED_PRECONDITION', 'the server has no models; train or import one first')
            }
            return models.get(0)
        }
        return client.getModel(name)
    }

    /** A one-line failure from the client library (same format as server errors). */
    static Throwable failure(Object client, String code, String message) {
        Class failureClass = client.getClass().getDeclaredClasses().find { Class c -> c.getSimpleName() == 'Failure' }
        return (Throwable) failureClass.newInstance(code, message)
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
     * Progress) hears of every tile sent.
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
                def image = readArea(server, downsample, x, y, w, h)
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
            def image = readArea(server, downsample, (int) o.get(0), (int) o.get(1), side, side)
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
     * when it can. Returns [objects: List<PathObject>, geojson: String, response: Map].
     * `label` names the region in progress lines ("slide.svs: Tumor 1"); `log` prints them.
     */
    static Map annotate(Object client, Map s, Object server, Map model, PathObject parent, String label = null,
                        Closure log = null) {
        if (flag(s.get('serverSlides'))) {
            Map done = annotateOnServer(client, s, server, model, parent, label, log)
            if (done != null) {
                return done
            }
        }
        ROI roi = parent == null ? null : parent.getROI()
        double ds = num(s.get('downsample'))
        Map region = rect(server, roi, 0)
        if ((int) region.get('width') < 1 || (int) region.get('height') < 1) {
            throw failure(client, 'INVALID_ARGUMENT', 'the region lies outside the image')
        }
        Map area = rect(server, roi, contextPixels(model) * ds)
        Map config = [
            heatmap           : [model : model.get('name'),
                                 region: [x: region.get('x'), y: region.get('y'), width: region.get('width'),
                                          height: region.get('height'), downsample: ds],
                                 stride: integer(s.get('stride'))],
            class_name        : (s.get('className') ?: '').toString(),
            threshold_on      : 'PROBABILITY',
            threshold         : num(s.get('threshold')),
            min_area          : num(s.get('minArea')),
            simplify_tolerance: num(s.get('simplify')),
            classification    : (s.get('classification') ?: '').toString(),
            color             : list(s.get('color')).collect { String c -> Integer.parseInt(c) },
        ]
        Progress progress = new Progress(label ?: 'region', s.get('progressEverySeconds'), log)
        Map response = client.annotate(config, { Closure sendTile ->
            progress.restart()
            streamTiles(client, server, area, ds, integer(s.get('tileSize')), sendTile, progress)
        })
        String geojson = (String) response.get('geojson')
        return [objects: clipped(readGeoJSON(geojson, log), roi), geojson: geojson, response: response]
    }

    /**
     * The objects of a GeoJSON document (PathIO.readObjectsFromGeoJSON). QuPath 0.6 refuses the
     * whole document when one polygon crosses itself (ROITypeAdapters.parseGeometry: JTS
     * GeometryPrecisionReducer throws "Reduction failed, possible invalid input"); then the
     * features are read one at a time and each one QuPath refuses is skipped, with one line
     * (to `log`) naming it: the other objects are kept.
     */
    static List<PathObject> readGeoJSON(String geojson, Closure log = null) {
        Closure read = { String text ->
            PathIO.readObjectsFromGeoJSON(new ByteArrayInputStream(text.getBytes(StandardCharsets.UTF_8)))
        }
        try {
            return read(geojson)
        } catch (RuntimeException whole) {
            JsonElement doc = JsonParser.parseString(geojson)
            JsonObject top = doc.isJsonObject() ? doc.getAsJsonObject() : null
            String type = top != null && top.has('type') ? top.get('type').getAsString() : ''
            List<JsonElement> features = doc.isJsonArray() ? doc.getAsJsonArray().collect { JsonElement e -> e } :
                type == 'FeatureCollection' ? top.getAsJsonArray('features').collect { JsonElement e -> e } :
                type == 'Feature' ? [doc] : null
            if (features == null) {
                throw whole
            }
            List<PathObject> objects = []
            features.eachWithIndex { JsonElement feature, int k ->
                try {
                    objects.addAll(read(feature.toString()))
                } catch (RuntimeException e) {
                    JsonObject f = feature.isJsonObject() ? feature.getAsJsonObject() : new JsonObject()
                    JsonObject props = f.has('properties') && f.get('properties').isJsonObject() ?
                        f.getAsJsonObject('properties') : new JsonObject()
                    List<String> about = []
                    for (String key : ['name', 'classification']) {
                        JsonElement value = props.has(key) ? props.get(key) : null
                        if (value != null && value.isJsonObject() && value.getAsJsonObject().has('name')) {
                            value = value.getAsJsonObject().get('name')
                        }
                        if (value != null && value.isJsonPrimitive()) {
                            about.add(key + ' ' + value.getAsString())
                        }
                    }
                    if (f.has('id') && f.get('id').isJsonPrimitive()) {
                        about.add('id ' + f.get('id').getAsString())
                    }
                    say(log, 'milsil: skipped object ' + (k + 1) + ' of ' + features.size() +
                        (about ? ' (' + about.join(', ') + ')' : '') + ': QuPath cannot read its outline (' +
                        e.getMessage() + '; a polygon that crosses itself)')
                }
            }
            return objects
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
        String local = localFile(server)
        String remote = local == null ? null : serverPath(local, pathMap(s.get('slidePathMap')))
        String why = local == null ? 'the image is not a local file' :
            remote == null ? 'no slidePathMap entry matches ' + local : null
        if (why == null) {
            ROI roi = parent == null ? null : parent.getROI()
            Map request = [
                config            : [model      : model.get('name'), path: remote, stride: integer(s.get('stride')),
                                     downsample : num(s.get('downsample')), tissue_only: false,
                                     class_name : (s.get('className') ?: '').toString(),
                                     roi        : roi == null ? '' : GsonTools.getInstance().toJson(roi)],
                threshold         : num(s.get('threshold')),
                min_area          : num(s.get('minArea')),
                simplify_tolerance: num(s.get('simplify')),
            ]
            Progress progress = new Progress(name, s.get('progressEverySeconds'), log)
            try {
                Map result = client.annotateSlide(request, { Map p ->
                    if (p.get('stage') == 'heatmap') {
                        progress.update(((Number) p.get('tiles_done')).longValue(),
                            ((Number) p.get('tiles_total')).longValue(), ((Number) p.get('eta_seconds')).doubleValue())
                    }
                })
                String geojson = (String) result.get('geojson')
                Map summary = (Map) result.get('summary')
                return [objects: readGeoJSON(geojson, log), geojson: geojson, response: [class_name: summary.get('class_name')],
                        serverRead: true]
            } catch (Throwable t) {
                if (!(t.getClass().getSimpleName() == 'Failure' && cannotSeeSlide((String) t.code, t.getMessage()))) {
                    throw t
                }
                why = t.getMessage().replaceFirst('^milsil: ', '')
            }
        }
        say(log, 'milsil: ' + name + ': the server cannot read the slide (' + why + '); streaming pixels instead')
        return null
    }

    /** Failures of AnnotateSlide that mean "this server cannot see that slide". */
    static boolean cannotSeeSlide(String code, String message) {
        return code == 'FAILED_PRECONDITION' || code == 'NOT_FOUND' ||
            (code == 'INVALID_ARGUMENT' && (message =~ /(?i)slide|config\.path/).find())
    }

    /** The image's file on this machine (its first file: URI), or null. */
    static String localFile(Object server) {
        try {
            for (Object uri : (Collection) server.getURIs()) {
                if (uri instanceof URI && 'file'.equalsIgnoreCase(((URI) uri).getScheme())) {
                    return new File((URI) uri).getAbsolutePath()
                }
            }
        } catch (Throwable ignored) {
            return null
        }
        return null
    }

    /** slidePathMap: a Groovy map, or "local=server;local2=server2" (a system-property override). */
    static Map<String, String> pathMap(Object v) {
        Map<String, String> out = [:]
        if (v instanceof Map) {
            ((Map) v).each { Object k, Object x -> out.put(k.toString(), x == null ? '' : x.toString()) }
            return out
        }
        String text = v == null ? '' : v.toString().trim()
        if (text.startsWith('[') && text.endsWith(']')) {
            text = text.substring(1, text.length() - 1)
        }
        for (String pair : text.split(';')) {
            int eq = pair.indexOf('=')
            if (eq > 0) {
                out.put(pair.substring(0, eq).trim(), pair.substring(eq + 1).trim())
            }
        }
        return out
    }

    /**
     * `local` with the longest matching prefix of `map` replaced by its server-side path
     * (relative to a --slide-root, or absolute inside one); null when no prefix matches.
     */
    static String serverPath(String local, Map<String, String> map) {
        String path = local.replace('\\', '/')
        String best = null
        for (String key : map.keySet()) {
            String k = key.replace('\\', '/')
            while (k.length() > 1 && k.endsWith('/')) {
                k = k.substring(0, k.length() - 1)
            }
            if ((path == k || path.startsWith(k + '/')) && (best == null || k.length() > best.length())) {
                best = k
            }
        }
        if (best == null) {
            return null
        }
        String target = map.get(map.keySet().find { String key ->
            String k = key.replace('\\', '/')
            while (k.length() > 1 && k.endsWith('/')) {
                k = k.substring(0, k.length() - 1)
            }
            return k == best
        }).replace('\\', '/')
        String rest = path.substring(best.length()).replaceFirst('^/+', '')
        if (!target) {
            return rest
        }
        return target.endsWith('/') ? target + rest : target + '/' + rest
    }

    // ------------------------------------------------------------------ progress

    /** One line, to `log` (a script's println) or standard output. */
    static void say(Closure log, String line) {
        if (log != null) {
            log.call(line)
        } else {
            System.out.println(line)
        }
    }

    /** A Progress for scripts and library files that see this class only as a value. */
    static Progress progress(String label, Object everySeconds, Closure log) {
        return new Progress(label, everySeconds, log)
    }

    /**
     * Progress lines of one long region, at most every `everySeconds` and only when the
     * percentage moved: "milsil: slide.svs: Tumor 1: 38% (412/1,080 tiles), eta 2 min".
     */
    static class Progress {
        final String label
        final double every
        final Closure log
        long started = System.nanoTime()
        long last = System.nanoTime()
        int percent = -1

        Progress(String label, Object everySeconds, Closure log) {
            this.label = label
            this.every = everySeconds == null ? 30.0d : MilsilQuPath.num(everySeconds)
            this.log = log
        }

        /** From the start again (a call retried after "busy" re-sends its tiles). */
        void restart() {
            started = System.nanoTime()
            last = started
            percent = -1
        }

        /** `eta` < 0: estimated from the rate so far; `counted`: what `done` counts, and
         * anything to add ("cells, 12/30 regions"). */
        void update(long done, long total, double eta, String counted = 'tiles') {
            if (total <= 0 || done <= 0 || done >= total) {
                return
            }
            int p = (int) Math.floor(100.0d * done / total)
            long now = System.nanoTime()
            if (p == percent || (now - last) / 1e9d < every) {
                return
            }
            percent = p
            last = now
            double left = eta >= 0 ? eta : (now - started) / 1e9d / done * (total - done)
            MilsilQuPath.say(log, 'milsil: ' + label + ': ' + p + '% (' + thousands(done) + '/' + thousands(total) +
                ' ' + counted + '), eta ' + duration(left))
        }

        static String thousands(long n) {
            return String.format(Locale.US, '%,d', n)
        }

        static String duration(double seconds) {
            if (seconds < 90) {
                return Math.round(seconds) + ' s'
            }
            if (seconds < 90 * 60) {
                return Math.round(seconds / 60.0d) + ' min'
            }
            return String.format(Locale.US, '%.1f h', seconds / 3600.0d)
        }
    }

    /**
     * Per-sample probabilities as tile objects (for QuPath's measurement maps): a Heatmap call
     * with stride `tileStride`; each sample becomes its grid cell, centred on the sample the way
     * milsil/geojson.py cell_edges draws them (clipped to the region, so the tiles cover it
     * exactly), with "milsil p(<class>)" measurements.
     */
    static List<PathObject> probabilityTiles(Object client, Map s, Object server, Map model, PathObject parent,
                                             String label = null, Closure log = null) {
        ROI roi = parent == null ? null : parent.getROI()
        double ds = num(s.get('downsample'))
        Map region = rect(server, roi, 0)
        Map area = rect(server, roi, contextPixels(model) * ds)
        Map config = [model : model.get('name'),
                      region: [x: region.get('x'), y: region.get('y'), width: region.get('width'),
                               height: region.get('height'), downsample: ds],
                      stride: integer(s.get('tileStride')), value_type: 'VALUE_TYPE_FLOAT32',
                      include_probabilities: true]
        double rx0 = num(region.get('x'))
        double ry0 = num(region.get('y'))
        // The region's size in region pixels, as the server rounds it (Python round: half-even).
        double rw = Math.rint(num(region.get('width')) / ds)
        double rh = Math.rint(num(region.get('height')) / ds)
        List<PathObject> tiles = []
        BitSet seen = new BitSet()   // request tiles overlap: samples may repeat
        Progress progress = new Progress((label ?: 'region') + ' (probability tiles)', s.get('progressEverySeconds'), log)
        client.heatmap(config, { Closure sendTile ->
            progress.restart()
            tiles.clear()
            seen.clear()
            streamTiles(client, server, area, ds, integer(s.get('tileSize')), sendTile, progress)
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
                    // clipped to the region: milsil/geojson.py cell_edges, so the tiles tile
                    // the region without gaps or overlaps, like the server's outlines.
                    int r = (int) t.get('row') + i
                    int c = (int) t.get('col') + j
                    double x0 = rx0 + ds * cellEdge(c, gridCols, stride, rw)
                    double x1 = rx0 + ds * cellEdge(c + 1, gridCols, stride, rw)
                    double y0 = ry0 + ds * cellEdge(r, gridRows, stride, rh)
                    double y1 = ry0 + ds * cellEdge(r + 1, gridRows, stride, rh)
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

    /**
     * Edge `k` (0..count) of the `count` cells along an axis of `length` region pixels sampled
     * every `stride` pixels: milsil/geojson.py cell_edges (the outer edges on the region border,
     * the inner ones midway between neighbouring samples' pixel centres, clipped to the region).
     */
    static double cellEdge(int k, int count, int stride, double length) {
        if (k <= 0) {
            return 0.0d
        }
        if (k >= count) {
            return length
        }
        return Math.min(length, Math.max(0.0d, k * stride + 0.5d - stride / 2.0d))
    }

    // ------------------------------------------------------------------ labelled bags

    /**
     * Labelled bags of one image: classified annotations and classified non-missing TMA
     * cores (each one bag), and/or the whole image when its project metadata has
     * `metadataKey`. Returns maps [bag_id, label, patient_id, tiles, source].
     */
    static List<Map> imageBags(Object client, Map s, String name, Object imageData, Object entry) {
        List<String> sources = list(s.get('sources'))
        List<String> ignore = list(s.get('ignoreClasses'))
        double ds = num(s.get('downsample'))
        int patch = integer(s.get('patchSize'))
        int maxPatches = integer(s.get('maxPatchesPerBag'))
        Object server = imageData.getServer()
        def hierarchy = imageData.getHierarchy()
        List<Map> bags = []
        List<PathObject> candidates = []
        if (sources.contains('annotations')) {
            candidates.addAll(hierarchy.getAnnotationObjects())
        }
        if (sources.contains('tma') && hierarchy.getTMAGrid() != null) {
            for (Object core : hierarchy.getTMAGrid().getTMACoreList()) {
                if (!core.isMissing()) {
                    candidates.add((PathObject) core)
                }
            }
        }
        int index = 0
        for (PathObject o : candidates) {
            PathClass pc = o.getPathClass()
            ROI roi = o.getROI()
            if (pc == null || roi == null || !roi.isArea() || ignored(pc.toString(), ignore)) {
                continue
            }
            List<Map> tiles = patchTiles(client, server, roi, ds, patch, maxPatches)
            if (!tiles.isEmpty()) {
                String kind = o.getClass().getSimpleName().contains('TMA') ? 'core' : 'annotation'
                bags.add([bag_id: name + '#' + kind + '-' + bagKey(index, o.getName()), label: pc.toString(),
                          patient_id: name, tiles: tiles, source: kind])
            }
            index++
        }
        if (sources.contains('metadata') && entry != null) {
            String label = entry.getMetadataValue((String) s.get('metadataKey'))
            if (label) {
                List<Map> tiles = patchTiles(client, server, null, ds, patch, maxPatches)
                if (!tiles.isEmpty()) {
                    bags.add([bag_id: name + '#image', label: label.trim(), patient_id: name,
                              tiles: tiles, source: 'image'])
                }
            }
        }
        return bags
    }

    /**
     * The per-image part of a bag id: always the candidate's index (the server merges
     * consecutive messages with the same bag_id, so two objects with one name must differ),
     * plus the object's name when it has one.
     */
    static String bagKey(int index, String name) {
        return 'bag-' + index + (name ? '-' + name : '')
    }

    static boolean ignored(String name, List<String> patterns) {
        for (String p : patterns) {
            if (p.endsWith('*') ? name.startsWith(p.substring(0, p.length() - 1)) : name == p) {
                return true
            }
        }
        return false
    }

    /**
     * Bags of every image of the project (or of the current image when there is no project).
     * The open image is read from memory (unsaved changes count); the others are opened with
     * ProjectImageEntry.readImageData and closed again.
     */
    static List<Map> projectBags(Object client, Map s, Object project, Object currentEntry, Object currentData, Closure log) {
        List<Map> bags = []
        if (project == null) {
            String name = imageName(null, currentData)
            bags.addAll(imageBags(client, s, name, currentData, null))
            return bags
        }
        for (Object entry : project.getImageList()) {
            boolean current = currentEntry != null && entry.getID() == currentEntry.getID()
            Object data = current ? currentData : entry.readImageData()
            try {
                List<Map> found = imageBags(client, s, entry.getImageName(), data, entry)
                bags.addAll(found)
                if (!found.isEmpty()) {
                    log.call(entry.getImageName() + ': ' + found.size() + ' bag(s)')
                }
            } finally {
                if (!current) {
                    data.getServer().close()
                }
            }
        }
        return bags
    }

    /** Streams bags to UploadDataset, `perMessage` tiles per message; returns the Dataset map. */
    static Map upload(Object client, String displayName, List<Map> bags, int perMessage) {
        return client.uploadDataset(displayName, { Closure sendBag ->
            for (Map bag : bags) {
                List<Map> tiles = (List<Map>) bag.get('tiles')
                for (int i = 0; i < tiles.size(); i += perMessage) {
                    sendBag.call([bag_id: bag.get('bag_id'), label: bag.get('label'), patient_id: bag.get('patient_id'),
                                  tiles: tiles.subList(i, Math.min(tiles.size(), i + perMessage))])
                }
            }
        })
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
