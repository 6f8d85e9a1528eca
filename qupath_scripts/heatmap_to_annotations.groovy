/*
 * milsil: heatmap_to_annotations.groovy
 *
 * For each selected annotation (or each annotation of class `annotationClass`; the whole image
 * when nothing is selected), of any size, read the region
 * with ImageServer.readRegion at `downsample`, stream it in tiles (row order, one tile in
 * memory at a time, progress lines for long regions) to the milsil server's
 * Annotate call (a seamless per-pixel logit heatmap of the MIL-SIL BagNet, thresholded for
 * one class) and add the returned outlines as child annotations of that annotation, with
 * their classification and measurements. With `serverSlides = true` the server reads the
 * slide itself (`slidePathMap` says where it sees this machine's files) and only the
 * annotation's outline is sent; if it cannot, the script says why and streams pixels. Optionally also adds tile objects carrying the
 * class probabilities, for Measure > Show measurement maps. Every object gets the measurement
 * "milsil OOD score"; a region unlike the model's training data is named in a warning line and
 * its outlines get the class "milsil: unlike training" (`markUnlikeTraining = false`: not).
 *
 * Works on the current image ("Run") and on every image ("Run for project"). On any problem
 * it prints one line ("milsil: <CODE>: <message>") and changes nothing in the image.
 * Set-up (jars, server, token): see qupath_scripts/README.md.
 */

import static qupath.lib.scripting.QP.*

// ============================== settings ==============================
def settings = [
    server       : 'localhost:50051', // host:port of `milsil serve`
    token        : '',                // bearer token; '' = the MILSIL_TOKEN environment variable
    trustCert    : '',                // CA certificate (PEM) of a TLS server; '' = plaintext
    model        : '',                // e.g. 'models/crc-bagnet9'; '' = the newest model on the server
    className    : '',                // class to outline; '' = the model's last class (e.g. malignant)
    threshold    : 0.5,               // probability at or above which a pixel is inside
    downsample   : 1.0,               // read pixels at this downsample (match the training data)
    stride       : 4,                 // heatmap sample spacing in pixels at that downsample (1 = every pixel)
    tileSize     : 512,               // pixels per streamed tile side
    minAreaMicrons: 0,                // drop outlines smaller than this (um^2; px^2 without pixel calibration); 0 = the server's default (200), < 0 = keep all
    minHoleAreaMicrons: 0,            // fill holes smaller than this (um^2, else px^2); 0 = the server's default (none)
    smoothSigmaMicrons: 0,            // smooth the map by this Gaussian sigma before outlining (um, else px); 0 = the server's default (none)
    mergeDistanceMicrons: 0,          // join outlines closer than this (um, else px); 0 = the server's default (none)
    simplify     : 0,                 // outline simplification, a fraction of one heatmap sample, [0, 1); 0 = the server's default (0.5), < 0 = none
    classification: '',               // QuPath class of the outlines; '' = className
    color        : [],                // [r, g, b] of that class; [] = the server's default colour
    addTiles     : false,             // also add probability tiles (for measurement maps)
    tileStride   : 32,                // their spacing, in pixels at `downsample`
    annotationClass: '',              // e.g. 'Tumor': use all annotations of this class, not the selection
    wholeImageIfNoSelection: true,    // no selected annotation: use the whole image (false: stop)
    serverSlides : false,             // true: the server reads the slide itself (no pixels sent), when it can see it
    slidePathMap : [:],               // where the server sees this machine's slides: local folder -> path under
                                      // its --slide-root, e.g. ['/Volumes/slides': 'cohort1']
    markUnlikeTraining: true,         // outlines in a region unlike the model's training data get the class
                                      // 'milsil: unlike training' (false: the confident class, as before)
    progressEverySeconds: 30,         // progress lines of long regions, at most this often
    timeoutSeconds: 60,               // deadline of quick calls
    streamTimeoutSeconds: 86400,      // deadline of one region's call (whole tissue sections take long on a CPU)
    milsilHome   : '',                // folder holding lib/ (the milsil scripts folder); '' = beside this script
]
// ======================================================================

