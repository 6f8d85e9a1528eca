/*
 * milsil: export_labels.groovy
 *
 * Collects the labelled material of the project and uploads it to the milsil server as one
 * dataset (UploadDataset), each image being its own patient/group id so that no image ends
 * up on both sides of a train/validation split. A bag is:
 *   - a classified area annotation (its patches, label = its class),
 *   - a classified, non-missing TMA core (label = its class),
 *   - a whole image whose project metadata has `metadataKey` (label = that value).
 * Prints the dataset's name for train_from_project.groovy (`dataset` setting) or the
 * `milsil client train` command. Identical material gives the same dataset (nothing is re-stored).
 *
 * Run it once from the script editor: it reads every image of the project itself (the open
 * image with its unsaved changes). Under "Run for project" it does the work once, on the
 * last image of the batch. Never changes an image. On any problem it prints one line
 * ("milsil: <CODE>: <message>"). Set-up: see qupath_scripts/README.md.
 */

import static qupath.lib.scripting.QP.*

// ============================== settings ==============================
def settings = [
    server          : 'localhost:50051', // host:port of `milsil serve`
    token           : '',                // bearer token; '' = the MILSIL_TOKEN environment variable
    trustCert       : '',                // CA certificate (PEM) of a TLS server; '' = plaintext
    sources         : ['annotations', 'tma', 'metadata'], // where labels come from
    metadataKey     : 'milsil_label',    // project metadata key holding an image-level label
    ignoreClasses   : ['Ignore*', 'Region*'], // classes that are not labels ('*' = prefix)
    downsample      : 1.0,               // read pixels at this downsample
    patchSize       : 64,                // patch side in pixels (at `downsample`)
    maxPatchesPerBag: 64,                // at most this many patches per bag (evenly spaced)
    datasetName     : '',                // display name; '' = the project's folder name
    timeoutSeconds  : 60,                // deadline of quick calls
    streamTimeoutSeconds: 3600,          // deadline of the upload
    milsilHome      : '',                // folder holding lib/ (the milsil scripts folder); '' = beside this script
]
// ======================================================================

// ---- the work, which lib/MilsilBootstrap.groovy runs (the last lines) ----
def work = { milsil ->
    def (s, Q) = [milsil.settings, milsil.QuPath]   // the effective settings, the library's QuPath helpers
    def imageData = milsil.imageData
    def project = getProject()
    if (imageData == null && project == null) {
        println('milsil: NO_IMAGE: open a project or an image first')
        return
    }
    def client = milsil.connect()
    client.listModels()   // fail fast (server down, wrong token) before reading any pixels
    def bags = milsil.Bags.projectBags(client, s, project, milsil.entry, imageData, { line -> println('milsil: ' + line) })
    if (bags.isEmpty()) {
        println('milsil: NOTHING_TO_DO: no labelled material: classify annotations or TMA cores, or set the ' +
            'project metadata "' + s.metadataKey + '" of whole images; nothing was uploaded')
        return
    }
    String display = s.datasetName ?: (project != null ? project.getPath().getParent().getFileName().toString() :
        Q.imageName(null, imageData))
    def dataset = milsil.Bags.upload(client, display, bags, 32)
    println('milsil: ' + (dataset.already_existed ? 'already on the server: ' : 'uploaded ') + dataset.name + ' (' +
        dataset.bag_count + ' bags, ' + dataset.tile_count + ' patches, ' + dataset.patient_count +
        ' images; classes ' + dataset.class_names.join(', ') + ')')
}

// ---- find lib/ (milsilHome, -Dmilsil.home, MILSIL_HOME, this script's folder, ~/milsil/qupath_scripts); run the work ----
def boot = [settings.milsilHome, System.getProperty('milsil.home'), System.getenv('MILSIL_HOME'),
    (binding.variables['qupath.script.file'] as File)?.absoluteFile?.parent, System.getProperty('user.home') + '/milsil/qupath_scripts']
    .findAll().collect { new File("$it/lib/MilsilBootstrap.groovy") }.find { it.isFile() }
if (!boot) return println('milsil: SETUP: cannot find lib/MilsilBootstrap.groovy; set milsilHome in the settings')
new GroovyClassLoader(getClass().classLoader).parseClass(boot).run(this, boot.parentFile.parent, settings, [oncePerProject: true], work)
