/*
 * Runs milsil's QuPath scripts against the QuPath stand-ins in tests/stubs, the way QuPath
 * runs them: the current image (script editor "Run") or every image of the project in turn
 * ("Run for project", with QuPath's qupath.script.batch* binding variables). One JVM runs all
 * the scripts of a test session (JVM starts are slow).
 *
 * Usage: groovy -cp <stub classes>:<grpc jars> run_qupath.groovy spec.json
 * spec.json: {"out": dir, "project_dir": dir, "images": [...], "runs": [...]}, see
 * tests/test_qupath_scripts.py. Writes <out>/<run id>.log (what the script printed) and
 * <out>/<run id>.state.json (every image's objects afterwards), <out>/<run id>.reads.json
 * (each image's largest single read so far, in pixels), parsed GeoJSON under <out>/geojson/.
 */

import com.google.gson.Gson
import com.google.gson.GsonBuilder
import com.google.gson.JsonArray
import com.google.gson.JsonObject
import milsilstub.PngImageServer
import milsilstub.SimpleTMAGrid
import milsilstub.StubProject
import milsilstub.World
import qupath.lib.images.ImageData
import qupath.lib.io.PathIO
import qupath.lib.objects.PathObject
import qupath.lib.objects.PathObjects
import qupath.lib.objects.TMACoreObject
import qupath.lib.objects.classes.PathClass
import qupath.lib.objects.hierarchy.PathObjectHierarchy
import qupath.lib.regions.ImagePlane
import qupath.lib.roi.ROIs

import java.lang.management.ManagementFactory
import java.lang.management.MemoryPoolMXBean
import java.lang.management.MemoryType
import java.nio.file.Paths

Gson gson = new GsonBuilder().disableHtmlEscaping().setPrettyPrinting().create()
Map spec = new Gson().fromJson(new File(args[0]).getText('UTF-8'), Map)
File out = new File((String) spec.get('out'))
out.mkdirs()
World.geojsonDir = new File(out, 'geojson').toPath()

def makeObject = { Map o ->
    String kind = (String) o.get('kind')
    if (kind == 'geojson') {  // one GeoJSON feature, imported as QuPath imports a file of them
        byte[] text = ((String) o.get('feature')).getBytes('UTF-8')
        return PathIO.readObjectsFromGeoJSON(new ByteArrayInputStream(text))[0]
    }
    List c = (List) o.get('coords')
    def plane = ImagePlane.getDefaultPlane()
    if (kind == 'tma') {
        TMACoreObject core = PathObjects.createTMACoreObject(
            (double) c[0], (double) c[1], (double) c[2], (double) c[3], (Boolean) o.get('missing') ?: false)
        return core
    }
    def polygonRoi = { List ring ->
        ROIs.createPolygonROI(ring.collect { List p -> (double) p[0] } as double[],
            ring.collect { List p -> (double) p[1] } as double[], plane)
    }
    PathClass pc = o.get('class') ? PathClass.fromString((String) o.get('class')) : null
    if (kind == 'cell') {  // coords: the cell's polygon; nucleus: the nucleus polygon (or none)
        return PathObjects.createCellObject(polygonRoi(c), o.get('nucleus') ? polygonRoi((List) o.get('nucleus')) : null,
            pc, null)
    }
    def roi
    if (o.get('shape') == 'polygon') {
        roi = polygonRoi(c)
    } else if (o.get('shape') == 'ellipse') {
        roi = ROIs.createEllipseROI((double) c[0], (double) c[1], (double) c[2], (double) c[3], plane)
    } else {
        roi = ROIs.createRectangleROI((double) c[0], (double) c[1], (double) c[2], (double) c[3], plane)
    }
    return kind == 'detection' ? PathObjects.createDetectionObject(roi, pc) : PathObjects.createAnnotationObject(roi, pc)
}

// spec "memory": true (bench/cells_bench.py): a MEMORY line per run, the heap in use after a
// full GC before and after it, peaks during it (heap pools summed; resident memory), in bytes.
def usedHeap = { -> System.gc(); Runtime r = Runtime.getRuntime(); return r.totalMemory() - r.freeMemory() }
def vm = { String field ->
    String line = new File('/proc/self/status').readLines().find { String l -> l.startsWith(field + ':') }
    return line == null ? -1L : Long.parseLong(line.split(/\s+/)[1]) * 1024L
}

StubProject project = spec.get('project_dir') ?
    new StubProject(Paths.get((String) spec.get('project_dir'), 'project.qpproj')) : null
