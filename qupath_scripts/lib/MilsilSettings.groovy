/*
 * MilsilSettings.groovy -- the one reader of a script's settings block, shared by every
 * milsil script and lib file (so that `true`, `"false"` or `"no"` mean the same everywhere).
 *
 * Where a value comes from: the script's settings block, merged over DEFAULTS; then a Java
 * system property `milsil.<key>` (headless and test runs) replaces it as a string; an empty
 * `token` falls back to the MILSIL_TOKEN environment variable (tokens need not live in scripts).
 *
 * The flag rule (one for all flags): a flag's value is a Boolean, or one of the words
 * true/false, yes/no, 1/0 (any case, surrounding blanks ignored). A flag the settings do not
 * have takes its documented default (FLAG_DEFAULTS, the same as the scripts' settings blocks).
 * Any other value is an error naming the setting and the allowed values: a typo such as
 * `serverSlides = "ture"` stops the script instead of silently meaning true or false.
 *
 * Same Groovy subset as the other lib files (Groovy 2.4 and 4; getters called explicitly).
 */

class MilsilSettings {

    /** Settings every script understands, with their defaults. */
    static final Map DEFAULTS = [
        server               : 'localhost:50051',
        token                : '',
        trustCert            : '',
        clientCert           : '',
        clientKey            : '',
        descriptor           : '',
        home                 : '',
        timeoutSeconds       : 60,
        streamTimeoutSeconds : 900,
        watchTimeoutSeconds  : 86400,
        maxMessageMb         : 64,
        retryBusy            : true,
    ]

    /** The default of every flag a script may leave out of its settings block. */
    static final Map FLAG_DEFAULTS = [
        retryBusy              : true,   // retry a call the server refuses as busy
        serverSlides           : false,  // let the server read the slide itself
        wholeImageIfNoSelection: true,   // nothing selected: use the whole image
        addTiles               : false,  // heatmap_to_annotations: also add probability tiles
        setClass               : true,   // tma_batch: set each core's class
        addHeatmap             : false,  // tma_batch: also outline a class inside each core
        useCellRoi             : false,  // classify_cells: measure whole cells, not nuclei
        classify               : false,  // classify_cells: also set each measured cell's class
        noAugment              : false,  // train_from_project: no flips/rotations/colour jitter
        markUnlikeTraining     : true,   // class "milsil: unlike training" for objects the model cannot judge (MilsilTrust)
    ]

    static final List<String> TRUE_WORDS = ['true', 'yes', '1']
    static final List<String> FALSE_WORDS = ['false', 'no', '0']

    /** `options` merged over DEFAULTS, then system-property overrides; token from env if empty. */
    static Map withOverrides(Map options) {
        Map s = new LinkedHashMap(DEFAULTS)
        if (options != null) {
            s.putAll(options)
        }
        for (Object key : new ArrayList(s.keySet())) {
            String override = System.getProperty('milsil.' + key)
            if (override != null) {
                s.put(key, override)
            }
        }
        if (!s.get('token')) {
            String env = System.getenv('MILSIL_TOKEN')
            s.put('token', env == null ? '' : env)
        }
        return s
    }

    /** The flag `key` of the settings `s`, by the flag rule above. */
    static boolean flag(Map s, String key) {
        Object v = s == null ? null : s.get(key)
        if (v == null) {
            if (!FLAG_DEFAULTS.containsKey(key)) {
                throw new MilsilFailure('SETUP', 'setting ' + key + ' is missing and has no default; set ' + key +
                    ' = true or false in the settings')
            }
            return (Boolean) FLAG_DEFAULTS.get(key)
        }
        return flag(key, v)
    }

    /** `value` of the flag called `name` (named in the error), by the flag rule above. */
    static boolean flag(String name, Object value) {
        if (value instanceof Boolean) {
            return (Boolean) value
        }
        String word = value == null ? '' : value.toString().trim().toLowerCase(Locale.ROOT)
        if (TRUE_WORDS.contains(word)) {
            return true
        }
        if (FALSE_WORDS.contains(word)) {
            return false
        }
        throw new MilsilFailure('SETUP', 'setting ' + name + ' = "' + value + '" is not a flag; allowed: ' +
            (TRUE_WORDS + FALSE_WORDS).join(', '))
    }

    /** A number setting (a Number, or its text from a system-property override). */
    static double num(Object v) {
        if (v instanceof Number) {
            return ((Number) v).doubleValue()
        }
        return Double.parseDouble(v.toString().trim())
    }

    /** A whole-number setting, rounded. */
    static int integer(Object v) {
        return (int) Math.round(num(v))
    }

    /** A list setting: a Groovy list, or a comma-separated string (system-property overrides). */
    static List<String> list(Object v) {
        if (v == null) {
            return []
        }
        if (v instanceof Collection) {
            return ((Collection) v).collect { Object x -> x.toString() }
        }
        String s = v.toString().trim()
        if (s.startsWith('[') && s.endsWith(']')) {
            s = s.substring(1, s.length() - 1)
        }
        return s ? s.split(',').collect { String x -> x.trim() }.findAll { String x -> x } : []
    }
}
