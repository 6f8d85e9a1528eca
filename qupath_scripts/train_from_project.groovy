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
    stainNormalize  : '',                // '' = none; 'macenko' or 'reinhard': fit a stain target on the training images (kept in the model, applied by the server to every region)
    jobName         : '',                // display name of the job and model; '' = project name
    progressEverySeconds: 10,            // at most one progress line this often
    timeoutSeconds  : 60,                // deadline of quick calls
    streamTimeoutSeconds: 3600,          // deadline of the upload
    watchTimeoutSeconds: 86400,          // how long to follow the job (it continues on the server)
    milsilHome      : '',                // folder holding lib/ (the milsil scripts folder); '' = beside this script
]
// ======================================================================

// ---- the work, which lib/MilsilBootstrap.groovy runs (the last lines) ----
def work = { milsil ->
    def (s, Q, S) = [milsil.settings, milsil.QuPath, milsil.Settings]   // the effective settings, two library classes
    def imageData = milsil.imageData
    def project = getProject()
    if (imageData == null && project == null && !s.dataset) {
        println('milsil: NO_IMAGE: open a project or an image first')
        return
    }
    String display = s.jobName ?: (project != null ? project.getPath().getParent().getFileName().toString() :
        Q.imageName(null, imageData))
    def client = milsil.connect()
    client.listModels()   // fail fast (server down, wrong token) before reading any pixels
    String datasetName = s.dataset
    if (!datasetName) {
        def bags = milsil.Bags.projectBags(client, s, project, milsil.entry, imageData, { line -> println('milsil: ' + line) })
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
        def dataset = milsil.Bags.upload(client, display, bags, 32)
        datasetName = dataset.name
        println('milsil: ' + (dataset.already_existed ? 'already on the server: ' : 'uploaded ') + dataset.name +
            ' (' + dataset.bag_count + ' bags, ' + dataset.patient_count + ' images; classes ' +
            dataset.class_names.join(', ') + ')')
    }
    def config = [arch: s.arch, head: s.head, recipe: s.recipe ?: '', pretrained: s.pretrained ?: '',
                  width: S.integer(s.width), epochs: S.integer(s.epochs),
                  learning_rate: S.num(s.learningRate), batch_size: S.integer(s.batchSize),
                  patch_size: S.integer(s.patchSize), seed: S.integer(s.seed),
                  validation_fraction: S.num(s.validationFraction), no_augment: S.flag(s, 'noAugment'),
                  stain_normalize: s.stainNormalize ?: '']
    def job = client.startTraining(datasetName, config, display)
    println('milsil: started ' + job.name + ' on ' + datasetName + ' (' + config.arch + ', ' + config.epochs + ' epochs)')
    long every = (long) (S.num(s.progressEverySeconds) * 1000)
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
}

// ---- find lib/ (milsilHome, -Dmilsil.home, MILSIL_HOME, this script's folder, ~/milsil/qupath_scripts); run the work ----
def boot = [settings.milsilHome, System.getProperty('milsil.home'), System.getenv('MILSIL_HOME'),
    (binding.variables['qupath.script.file'] as File)?.absoluteFile?.parent, System.getProperty('user.home') + '/milsil/qupath_scripts']
    .findAll().collect { new File("$it/lib/MilsilBootstrap.groovy") }.find { it.isFile() }
if (!boot) return println('milsil: SETUP: cannot find lib/MilsilBootstrap.groovy; set milsilHome in the settings')
new GroovyClassLoader(getClass().classLoader).parseClass(boot).run(this, boot.parentFile.parent, settings, [oncePerProject: true], work)
