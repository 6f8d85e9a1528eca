/*
 * milsil: classify_cells.groovy
 *
 * Measures every cell (detection) with the milsil model and, optionally, classifies it.
 * For each cell -- its nucleus by default (`useCellRoi = true`: the whole cell; a detection
 * that is not a cell: its ROI) -- the server takes the model's per-pixel logit heatmap over
 * the pixels whose centres lie inside it and returns, per class c, "milsil mean logit(c)",
 * "milsil max logit(c)", "milsil p(c)" (softmax of the mean logits) and "milsil pixels".
 * With `classify = true`, a cell gets class `className` where p(className) >= `threshold`
 * and `negativeClass` otherwise ('' = Unclassified), like QuPath's single-measurement
 * classifier: every measured cell is (re)classified, so running again with another
 * threshold gives what running once with it would. Every measured cell also gets "milsil OOD
 * score" (how unlike the model's training data its region was); a region unlike it is named
 * in a warning line and, with `classify`, its cells get the class "milsil: unlike training"
 * instead (`markUnlikeTraining = false`: not).
 *
 * Which cells: those inside the selected annotations (QuPath's rule: the cell's centroid
 * inside) and any selected detections; with nothing selected, every detection of the
 * image; with `annotationClass` set (for "Run for project"), those inside every annotation
 * of that class. Tiles are not measured.
 *
 * The cells are grouped into regions (squares of `regionSize` pixels at `downsample`, a
 * cell going to the square holding its centroid); each region, the bounding box of its
 * cells, is streamed in tiles with the model's context (row order, one tile in memory at a
 * time) together with its cells' outlines, so cells crossing a square's border are
 * measured whole, and a slide of 200,000 cells runs in bounded memory. With
 * `serverSlides = true` the server reads the slide itself (`slidePathMap` says where it
 * sees this machine's files) and only the outlines are sent; if it cannot, the script says
 * why and streams pixels.
 *
 * Works on the current image ("Run") and on every image ("Run for project"). Nothing
 * changes in the image unless every region succeeded: on any problem it prints one line
 * ("milsil: <CODE>: <message>") and changes nothing.
 * Set-up (jars, server, token): see qupath_scripts/README.md.
 */

import static qupath.lib.scripting.QP.*

// ============================== settings ==============================
def settings = [
    server       : 'localhost:50051', // host:port of `milsil serve`
    token        : '',                // bearer token; '' = the MILSIL_TOKEN environment variable
    trustCert    : '',                // CA certificate (PEM) of a TLS server; '' = plaintext
    model        : '',                // e.g. 'models/crc-bagnet9'; '' = the newest model on the server
    useCellRoi   : false,             // false: measure each cell's nucleus; true: the whole cell
    downsample   : 1.0,               // read pixels at this downsample (match the training data)
    regionSize   : 2048,              // cells are sent in regions of about this many pixels (at downsample) a side
    tileSize     : 512,               // pixels per streamed tile side
    classify     : false,             // true: also set each measured cell's class (see className, threshold)
    className    : '',                // class whose p decides; '' = the model's malignant class, else its last
    threshold    : 0.5,               // p(className) at or above which a cell gets class className
    negativeClass: '',                // class of the other measured cells; '' = Unclassified
    markUnlikeTraining: true,         // with classify: cells in a region unlike the model's training data get the
                                      // class 'milsil: unlike training' (false: className/negativeClass, as before)
    annotationClass: '',              // e.g. 'Tumor': cells inside all annotations of this class, not the selection
    wholeImageIfNoSelection: true,    // nothing selected: every cell of the image (false: stop)
    serverSlides : false,             // true: the server reads the slide itself (no pixels sent), when it can see it
    slidePathMap : [:],               // where the server sees this machine's slides: local folder -> path under
                                      // its --slide-root, e.g. ['/Volumes/slides': 'cohort1']
    progressEverySeconds: 30,         // progress lines, at most this often
    timeoutSeconds: 60,               // deadline of quick calls
    streamTimeoutSeconds: 86400,      // deadline of one region's call
    milsilHome   : '',                // folder holding lib/ (the milsil scripts folder); '' = beside this script
]
// ======================================================================

