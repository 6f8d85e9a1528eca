/*
 * MilsilCells.groovy -- the QuPath side of per-cell measurements (classify_cells.groovy):
 * which detections to measure, the geometry sent for each, grouping them into regions of
 * the image, one MeasureObjects call per region, and applying the values at the end.
 * No model logic (the server measures: milsil.inference.objects says what a measurement
 * is) and no gRPC (MilsilClient's measureObjects()); pixels are read by MilsilQuPath,
 * settings by MilsilSettings, slide paths by MilsilSlidePaths.
 *
 * Like MilsilQuPath, nothing here changes an image until apply(): `measure` only collects
 * the values (a double[] for all cells, 3 x classes + 1 per cell), so that a failure in any
 * region leaves every cell as it was, and a slide of 200,000 cells needs a few MB.
 *
 * QuPath API used (v0.4 to v0.7, checked in the v0.6.0 sources):
 *  - PathObjectHierarchy.getObjectsForROI(PathDetectionObject, roi): the detections whose
 *    ROI centroid lies in `roi` (qupath-core .../hierarchy/PathObjectHierarchy.java:
 *    filterObjectsForROI uses relate.containsCentroid for detections, "covers" for the
 *    rest; 0.6 adds getAllDetectionsForROI with the same rule, but 0.5 lacks it);
 *    getDetectionObjects() for the whole image (cells and tiles included: tiles are not
 *    measured here).
 *  - PathCellObject.getNucleusROI() (may be null) and getROI() (the cell boundary).
 *  - GsonTools.getInstance().toJson(roi): a ROI as a GeoJSON geometry, shells then holes,
 *    2 decimals (qupath-core .../io/ROITypeAdapters.java ROITypeAdapter.write, through the
 *    ROI's JTS geometry, so ellipses and multi-part ROIs come out as polygons).
 *  - MeasurementList.put(name, value), PathObject.setPathClass, PathClass.fromString.
 * Same Groovy subset as the other lib files (Groovy 2.4 and 4; getters called explicitly).
 */

import qupath.lib.io.GsonTools
import qupath.lib.objects.PathCellObject
import qupath.lib.objects.PathDetectionObject
import qupath.lib.objects.PathObject
import qupath.lib.objects.classes.PathClass
import qupath.lib.regions.ImagePlane
import qupath.lib.roi.ROIs
import qupath.lib.roi.interfaces.ROI

class MilsilCells {

    // ------------------------------------------------------------------ which cells

    /**
     * The ROI measured for a detection: a cell's nucleus unless `cellRoi` (the whole cell),
     * and the cell boundary for a cell without a nucleus; a plain detection's own ROI.
     */
    static ROI measuredRoi(PathObject o, boolean cellRoi) {
        if (!cellRoi && o instanceof PathCellObject) {
            ROI nucleus = ((PathCellObject) o).getNucleusROI()
            if (nucleus != null) {
                return nucleus
            }
        }
        return o.getROI()
    }

    /**
     * The detections to measure, each once, in a stable order: those inside each of
     * `parents` (QuPath's rule: centroid of the detection's ROI inside the annotation), the
     * whole image's when `parents` holds null, plus the detections in `extra` (selected
     * ones). Tiles and detections without an area ROI are left out (and counted).
     * Returns [cells: List<PathObject>, skipped: int].
     */
    static Map detections(Object hierarchy, Collection parents, Collection extra, boolean cellRoi) {
        Set<PathObject> seen = Collections.newSetFromMap(new IdentityHashMap<PathObject, Boolean>())
        List<PathObject> cells = []
        int skipped = 0
        List<Collection> sources = []
        for (Object parent : parents) {
            if (parent == null) {
                sources.add((Collection) hierarchy.getDetectionObjects())
            } else {
                sources.add((Collection) hierarchy.getObjectsForROI(PathDetectionObject, ((PathObject) parent).getROI()))
            }
        }
        sources.add(extra == null ? [] : extra)
        for (Collection source : sources) {
            for (Object item : source) {
                PathObject o = (PathObject) item
                if (!o.isDetection() || seen.contains(o)) {
                    continue
                }
                seen.add(o)
                ROI roi = measuredRoi(o, cellRoi)
                if (o.isTile() || roi == null || !roi.isArea() || roi.isEmpty()) {
                    skipped++
                    continue
                }
                cells.add(o)
            }
        }
        return [cells: cells, skipped: skipped]
    }