List<Map> images = []
for (Map img : (List<Map>) spec.get('images')) {
    PathObjectHierarchy hierarchy = new PathObjectHierarchy()
    // "slide": the whole-slide file these pixels stand for (what getURIs() names); "no_file":
    // an image with no file behind it (no URIs, a random id as its path) named "server_name".
    // "pixel_size_um": the pixel calibration (default 0.5; null: none, QuPath's NaN).
    String path = (String) img.get('path')
    PngImageServer imageServer = img.get('no_file') ?
        new PngImageServer(path, null, (String) img.get('server_name'), true) :
        new PngImageServer(path, (String) img.get('slide'))
    if (img.containsKey('pixel_size_um')) {
        imageServer.pixelSizeMicrons = img.get('pixel_size_um') == null ? Double.NaN :
            ((Number) img.get('pixel_size_um')).doubleValue()
    }
    ImageData data = new ImageData(imageServer, hierarchy)
    List<PathObject> selected = []
    List<TMACoreObject> cores = []
    for (Map o : (List<Map>) (img.get('objects') ?: [])) {
        PathObject obj = makeObject(o)
        if (o.get('name')) {
            obj.setName((String) o.get('name'))
        }
        if (obj instanceof TMACoreObject) {
            if (o.get('class')) {
                obj.setPathClass(PathClass.fromString((String) o.get('class')))
            }
            cores.add((TMACoreObject) obj)
        } else {
            hierarchy.addObject(obj, false)
        }
        if (o.get('selected')) {
            selected.add(obj)
        }
    }
    if (!cores.isEmpty()) {
        hierarchy.setTMAGrid(new SimpleTMAGrid(cores))
    }
    hierarchy.getSelectionModel().setSelectedObjects(selected, null)
    def entry = project == null || img.get('standalone') ? null :
        project.add((String) img.get('name'), data, (Map<String, String>) (img.get('metadata') ?: [:]))
    images.add([name: img.get('name'), data: data, entry: entry, standalone: img.get('standalone')])
}

def dumpAll = { ->
    JsonArray all = new JsonArray()
    for (Map img : images) {
        JsonObject j = World.dump(((ImageData) img.get('data')).getHierarchy())
        j.addProperty('image', (String) img.get('name'))
        all.add(j)
    }
    return all
}
new File(out, 'initial.state.json').setText(gson.toJson(dumpAll()), 'UTF-8')

Set<String> setProperties = [] as Set
for (Map run : (List<Map>) spec.get('runs')) {
    String id = (String) run.get('id')
    for (String key : setProperties) {
        System.clearProperty(key)
    }
    setProperties.clear()
    ((Map) (run.get('properties') ?: [:])).each { k, v ->
        System.setProperty(k.toString(), v.toString())
        setProperties.add(k.toString())
    }
    File script = new File((String) run.get('script'))
    List<Integer> order = run.get('mode') == 'project' ? (0..<images.size()).findAll { int i -> !images.get(i).get('standalone') } :
        [((Number) (run.get('image') ?: 0)).intValue()]
    StringWriter log = new StringWriter()
    Map memory = spec.get('memory') ? [heap_before: usedHeap()] : null
    if (memory != null) {  // peaks from here: the heap pools' and (Linux) the process's VmHWM
        ManagementFactory.getMemoryPoolMXBeans().each { MemoryPoolMXBean p -> p.resetPeakUsage() }
        new File('/proc/self/clear_refs').setText('5')
        memory.rss_before = vm('VmRSS')
    }
    long started = System.currentTimeMillis()
    order.eachWithIndex { Integer index, int batchIndex ->
        Map img = images.get(index)
        World.imageData = (ImageData) img.get('data')
        World.entry = run.get('no_project') ? null : img.get('entry')
        World.project = run.get('no_project') ? null : project
        if (run.containsKey('select')) {
            // Select the named objects of this image (an empty list clears the selection).
            PathObjectHierarchy h = ((ImageData) img.get('data')).getHierarchy()
            List<PathObject> chosen = []
            def walk
            walk = { PathObject p ->
                for (PathObject c : p.getChildObjects()) {
                    if (((List) run.get('select')).contains(c.getName())) {
                        chosen.add(c)
                    }
                    walk.call(c)
                }
            }
            walk.call(h.getRootObject())
            h.getSelectionModel().setSelectedObjects(chosen, null)
        }
        Binding binding = new Binding()
        binding.setVariable('out', new PrintWriter(log, true))
        binding.setVariable('qupath.script.file', script.getAbsolutePath())
        binding.setVariable('qupath.script.batchSize', order.size())
        binding.setVariable('qupath.script.batchIndex', batchIndex)
        binding.setVariable('qupath.script.batchLast', batchIndex == order.size() - 1)
        try {
            new GroovyShell(this.class.classLoader, binding).evaluate(script)
        } catch (Throwable t) {
            // QuPath would log the stack trace; the tests require scripts never to get here.
            log.append('UNCAUGHT ' + t.getClass().getName() + ': ' + t.getMessage() + '\n')
            StringWriter sw = new StringWriter()
            t.printStackTrace(new PrintWriter(sw))
            System.err.println(sw)
        }
    }
    if (memory != null) {  // before the states are dumped
        memory.putAll(script_ms: System.currentTimeMillis() - started, rss_peak: vm('VmHWM'),
            heap_peak: ManagementFactory.getMemoryPoolMXBeans().findAll { MemoryPoolMXBean p -> p.getType() == MemoryType.HEAP }
                .sum { MemoryPoolMXBean p -> p.getPeakUsage().getUsed() }, heap_after: usedHeap(), heap_max: Runtime.getRuntime().maxMemory())
        println('MEMORY ' + id + ' ' + new Gson().toJson(memory))
    }
    new File(out, id + '.log').setText(log.toString(), 'UTF-8')
    new File(out, id + '.state.json').setText(gson.toJson(dumpAll()), 'UTF-8')
    // The largest single readRegion of each image so far (pixels): what a script held at once.
    Map<String, Long> largest = [:]
    for (Map img : images) {
        largest.put((String) img.get('name'), ((PngImageServer) ((ImageData) img.get('data')).getServer()).largestRead)
    }
    new File(out, id + '.reads.json').setText(gson.toJson(largest), 'UTF-8')
    println('RUN ' + id + ' ' + (System.currentTimeMillis() - started) + ' ms')
}
println('DONE')
