/*
 * milsil: tma_batch.groovy
 *
 * For every non-missing TMA core of the image: cut the core into patches (a bag, as in the
 * paper), classify the bag with the milsil server's ClassifyBag, set the core's
 * classification and add "milsil p(<class>)" measurements; optionally also outline the
 * chosen class inside each core (Annotate, as heatmap_to_annotations.groovy). Every core (and
 * outline) gets the measurement "milsil OOD score"; a core unlike the model's training data is
 * named in a warning line and gets the class "milsil: unlike training" instead of the
 * predicted one (`markUnlikeTraining = false`: not). Appends one CSV row per core (image,
 * core, class, probabilities, OOD score): the first image of a "Run for project"
 * batch starts the file, the others append, so one project run gives one summary.
 *
 * On any problem it prints one line ("milsil: <CODE>: <message>") and changes nothing in the
 * image (and writes no CSV row). Set-up: see qupath_scripts/README.md.
 */

import static qupath.lib.scripting.QP.*

import qupath.lib.objects.classes.PathClass

// ============================== settings ==============================
def settings = [
    server        : 'localhost:50051', // host:port of `milsil serve`
    token         : '',                // bearer token; '' = the MILSIL_TOKEN environment variable
    trustCert     : '',                // CA certificate (PEM) of a TLS server; '' = plaintext
    model         : '',                // e.g. 'models/tma-bagnet9'; '' = the newest model on the server
    downsample    : 1.0,               // read pixels at this downsample (match the training data)
    patchSize     : 0,                 // patch side in pixels; 0 = the model's training patch size
    maxPatches    : 256,               // at most this many patches per core (evenly spaced)
    setClass      : true,              // set each core's classification to the predicted class
    addHeatmap    : false,             // also outline `className` inside each core
    className     : '',                // class to outline; '' = the model's last class
    threshold     : 0.5,               // probability threshold of the outlines
    stride        : 4,                 // heatmap sample spacing (pixels at `downsample`)
    tileSize      : 512,               // pixels per streamed tile side
    minAreaMicrons: 0,                 // drop outlines smaller than this (um^2; px^2 without pixel calibration); 0 = the server's default (200), < 0 = keep all
    minHoleAreaMicrons: 0,             // fill holes smaller than this (um^2, else px^2); 0 = the server's default (none)
    smoothSigmaMicrons: 0,             // smooth the map by this Gaussian sigma before outlining (um, else px); 0 = the server's default (none)
    mergeDistanceMicrons: 0,           // join outlines closer than this (um, else px); 0 = the server's default (none)
    simplify      : 0,                 // outline simplification, a fraction of one heatmap sample, [0, 1); 0 = the server's default (0.5), < 0 = none
    classification: '',                // QuPath class of the outlines; '' = className
    color         : [],                // [r, g, b] of that class; [] = the server's default colour
    markUnlikeTraining: true,          // a core (and outlines) unlike the model's training data gets the class
                                       // 'milsil: unlike training' (false: the predicted class, as before)
    csvPath       : '',                // '' = <project>/milsil/tma_summary.csv (or ~/milsil_tma_summary.csv)
    progressEverySeconds: 30,          // progress lines of long outlines, at most this often
    timeoutSeconds: 60,                // deadline of quick calls
    streamTimeoutSeconds: 900,         // deadline of one core's call
    milsilHome    : '',                // folder holding lib/ (the milsil scripts folder); '' = beside this script
]
// ======================================================================