    // ------------------------------------------------------------------ regions

    /**
     * Cells grouped by the square of a grid (`regionSize` pixels at `downsample`) holding
     * the centroid of their measured ROI, in row order of the grid. Each region is the
     * bounding box of its cells' ROIs (so every cell lies wholly inside its region, however
     * far it reaches over the grid line), its origin on the downsample's pixel grid,
     * clipped to the image: [x, y, width, height (level-0 integers), cells: int[] (indices
     * into `cells`)].
     */
    static List<Map> regions(Object server, List<PathObject> cells, boolean cellRoi, double downsample,
                             int regionSize) {
        double side = Math.max(1, regionSize) * downsample
        TreeMap<Long, List<Integer>> groups = new TreeMap<Long, List<Integer>>()
        long columns = (long) Math.ceil(server.getWidth() / side) + 1
        for (int i = 0; i < cells.size(); i++) {
            ROI roi = measuredRoi(cells.get(i), cellRoi)
            long gx = Math.max(0L, (long) Math.floor(roi.getCentroidX() / side))
            long gy = Math.max(0L, (long) Math.floor(roi.getCentroidY() / side))
            Long key = gy * columns + Math.min(gx, columns - 1)
            List<Integer> members = groups.get(key)
            if (members == null) {
                members = []
                groups.put(key, members)
            }
            members.add(i)
        }
        List<Map> out = []
        for (List<Integer> members : groups.values()) {
            double x0 = Double.POSITIVE_INFINITY
            double y0 = Double.POSITIVE_INFINITY
            double x1 = Double.NEGATIVE_INFINITY
            double y1 = Double.NEGATIVE_INFINITY
            int[] indices = new int[members.size()]
            for (int k = 0; k < indices.length; k++) {
                indices[k] = members.get(k)
                ROI roi = measuredRoi(cells.get(indices[k]), cellRoi)
                x0 = Math.min(x0, roi.getBoundsX())
                y0 = Math.min(y0, roi.getBoundsY())
                x1 = Math.max(x1, roi.getBoundsX() + roi.getBoundsWidth())
                y1 = Math.max(y1, roi.getBoundsY() + roi.getBoundsHeight())
            }
            Map r = box(server, x0, y0, x1, y1, downsample)
            r.put('cells', indices)
            out.add(r)
        }
        return out
    }

    /**
     * Level-0 integer rectangle holding [x0, x1) x [y0, y1): its origin a multiple of the
     * downsample (rounded down to a pixel), its size whole pixels at the downsample, clipped
     * to the image. The server measures the pixels at the downsample whose centres lie in a
     * cell, so the same cell gives the same numbers whichever region it falls in.
     */
    static Map box(Object server, double x0, double y0, double x1, double y1, double downsample) {
        int w = (int) server.getWidth()
        int h = (int) server.getHeight()
        int ix0 = (int) Math.min(w - 1, Math.max(0, Math.floor(Math.floor(x0 / downsample) * downsample)))
        int iy0 = (int) Math.min(h - 1, Math.max(0, Math.floor(Math.floor(y0 / downsample) * downsample)))
        int ix1 = (int) Math.min((double) w, Math.ceil(ix0 + Math.ceil((x1 - ix0) / downsample) * downsample))
        int iy1 = (int) Math.min((double) h, Math.ceil(iy0 + Math.ceil((y1 - iy0) / downsample) * downsample))
        return [x: ix0, y: iy0, width: Math.max(1, ix1 - ix0), height: Math.max(1, iy1 - iy0)]
    }

    /** A ROI as the GeoJSON geometry text MeasureObject.geometry takes (QuPath's own writer). */
    static String geometry(ROI roi) {
        return GsonTools.getInstance().toJson(roi)
    }

    // ------------------------------------------------------------------ measuring

    /** Values kept per cell: mean logit, max logit and p for each class, then pixels. */
    static int width(int classes) {
        return 3 * classes + 1
    }

