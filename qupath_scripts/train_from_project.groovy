/*
 * milsil: train_from_project.groovy
 *
 * Trains a MIL-SIL BagNet on what you labelled in this project: collects the labelled bags
 * exactly as export_labels.groovy does (classified annotations, classified TMA cores, image
 * metadata `metadataKey`; each image is its own patient/group id) and uploads them
 * (UploadDataset), or uses an already uploaded `dataset`; starts a training job
 * (StartTraining), follows it in the log (WatchJob) and prints the name of the model it
 * registered, ready for heatmap_to_annotations.groovy and tma_batch.groovy.
 *
 * Run it once from the script editor (under "Run for project" it works once, on the last
 * image). Never changes an image. The job keeps running on the server if QuPath is closed;
 * `milsil client watch <job>` / `milsil client jobs` follow or cancel it. On any problem it prints one line
 * ("milsil: <CODE>: <message>"). Set-up: see qupath_scripts/README.md.
 */

import static qupath.lib.scripting.QP.*

// ============================== settings ==============================
def settings = [
    server          : 'localhost:50051', // host:port of `milsil serve`
    token           : '',                // bearer token; '' = the MILSIL_TOKEN environment variable
    trustCert       : '',                // CA certificate (PEM) of a TLS server; '' = plaintext
    dataset         : '',                // 'datasets/...' from export_labels.groovy; '' = collect and upload now
    sources         : ['annotations', 'tma', 'metadata'], // where labels come from
    metadataKey     : 'milsil_label',    // project metadata key holding an image-level label
    ignoreClasses   : ['Ignore*', 'Region*'], // classes that are not labels ('*' = prefix)
    downsample      : 1.0,               // read pixels at this downsample (use the same for inference)
    patchSize       : 64,                // patch side in pixels (at `downsample`)
    maxPatchesPerBag: 64,                // at most this many patches per bag (evenly spaced)
    arch            : 'bagnet9',         // bagnet9, bagnet17, bagnet33 (heatmaps need a BagNet)
    head            : 'milsil',          // milsil (the paper), sil or mil
    recipe          : '',                // '' = the library's defaults (learn on a CPU, offline); 'paper' = the paper's recipe
    pretrained      : '',                // '' = the recipe's (from scratch); 'imagenet' = published ImageNet weights (server downloads once)
    width           : 0,                 // network width; 0 = the recipe's (16 from scratch, 64 with ImageNet weights)
    epochs          : 10,
    learningRate    : 0,                 // 0 = the recipe's (2e-3 from scratch, 1e-4 with ImageNet weights)
    batchSize       : 0,                 // bags per batch; 0 = the server's default
    validationFraction: 0,               // images held out; 0 = the server's default (0.2)
    seed            : 0,
    noAugment       : false,             // true: no flips/rotations/colour jitter
    jobName         : '',                // display name of the job and model; '' = project name
    progressEverySeconds: 10,            // at most one progress line this often
    timeoutSeconds  : 60,                // deadline of quick calls
    streamTimeoutSeconds: 3600,          // deadline of the upload
    watchTimeoutSeconds: 86400,          // how long to follow the job (it continues on the server)
    milsilHome      : '',                // folder holding lib/ (the milsil scripts folder); '' = beside this script
]
// ======================================================================

// ---- load the shared library (lib/MilsilBootstrap.groovy): lib/ beside this script, or milsilHome ----
def scriptFile = binding.getVariables().get('qupath.script.file')
def milsilHome = [settings.milsilHome, System.getProperty('milsil.home'), System.getenv('MILSIL_HOME'),
                  scriptFile ? new File(scriptFile.toString()).getAbsoluteFile().getParent() : null,
                  new File(System.getProperty('user.home'), 'milsil/qupath_scripts').getPath()].find { h ->
    h && new File(h.toString(), 'lib/MilsilBootstrap.groovy').isFile()
}
def milsil = milsilHome == null ? [error: 'milsil: SETUP: cannot find lib/MilsilBootstrap.groovy; set milsilHome in the settings'] :
    new GroovyClassLoader(this.getClass().getClassLoader()).parseClass(
        new File(milsilHome.toString(), 'lib/MilsilBootstrap.groovy')).load(milsilHome, settings)
if (milsil.error) {
    println(milsil.error)
    return
}

