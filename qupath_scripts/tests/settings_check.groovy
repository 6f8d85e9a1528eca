/*
 * Prints what MilsilSettings.flag (lib/MilsilSettings.groovy) makes of each value named on the
 * command line, for tests/test_groovy_settings.py: "<key>=<value>" reads that setting,
 * "<key>" reads a settings map without it (its default). One line each: true, false, or the
 * failure's line.
 *
 * Usage: groovy settings_check.groovy <milsil scripts folder> key=value|key ...
 */

def gcl = new GroovyClassLoader(this.class.classLoader)
gcl.addClasspath(new File(args[0], 'lib').getAbsolutePath())
def settings = gcl.loadClass('MilsilSettings')
for (String spec : args.drop(1)) {
    int eq = spec.indexOf('=')
    Map s = eq < 0 ? [:] : [(spec.substring(0, eq)): spec.substring(eq + 1)]
    String key = eq < 0 ? spec : spec.substring(0, eq)
    try {
        println(settings.flag(s, key))
    } catch (Throwable t) {
        println(t.getMessage())
    }
}