// ---- the work (lib/MilsilBootstrap.groovy runs it: the last lines): everything is computed first, the image changed at the end ----
def work = { milsil ->
    def (s, Q, S) = [milsil.settings, milsil.QuPath, milsil.Settings]   // the effective settings, two library classes
    def server = milsil.imageData.getServer()
    def name = milsil.name
    def cores = getTMACoreList().findAll { c -> !c.isMissing() }
    boolean first = ((Number) Q.batch(binding, 'qupath.script.batchIndex', 0)).intValue() == 0
    String csvPath = s.csvPath ?: (getProject() != null ? buildFilePath(PROJECT_BASE_DIR, 'milsil', 'tma_summary.csv') :
        new File(System.getProperty('user.home'), 'milsil_tma_summary.csv').getPath())
    File csv = new File(csvPath)
    String noCores = 'milsil: NOTHING_TO_DO: ' + name + ': no TMA cores that are not missing ' +
        '(dearray first: TMA > TMA dearrayer); nothing was changed'
    if (cores.isEmpty() && !first) {
        println(noCores)
        return
    }
    def client = milsil.connect()
    def model = Q.resolveModel(client, s.model)
    def classes = model.class_names
    def quote = { v -> def t = v == null ? '' : v.toString(); t.contains(',') || t.contains('"') ? '"' + t.replace('"', '""') + '"' : t }
    def header = (['image', 'core', 'class', 'patches'] + classes.collect { c -> 'p(' + c + ')' } +
        ['ood_score', 'unlike_training']).collect(quote).join(',') + '\n'
    if (cores.isEmpty()) {
        // First image of a run without cores: the run's summary still starts afresh.
        if (csv.getParentFile() != null) {
            csv.getParentFile().mkdirs()
        }
        csv.setText(header, 'UTF-8')
        println(noCores)
        return
    }
    int patch = S.integer(s.patchSize) > 0 ? S.integer(s.patchSize) :
        (model.patch_size ? ((Number) model.patch_size).intValue() : 64)
    def results = []
    def skipped = []
    def say = { line -> println(line) }
    if (S.flag(s, 'addHeatmap')) {   // outlines from heatmaps (the classification is ClassifyBag's: float32, never bfloat16)
        Q.sayPrecision(model, name, say)
        Q.sayOutlineUnits(server, name, say)
    }
    // Each core's familiarity (its bag's): warning line, "milsil OOD score", class (lib/MilsilTrust.groovy).
    def trust = milsil.Trust.forRun(s, name, model.name, say)
    for (def core : cores) {
        def tiles = Q.patchTiles(client, server, core.getROI(), S.num(s.downsample), patch, S.integer(s.maxPatches))
        if (tiles.isEmpty()) {
            skipped.add(core.getName())
            continue
        }
        def r = client.classifyBag(model.name, tiles)
        def verdict = trust.judge(r.familiarity, Q.regionName(core))
        def outlines = []
        if (S.flag(s, 'addHeatmap')) {
            def a = Q.annotate(client, s, server, model, core, name + ': ' + core.getName(), say)
            trust.mark(a.objects, trust.judge(a.response.familiarity, Q.regionName(core)), true)
            outlines = a.objects
        }
        results.add([core: core, probabilities: r.bag_probabilities, predicted: r.predicted_class,
                     patches: tiles.size(), outlines: outlines, verdict: verdict])
    }
    // ---- all calls succeeded: now change the image, then the CSV ----
    def hierarchy = milsil.imageData.getHierarchy()
    for (def r : results) {
        if (S.flag(s, 'setClass')) {
            r.core.setPathClass(trust.classFor(r.verdict != null && r.verdict.unlike, PathClass.fromString(r.predicted)))
        }
        trust.mark([r.core], r.verdict, false)
        def ml = r.core.getMeasurementList()
        for (int c = 0; c < classes.size(); c++) {
            ml.put('milsil p(' + classes[c] + ')', (double) r.probabilities[c])
        }
        ml.put('milsil patches', (double) r.patches)
        for (def o : r.outlines) {
            hierarchy.addObjectBelowParent(r.core, o, false)
        }
    }
    fireHierarchyUpdate()

    if (csv.getParentFile() != null) {
        csv.getParentFile().mkdirs()
    }
    StringBuilder rows = new StringBuilder()
    if (first || !csv.exists()) {
        rows.append(header)
    }
    for (def r : results) {
        rows.append(([name, r.core.getName(), r.predicted, r.patches] +
            r.probabilities.collect { p -> String.format(Locale.ROOT, '%.6f', (double) p) } +
            (r.verdict == null ? ['', ''] : [String.format(Locale.ROOT, '%.6f', (double) r.verdict.score), r.verdict.unlike]))
            .collect(quote).join(','))
        rows.append('\n')
    }
    if (first) {
        csv.setText(rows.toString(), 'UTF-8')
    } else {
        csv.append(rows.toString(), 'UTF-8')
    }
    def counts = results.countBy { r -> r.predicted }
    println('milsil: ' + name + ': ' + results.size() + ' core(s) classified with ' + model.name + ' (' +
        counts.collect { k, v -> v + ' ' + k }.join(', ') + ')' +
        trust.unlikeNote(results.count { r -> r.verdict != null && r.verdict.unlike } as int, 'core(s)', S.flag(s, 'setClass')) +
        (skipped.isEmpty() ? '' : '; ' + skipped.size() + ' too small for one ' + patch + ' px patch: ' + skipped.join(', ')) +
        '; summary in ' + csv.getPath())
}

// ---- find lib/ (milsilHome, -Dmilsil.home, MILSIL_HOME, this script's folder, ~/milsil/qupath_scripts); run the work ----
def boot = [settings.milsilHome, System.getProperty('milsil.home'), System.getenv('MILSIL_HOME'),
    (binding.variables['qupath.script.file'] as File)?.absoluteFile?.parent, System.getProperty('user.home') + '/milsil/qupath_scripts']
    .findAll().collect { new File("$it/lib/MilsilBootstrap.groovy") }.find { it.isFile() }
if (!boot) return println('milsil: SETUP: cannot find lib/MilsilBootstrap.groovy; set milsilHome in the settings')
new GroovyClassLoader(getClass().classLoader).parseClass(boot).run(this, boot.parentFile.parent, settings, [image: true], work)