// ---- the work ----
def client = null
try {
    def s = milsil.settings
    def Q = milsil.QuPath
    def imageData = getCurrentImageData()
    def project = getProject()
    if (imageData == null && project == null && !s.dataset) {
        println('milsil: NO_IMAGE: open a project or an image first')
        return
    }
    int batchSize = ((Number) Q.batch(binding, 'qupath.script.batchSize', 1)).intValue()
    if (batchSize > 1 && !Q.flag(Q.batch(binding, 'qupath.script.batchLast', true))) {
        println('milsil: ' + Q.imageName(getProjectEntry(), imageData) + ': the project is collected once, on the last image of the batch')
        return
    }
    String display = s.jobName ?: (project != null ? project.getPath().getParent().getFileName().toString() :
        Q.imageName(null, imageData))
    client = milsil.Client.connect(s)
    client.onWait = { line -> println(line) }   // busy server: print a waiting line and keep waiting
    client.listModels()   // fail fast (server down, wrong token) before reading any pixels
    String datasetName = s.dataset
    if (!datasetName) {
        def bags = Q.projectBags(client, s, project, getProjectEntry(), imageData, { line -> println('milsil: ' + line) })
        if (bags.isEmpty()) {
            println('milsil: NOTHING_TO_DO: no labelled material: classify annotations or TMA cores, or set the ' +
                'project metadata "' + s.metadataKey + '" of whole images; nothing was uploaded')
            return
        }
        def labels = bags.collect { b -> b.label }.unique()
        if (labels.size() < 2) {
            println('milsil: NOTHING_TO_DO: training needs bags of at least two classes, found only ' +
                labels.join(', ') + '; nothing was uploaded')
            return
        }
        def dataset = Q.upload(client, display, bags, 32)
        datasetName = dataset.name
        println('milsil: ' + (dataset.already_existed ? 'already on the server: ' : 'uploaded ') + dataset.name +
            ' (' + dataset.bag_count + ' bags, ' + dataset.patient_count + ' images; classes ' +
            dataset.class_names.join(', ') + ')')
    }
    def config = [arch: s.arch, head: s.head, recipe: s.recipe ?: '', pretrained: s.pretrained ?: '',
                  width: Q.integer(s.width), epochs: Q.integer(s.epochs),
                  learning_rate: Q.num(s.learningRate), batch_size: Q.integer(s.batchSize),
                  patch_size: Q.integer(s.patchSize), seed: Q.integer(s.seed),
                  validation_fraction: Q.num(s.validationFraction), no_augment: Q.flag(s.noAugment)]
    def job = client.startTraining(datasetName, config, display)
    println('milsil: started ' + job.name + ' on ' + datasetName + ' (' + config.arch + ', ' + config.epochs + ' epochs)')
    long every = (long) (Q.num(s.progressEverySeconds) * 1000)
    def state = [time: 0L, state: '', epoch: -1]
    def last = client.watchJob(job.name, { j ->
        def p = j.progress
        long now = System.currentTimeMillis()
        boolean changed = j.state != state.state || (p != null && p.epoch != state.epoch)
        if (j.state == 'RUNNING' && p != null && (changed || now - state.time >= every)) {
            println(String.format(Locale.ROOT, 'milsil: %s RUNNING epoch %d/%d step %d/%d loss %.4f val MIL acc %.3f eta %.0f s',
                j.name, p.epoch, p.epochs, p.step, p.steps_per_epoch, (double) p.loss, (double) p.val_mil_accuracy,
                (double) p.eta_seconds))
            state.time = now
        }
        state.state = j.state
        state.epoch = p == null ? -1 : p.epoch
    })
    if (last == null) {
        println('milsil: UNKNOWN: ' + job.name + ': the server sent no job state')
    } else if (!client.finalJobStates().contains(last.state)) {
        println('milsil: UNAVAILABLE: ' + last.name + ' is still ' + last.state + ' but the server stopped ' +
            'sending updates (shutting down?); see where it stands with `milsil client jobs ' + last.name + '`')
    } else if (last.state == 'SUCCEEDED') {
        def model = client.getModel(last.model)
        def metrics = model.metrics.collect { k, v -> k + ' ' + String.format(Locale.ROOT, '%.3f', (double) v) }.join(', ')
        println('milsil: ' + last.name + ' SUCCEEDED: registered model ' + last.model + (metrics ? ' (' + metrics + ')' : ''))
    } else {
        println('milsil: ' + last.state + ': ' + last.name + (last.error ? ': ' + last.error : '') +
            '; resume it with `milsil client train --resume ' + last.name + '`')
    }
} catch (Throwable e) {
    println(milsil.Client.describe(e))
} finally {
    if (client != null) {
        client.close()
    }
}