// ---- the work (lib/MilsilBootstrap.groovy runs it: the last lines): everything is computed first, the image changed at the end ----
def work = { milsil ->
    def (s, Q, S, C) = [milsil.settings, milsil.QuPath, milsil.Settings, milsil.MilsilCells]   // settings, library classes
    def server = milsil.imageData.getServer()
    def hierarchy = milsil.imageData.getHierarchy()
    def name = milsil.name
    // The selection (area annotations: the cells inside; detections: themselves), or (for
    // "Run for project", where nothing is selected) every annotation of `annotationClass`.
    def selected = getSelectedObjects()
    def parents = (s.annotationClass ? getAnnotationObjects().findAll { o ->
        o.getPathClass() != null && o.getPathClass().toString() == s.annotationClass.toString()
    } : selected).findAll { o -> o.isAnnotation() && o.getROI() != null && o.getROI().isArea() }
    def picked = s.annotationClass ? [] : selected.findAll { o -> o.isDetection() }
    if (s.annotationClass && parents.isEmpty()) {
        println('milsil: NOTHING_SELECTED: ' + name + ': no area annotation of class "' + s.annotationClass +
            '"; nothing was changed')
        return
    }
    if (parents.isEmpty() && picked.isEmpty()) {
        if (!selected.isEmpty() || !S.flag(s, 'wholeImageIfNoSelection')) {
            println('milsil: NOTHING_SELECTED: ' + name + ': select area annotations or cells' +
                (S.flag(s, 'wholeImageIfNoSelection') ? ' (or clear the selection to use the whole image)' :
                    ' (or set wholeImageIfNoSelection = true)') + '; nothing was changed')
            return
        }
        parents = [null]   // the whole image
    }
    def found = C.detections(hierarchy, parents, picked, S.flag(s, 'useCellRoi'))
    def cells = found.cells
    if (cells.isEmpty()) {
        println('milsil: NOTHING_TO_DO: ' + name + ': no cells (area detections) ' +
            (parents == [null] ? 'in the image' : 'inside the selection') + '; nothing was changed')
        return
    }
    def client = milsil.connect()
    def model = Q.resolveModel(client, s.model)
    if (!model.receptive_field) {
        throw Q.failure('FAILED_PRECONDITION', model.name + ' (' + model.arch +
            ') has no bounded receptive field; cell measurements need a BagNet model')
    }
    def classify = S.flag(s, 'classify')
    def target = classify ? C.targetClass(model, s.className) : null
    def say = { line -> println(line) }
    Q.sayPrecision(model, name, say)
    // Each region's familiarity: warning line, "milsil OOD score", class (lib/MilsilTrust.groovy).
    def trust = milsil.Trust.forRun(s, name, model.name, say)
    def r = C.measure(client, s, server, model, cells, name, say, trust)
    // ---- every region succeeded: now change the image ----
    int positives = C.apply(cells, r.values, r.classes, target, classify ? target : '',
        S.num(s.threshold), (s.negativeClass ?: '').toString().trim(), trust, r.ood, r.unlike)
    fireHierarchyUpdate()
    println('milsil: ' + name + ': ' + String.format(Locale.US, '%,d', cells.size()) + ' cell(s) measured in ' +
        r.regions + ' region(s) with ' + model.name +
        (classify ? '; ' + String.format(Locale.US, '%,d', positives) + ' classified ' + target +
            ' (p >= ' + S.num(s.threshold) + ')' : '') + trust.unlikeNote(r.unlike.cardinality(), 'cell(s)', classify) +
        (found.skipped ? '; ' + found.skipped + ' detection(s) skipped (tiles or not areas)' : ''))
}

// ---- find lib/ (milsilHome, -Dmilsil.home, MILSIL_HOME, this script's folder, ~/milsil/qupath_scripts); run the work ----
def boot = [settings.milsilHome, System.getProperty('milsil.home'), System.getenv('MILSIL_HOME'),
    (binding.variables['qupath.script.file'] as File)?.absoluteFile?.parent, System.getProperty('user.home') + '/milsil/qupath_scripts']
    .findAll().collect { new File("$it/lib/MilsilBootstrap.groovy") }.find { it.isFile() }
if (!boot) return println('milsil: SETUP: cannot find lib/MilsilBootstrap.groovy; set milsilHome in the settings')
new GroovyClassLoader(getClass().classLoader).parseClass(boot)
    .run(this, boot.parentFile.parent, settings, [image: true, parts: ['MilsilCells']], work)