// ---- the work (lib/MilsilBootstrap.groovy runs it: the last lines): everything is computed first, the image changed at the end ----
def work = { milsil ->
    def (s, Q, S) = [milsil.settings, milsil.QuPath, milsil.Settings]   // the effective settings, two library classes
    def server = milsil.imageData.getServer()
    def name = milsil.name
    // The selection, or (for "Run for project", where nothing is selected) every annotation
    // of `annotationClass`.
    def candidates = s.annotationClass ? getAnnotationObjects().findAll { o ->
        o.getPathClass() != null && o.getPathClass().toString() == s.annotationClass.toString()
    } : getSelectedObjects()
    def targets = candidates.findAll { o ->
        o.isAnnotation() && o.getROI() != null && o.getROI().isArea()
    }
    if (s.annotationClass && targets.isEmpty()) {
        println('milsil: NOTHING_SELECTED: ' + name + ': no area annotation of class "' + s.annotationClass +
            '"; nothing was changed')
        return
    }
    if (targets.isEmpty()) {
        if (!getSelectedObjects().isEmpty() || !S.flag(s, 'wholeImageIfNoSelection')) {
            println('milsil: NOTHING_SELECTED: ' + name + ': select one or more area annotations' +
                (S.flag(s, 'wholeImageIfNoSelection') ? ' (or clear the selection to use the whole image)' :
                    ' (or set wholeImageIfNoSelection = true)') + '; nothing was changed')
            return
        }
        targets = [null]   // the whole image
    }
    def client = milsil.connect()
    def model = Q.resolveModel(client, s.model)
    if (!model.receptive_field) {
        throw Q.failure('FAILED_PRECONDITION', model.name + ' (' + model.arch +
            ') has no bounded receptive field; heatmaps need a BagNet model')
    }
    def say = { line -> println(line) }
    Q.sayPrecision(model, name, say)
    Q.sayOutlineUnits(server, name, say)
    // Each region's familiarity: a warning line when the model cannot judge it, the "milsil OOD
    // score" measurement, the class "milsil: unlike training" (lib/MilsilTrust.groovy).
    def trust = milsil.Trust.forRun(s, name, model.name, say)
    def results = []
    for (def parent : targets) {
        def label = name + ': ' + Q.regionName(parent)
        def r = Q.annotate(client, s, server, model, parent, label, say)
        def verdict = trust.judge(r.response.familiarity, Q.regionName(parent))
        int unlike = trust.mark(r.objects, verdict, true, r.serverRead == true, Q.regionName(parent))
        def tiles = S.flag(s, 'addTiles') ? Q.probabilityTiles(client, s, server, model, parent, label, say) : []
        trust.mark(tiles, verdict, false)   // the region's score, as its outlines (tiles have no class)
        results.add([parent: parent, objects: r.objects, tiles: tiles, className: r.response.class_name, unlike: unlike])
    }
    // ---- all calls succeeded: now change the image ----
    def hierarchy = milsil.imageData.getHierarchy()
    int added = 0
    for (def r : results) {
        for (def o : (r.objects + r.tiles)) {
            hierarchy.addObjectBelowParent(r.parent, o, false)
            added++
        }
        println('milsil: ' + name + ': ' + Q.regionName(r.parent) +
            ': ' + r.objects.size() + ' ' + r.className + ' region(s)' + trust.unlikeNote(r.unlike) +
            (r.tiles.isEmpty() ? '' : ', ' + r.tiles.size() + ' probability tile(s)') + ' from ' + model.name)
    }
    fireHierarchyUpdate()
}

// ---- find lib/ (milsilHome, -Dmilsil.home, MILSIL_HOME, this script's folder, ~/milsil/qupath_scripts); run the work ----
def boot = [settings.milsilHome, System.getProperty('milsil.home'), System.getenv('MILSIL_HOME'),
    (binding.variables['qupath.script.file'] as File)?.absoluteFile?.parent, System.getProperty('user.home') + '/milsil/qupath_scripts']
    .findAll().collect { new File("$it/lib/MilsilBootstrap.groovy") }.find { it.isFile() }
if (!boot) return println('milsil: SETUP: cannot find lib/MilsilBootstrap.groovy; set milsilHome in the settings')
new GroovyClassLoader(getClass().classLoader).parseClass(boot).run(this, boot.parentFile.parent, settings, [image: true], work)