    /**
     * Measures every cell: one MeasureObjects call per region (its cells' geometries, then
     * its tiles with the model's context, read one at a time in row order by MilsilQuPath;
     * or, with `serverSlides`, the slide path and no pixels, falling back to streaming with
     * one line when the server cannot read the slide). Throws on the first failure.
     * `trust` (a MilsilTrust, optional) judges each region's familiarity as it is answered
     * (its warning line names the region). Returns [values: double[] (width(classes) per cell,
     * in the order of `cells`), classes: List<String>, regions: int, serverRead: boolean,
     * ood: double[] (each cell's region's "milsil OOD score", NaN without statistics),
     * unlike: BitSet (the cells in regions unlike the training data)].
     */
    static Map measure(Object client, Map s, Object server, Map model, List<PathObject> cells,
                       String label, Closure log, Object trust = null) {
        boolean cellRoi = MilsilSettings.flag(s, 'useCellRoi')
        double ds = MilsilSettings.num(s.get('downsample'))
        List<String> classes = new ArrayList<String>((List<String>) model.get('class_names'))
        int k = width(classes.size())
        double[] values = new double[cells.size() * k]
        Arrays.fill(values, Double.NaN)
        double[] ood = new double[cells.size()]
        Arrays.fill(ood, Double.NaN)
        BitSet unlike = new BitSet(cells.size())
        List<Map> regions = regions(server, cells, cellRoi, ds, MilsilSettings.integer(s.get('regionSize')))
        int context = MilsilQuPath.contextPixels(model)
        String remote = MilsilSettings.flag(s, 'serverSlides') ? MilsilSlidePaths.remote(s, server, label, log) : null
        boolean serverRead = remote != null
        MilsilProgress progress = new MilsilProgress(label + ': cells', s.get('progressEverySeconds'), log)
        long done = 0
        int regionIndex = 0
        for (Map r : regions) {
            int[] members = (int[]) r.get('cells')
            List<Map> objects = []
            for (int m : members) {
                objects.add([id: String.valueOf(m), geometry: geometry(measuredRoi(cells.get(m), cellRoi))])
            }
            Map config = [model : model.get('name'),
                          region: [x: r.get('x'), y: r.get('y'), width: r.get('width'), height: r.get('height'),
                                   downsample: ds]]
            Map area = MilsilQuPath.rect(server, ROIs.createRectangleROI((double) r.get('x'), (double) r.get('y'),
                (double) r.get('width'), (double) r.get('height'), ImagePlane.getDefaultPlane()), context * ds)
            String counted = 'cells, ' + (regionIndex + 1) + '/' + regions.size() + ' regions'
            Closure tiles = { Closure sendTile ->
                MilsilQuPath.streamTiles(client, server, area, ds, MilsilSettings.integer(s.get('tileSize')), sendTile,
                    new WithinRegion(progress, done, members.length, cells.size(), counted))
            }
            BitSet got = new BitSet(cells.size())
            Closure store = { Map header, Map m ->
                int i = Integer.parseInt((String) m.get('id'))
                copy(values, i * k, m, classes.size())
                got.set(i)
            }
            Map answer = null
            if (remote != null) {
                try {
                    answer = client.measureObjects(config + [slide_path: remote], objects, null, store,
                        { -> got.clear() })
                } catch (Throwable t) {
                    MilsilSlidePaths.cannotRead(t, label, log)
                    remote = null
                    serverRead = false
                }
            }
            if (answer == null) {
                answer = client.measureObjects(config, objects, tiles, store, { -> got.clear() })
            }
            checkAnswer((Map) answer.get('header'), classes, members, got)
            Map verdict = trust == null ? null : trust.judge(((Map) answer.get('header')).get('familiarity'),
                'cells in region ' + (regionIndex + 1) + '/' + regions.size() + ' (x ' + r.get('x') + ', y ' +
                    r.get('y') + ', ' + r.get('width') + ' x ' + r.get('height') + ' px)')
            for (int m : (verdict == null ? new int[0] : members)) {
                ood[m] = (double) verdict.get('score')
                unlike.set(m, (boolean) verdict.get('unlike'))
            }
            done += members.length
            regionIndex++
            progress.update(done, cells.size(), -1, 'cells, ' + regionIndex + '/' + regions.size() + ' regions')
        }
        return [values: values, classes: classes, regions: regions.size(), serverRead: serverRead, ood: ood,
                unlike: unlike]
    }

    /**
     * Progress inside one region, from the tiles sent (the server computes each band as its
     * tiles arrive): the region's cells counted in proportion, so a long region (a
     * full-width model on a CPU) still prints progress lines.
     */
    static class WithinRegion {
        final Object progress
        final long before
        final long members
        final long total
        final String counted

