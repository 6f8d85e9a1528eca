/*
 * MilsilBootstrap.groovy -- loads the shared milsil library for a QuPath script and runs the
 * script's work with it. Every script is its settings block and its work (a closure); its
 * last lines find the milsil folder (the one holding lib/: boot is lib/MilsilBootstrap.groovy
 * in it) and hand the work to run():
 *
 *     def work = { milsil -> ...the work... }
 *     ...
 *     new GroovyClassLoader(getClass().classLoader).parseClass(boot)
 *         .run(this, boot.parentFile.parent, settings, [image: true], work)
 *
 * run() does what every script did before its own work: load lib/ (one SETUP line when it
 * cannot), apply the settings overrides, take the current image (one NO_IMAGE line when the
 * work needs one and none is open; options.image) and name it as users know it, run a work
 * that is for the whole project once, on the last image of a "Run for project" batch
 * (options.oncePerProject; one line on the others), and it turns any failure of
 * the work into its one "milsil: <CODE>: ..." line and closes the clients the work opened.
 * The work gets a map: settings (the effective settings), home, Client, QuPath, Settings,
 * Bags, Trust (the library classes; options.parts adds more, e.g. ['MilsilCells'] under its own
 * name), imageData, entry (the project entry or null), name (the image's name, or null
 * without an image) and connect (a closure: a client whose waiting lines go to the log).
 *
 * lib/ goes on the class path of the loader, so each lib file compiles the lib files it
 * names (MilsilClient -> MilsilRpc -> MilsilCodec -> MilsilFailure, ...), each once.
 * This file imports nothing beyond the JDK and Groovy, so it always compiles; a missing
 * grpc-java/protobuf jar shows up when the library is compiled, and becomes that one SETUP
 * line here. Same Groovy subset as the other lib files (Groovy 2.4 and 4).
 */

class MilsilBootstrap {

    /** What a script gets besides the parts it names: key -> lib class. */
    static final Map<String, String> CLASSES = [Client  : 'MilsilClient', QuPath: 'MilsilQuPath',
                                                Settings: 'MilsilSettings', Bags: 'MilsilBags', Trust: 'MilsilTrust']

    /**
     * Runs `work(milsil)` for `script` (the running script: its println writes to QuPath's
     * log). `options.image`: the work needs an open image; `options.parts`: more lib classes;
     * `options.oncePerProject`: the work is for the whole project (runs on a batch's last image).
     */
    static void run(Object script, Object home, Map settings, Map options, Closure work) {
        Map milsil = load(home, settings, (List<String>) (options.get('parts') ?: []))
        if (milsil.get('error')) {
            script.println(milsil.get('error'))
            return
        }
        Class client = (Class) milsil.get('Client')
        List opened = []
        try {
            Class qp = Class.forName('qupath.lib.scripting.QP', true, MilsilBootstrap.class.getClassLoader())
            Object imageData = qp.getCurrentImageData()
            Object entry = qp.getProjectEntry()
            if (imageData == null && options.get('image')) {
                script.println('milsil: NO_IMAGE: open an image first; nothing was changed')
                return
            }
            milsil.putAll([imageData: imageData, entry: entry,
                           name     : imageData == null ? null : milsil.get('QuPath').imageName(entry, imageData)])
            milsil.put('connect', { ->
                Object c = client.connect((Map) milsil.get('settings'))
                opened.add(c)
                c.onWait = { String line -> script.println(line) }   // busy server: say so and keep waiting
                return c
            })
            if (options.get('oncePerProject') && !lastOfBatch(script.getBinding(), milsil)) {
                script.println('milsil: ' + milsil.get('name') + ': the project is collected once, on the last image of the batch')
                return
            }
            work.call(milsil)
        } catch (Throwable e) {
            script.println(client.describe(e))
        } finally {
            for (Object c : opened) {
                c.close()
            }
        }
    }

    /** Whether this run is the last image of a "Run for project" batch (always, outside a batch). */
    static boolean lastOfBatch(Object binding, Map milsil) {
        Object qupath = milsil.get('QuPath')
        int size = ((Number) qupath.batch(binding, 'qupath.script.batchSize', 1)).intValue()
        Object last = qupath.batch(binding, 'qupath.script.batchLast', true)
        return size <= 1 || milsil.get('Settings').flag('qupath.script.batchLast', last)
    }

    /** The library classes and the effective settings, or [error: line] when they cannot be loaded. */
    static Map load(Object home, Map settings, List<String> parts = []) {
        String dir = home.toString()
        try {
            GroovyClassLoader loader = new GroovyClassLoader(MilsilBootstrap.class.getClassLoader())
            loader.addClasspath(new File(dir, 'lib').getAbsolutePath())
            Map loaded = [home: dir, error: null]
            for (Map.Entry<String, String> e : CLASSES.entrySet()) {
                loaded.put(e.getKey(), loader.loadClass(e.getValue()))
            }
            for (String part : parts) {
                loaded.put(part, loader.loadClass(part))
            }
            Map options = new LinkedHashMap(settings == null ? [:] : settings)
            options.put('home', dir)
            loaded.put('settings', loaded.get('Settings').withOverrides(options))
            return loaded
        } catch (Throwable e) {
            return [error: setupLine(e)]
        }
    }

    /** "milsil: SETUP: ..." for a library that failed to load (missing jars, most often). */
    static String setupLine(Throwable e) {
        List<String> lines = (e.getMessage() ?: e.toString()).readLines()
        String why = lines.find { String l -> l.contains('unable to resolve class') }
        if (why) {
            return 'milsil: SETUP: the grpc-java/protobuf jars are not on QuPath\'s class path (' + why.trim() +
                '); copy the jars listed in qupath_scripts/README.md into QuPath\'s extensions folder'
        }
        return 'milsil: SETUP: ' + (lines ? lines[0] : e.getClass().getSimpleName())
    }
}
