/*
 * MilsilBootstrap.groovy -- loads the shared milsil library for a QuPath script. Every script
 * keeps only the lines that find the milsil folder (the one holding lib/), then calls
 *
 *     def milsil = new GroovyClassLoader(this.getClass().getClassLoader())
 *         .parseClass(new File(home, 'lib/MilsilBootstrap.groovy')).load(home, settings)
 *
 * and gets [home, Client (the MilsilClient class), QuPath (the MilsilQuPath class),
 * settings (the script's settings with `home` and the `milsil.<key>` system-property
 * overrides applied), error (null, or the one "milsil: SETUP: ..." line to print)].
 * A script that needs more of lib/ names it: load(home, settings, ['MilsilCells']) also
 * compiles lib/MilsilCells.groovy and returns its class under the key 'MilsilCells' (only
 * the scripts that use a part pay for compiling it).
 *
 * This file imports nothing beyond the JDK and Groovy, so it always compiles; a missing
 * grpc-java/protobuf jar shows up when MilsilClient.groovy is compiled, and becomes that one
 * SETUP line here. Same Groovy subset as the other lib files (Groovy 2.4 and 4).
 */

class MilsilBootstrap {

    /** The library classes and the effective settings, or [error: line] when they cannot be loaded. */
    static Map load(Object home, Map settings, List<String> parts = []) {
        String dir = home.toString()
        try {
            GroovyClassLoader loader = new GroovyClassLoader(MilsilBootstrap.class.getClassLoader())
            Class client = loader.parseClass(new File(dir, 'lib/MilsilClient.groovy'))
            Class quPath = loader.parseClass(new File(dir, 'lib/MilsilQuPath.groovy'))
            Map options = new LinkedHashMap(settings == null ? [:] : settings)
            options.put('home', dir)
            Map effective = (Map) client.withOverrides(options)
            Map loaded = [home: dir, Client: client, QuPath: quPath, settings: effective, error: null]
            for (String part : parts) {
                loaded.put(part, loader.parseClass(new File(dir, 'lib/' + part + '.groovy')))
            }
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