        WithinRegion(Object progress, long before, long members, long total, String counted) {
            this.progress = progress
            this.before = before
            this.members = members
            this.total = total
            this.counted = counted
        }

        void update(long sent, long tiles, double eta) {
            if (tiles > 0) {
                progress.update(before + (long) (members * sent / (double) tiles), total, -1.0d, counted)
            }
        }
    }

    /** One measurement into values[at ...]: means, maxima, probabilities, pixels. */
    static void copy(double[] values, int at, Map m, int classes) {
        double[] mean = (double[]) m.get('mean_logits')
        double[] max = (double[]) m.get('max_logits')
        double[] p = (double[]) m.get('probabilities')
        for (int c = 0; c < classes; c++) {
            values[at + c] = mean[c]
            values[at + classes + c] = max[c]
            values[at + 2 * classes + c] = p[c]
        }
        values[at + 3 * classes] = (double) ((Number) m.get('pixels')).longValue()
    }

    /** Every cell of the region answered, with the model's classes. */
    static void checkAnswer(Map header, List<String> classes, int[] members, BitSet got) {
        List<String> answered = new ArrayList<String>((List<String>) header.get('class_names'))
        if (answered != classes) {
            throw MilsilQuPath.failure('INTERNAL', 'MeasureObjects answered classes ' + answered +
                ', the model has ' + classes)
        }
        int missing = 0
        for (int m : members) {
            if (!got.get(m)) {
                missing++
            }
        }
        if (missing > 0) {
            throw MilsilQuPath.failure('INTERNAL', 'MeasureObjects returned no measurement for ' + missing +
                ' of ' + members.length + ' cells')
        }
    }

    // ------------------------------------------------------------------ the image

    /** QuPath measurement names, in the order of the values per cell. */
    static List<String> names(List<String> classes) {
        List<String> out = []
        for (String c : classes) {
            out.add('milsil mean logit(' + c + ')')
        }
        for (String c : classes) {
            out.add('milsil max logit(' + c + ')')
        }
        for (String c : classes) {
            out.add('milsil p(' + c + ')')
        }
        out.add('milsil pixels')
        return out
    }

    /**
     * The class a classification is about: `wanted`, or the model's `target_class` (the
     * server's rule for an empty class setting). Throws for a class the model does not have.
     */
    static String targetClass(Map model, Object wanted) {
        List<String> classes = (List<String>) model.class_names
        String name = wanted == null ? '' : wanted.toString().trim()
        if (!name) {
            return (String) model.target_class
        }
        if (!classes.contains(name)) {
            throw MilsilQuPath.failure('INVALID_ARGUMENT', 'unknown class "' + name + '"; this model\'s classes: ' +
                classes.join(', '))
        }
        return name
    }

    /**
     * Sets the measurements on every cell and, with `positive` (a class name), its class:
     * `positive` where p(target) >= threshold, else `negative` ('' = unclassified), as
     * QuPath's single-measurement classifier does; a cell whose p is NaN keeps its class.
     * With `trust` (a MilsilTrust; `ood` and `unlike` from measure()), each cell also gets
     * its "milsil OOD score", and a classified cell in a region unlike the training data the
     * class "milsil: unlike training" instead. Returns how many cells got `positive`.
     */
    static int apply(List<PathObject> cells, double[] values, List<String> classes, String target,
                     String positive, double threshold, String negative, Object trust = null,
                     double[] ood = null, BitSet unlike = null) {
        List<String> keys = names(classes)
        int k = keys.size()
        int pAt = positive ? 2 * classes.size() + classes.indexOf(target) : -1
        PathClass yes = positive ? PathClass.fromString(positive) : null
        PathClass no = negative ? PathClass.fromString(negative) : null
        int positives = 0
        for (int i = 0; i < cells.size(); i++) {
            PathObject cell = cells.get(i)
            def list = cell.getMeasurementList()
            for (int j = 0; j < k; j++) {
                list.put(keys.get(j), values[i * k + j])
            }
            double p = positive ? values[i * k + pAt] : Double.NaN
            boolean classified = !Double.isNaN(p)
            if (classified) {
                boolean above = p >= threshold
                cell.setPathClass(above ? yes : no)
            }
            boolean away = trust != null && trust.markOne(cell, ood[i], unlike.get(i), classified)
            positives += classified && p >= threshold && !(away && trust.marking) ? 1 : 0
        }
        return positives
    }
}
