/*
 * MilsilTrust.groovy -- whether the model can judge what it was shown (issue 20), for every
 * milsil script that classifies, draws or measures. Every inference answer carries a
 * Familiarity (proto/milsil/v1/common.proto: available, score, threshold, unlike_training)
 * for the unit it judged: a region (Annotate, Heatmap, MeasureObjects), a TMA core's bag
 * (ClassifyBag), a slide tile (each AnnotateSlide feature's own "milsil OOD score").
 *
 * What a script does with it, all here so that every script does the same:
 *  - a region unlike the training data: one line, "milsil: <image>: <region>: unlike the
 *    training data (score S, threshold T)", once per region;
 *  - every object the script creates or measures gets the measurement "milsil OOD score"
 *    (the score of the region it lies in), familiar or not;
 *  - an object in an unlike region gets the class "milsil: unlike training" instead of the
 *    confident one (nothing dropped, nothing confident drawn where the model cannot judge),
 *    unless the flag `markUnlikeTraining` (MilsilSettings' flag rule) is false;
 *  - a model without training statistics (available = false: trained before milsil
 *    recorded them, or attention MIL): the plain behaviour, no measurement, and one line
 *    saying so, once per script run.
 *
 * One MilsilTrust per script run (it remembers what it already said). It only builds:
 * the scripts call mark()/classFor() on objects not yet in the image, or when they change
 * the image at the end; regions are named as in the scripts' other lines
 * (MilsilQuPath.regionName). QuPath API used: PathObject.getMeasurementList().put/get,
 * PathObject.setPathClass, PathObject.getPathClass,
 * PathClass.fromString(String, Integer) (QuPath 0.6 PathClass.java: "milsil: unlike
 * training" is the class "unlike training" derived from "milsil", shown as the whole name).
 * Same Groovy subset as the other lib files (Groovy 2.4 and 4; getters called explicitly).
 */

import qupath.lib.objects.PathObject
import qupath.lib.objects.classes.PathClass

class MilsilTrust {
    /** The measurement every created or measured object gets (absent without statistics). */
    static final String MEASUREMENT = 'milsil OOD score'
    /** The class of objects in a region unlike the training data. */
    static final String UNLIKE_CLASS = 'milsil: unlike training'
    /** Its colour when QuPath does not know the class yet: a neutral grey (packed ARGB). */
    static final int UNLIKE_COLOR = (int) 0xffa0a0a0
    /** The flag that, false, keeps the confident class (the plain behaviour). */
    static final String SETTING = 'markUnlikeTraining'

    final String image
    final String model
    final boolean marking
    final Closure log
    private boolean saidNoStatistics = false
    private final Set<String> warned = new HashSet<String>()

    /** For one script run on image `image` with model `model`; lines go to `log`. */
    static MilsilTrust forRun(Map settings, String image, String model, Closure log) {
        return new MilsilTrust(settings, image, model, log)
    }

    MilsilTrust(Map settings, String image, String model, Closure log) {
        this.image = image
        this.model = model
        this.marking = MilsilSettings.flag(settings, SETTING)
        this.log = log
    }

    /**
     * The verdict of a Familiarity map (as MilsilCodec decodes it; null when the answer had
     * none): [score, threshold, unlike], or null when the model carries no statistics.
     * Says nothing (judge() does).
     */
    static Map verdict(Map familiarity) {
        if (familiarity == null || !familiarity.get('available')) {
            return null
        }
        return [score    : ((Number) familiarity.get('score')).doubleValue(),
                threshold: ((Number) familiarity.get('threshold')).doubleValue(),
                unlike   : (boolean) familiarity.get('unlike_training')]
    }

    /**
     * The verdict of a region's Familiarity, saying what the user must know: the warning
     * line for a region unlike the training data (once per region name), or, once per run,
     * that the model carries no training statistics. `region` names it as the scripts'
     * other lines do (MilsilQuPath.regionName).
     */
    Map judge(Map familiarity, String region) {
        Map v = verdict(familiarity)
        if (v == null) {
            if (!saidNoStatistics) {
                saidNoStatistics = true
                MilsilProgress.say(log, 'milsil: ' + image + ': ' + model + ' carries no training statistics ' +
                    '(trained before milsil recorded them): inputs unlike the training data are not detected and no "' +
                    MEASUREMENT + '" is added')
            }
            return null
        }
        if (v.get('unlike') && warned.add(region)) {
            MilsilProgress.say(log, 'milsil: ' + image + ': ' + region + ': unlike the training data (score ' +
                number((double) v.get('score')) + ', threshold ' + number((double) v.get('threshold')) + ')')
        }
        return v
    }

    /**
     * Marks `objects` (built, not yet in the image) with a region's verdict: the measurement
     * on each, and, when `classify` and the object lies in an unlike region, the class
     * UNLIKE_CLASS (unless markUnlikeTraining is false). With `ownScores` (AnnotateSlide:
     * each feature carries its own slide tile's "milsil OOD score"), an object is judged by
     * its own score against the verdict's threshold; when some are unlike the training data
     * in a region that as a whole is not, one line says so for `region`. Returns how many
     * objects are unlike the training data (0 without statistics: nothing is changed then).
     */
    int mark(List<PathObject> objects, Map verdict, boolean classify = true, boolean ownScores = false,
             String region = null) {
        if (verdict == null) {
            return 0
        }
        int unlike = 0
        double threshold = (double) verdict.get('threshold')
        double highest = Double.NEGATIVE_INFINITY
        for (PathObject o : objects) {
            double own = ownScores ? o.getMeasurementList().get(MEASUREMENT) : Double.NaN
            boolean away = Double.isNaN(own) ? (boolean) verdict.get('unlike') : own > threshold
            unlike += markOne(o, Double.isNaN(own) ? (double) verdict.get('score') : own, away, classify) ? 1 : 0
            highest = away && own > highest ? own : highest
        }
        if (ownScores && unlike > 0 && !verdict.get('unlike') && region != null) {
            MilsilProgress.say(log, 'milsil: ' + image + ': ' + region + ': ' + unlike + ' of ' + objects.size() +
                ' object(s) lie in slide tiles unlike the training data (highest score ' + number(highest) +
                ', threshold ' + number(threshold) + ')')
        }
        return unlike
    }

    /**
     * One object: the measurement `score` (NaN: none, the model has no statistics) and, when
     * `unlike` and `classify`, the class UNLIKE_CLASS (unless markUnlikeTraining is false).
     * Returns `unlike`.
     */
    boolean markOne(PathObject o, double score, boolean unlike, boolean classify) {
        if (!Double.isNaN(score)) {
            o.getMeasurementList().put(MEASUREMENT, score)
        }
        if (unlike && classify) {
            o.setPathClass(classFor(true, o.getPathClass()))
        }
        return unlike
    }

    /** The class an object gets instead of `confident` when it lies in an `unlike` region. */
    PathClass classFor(boolean unlike, PathClass confident) {
        return unlike && marking ? unlikeClass() : confident
    }

    /** UNLIKE_CLASS as QuPath's one instance (grey when new). */
    static PathClass unlikeClass() {
        return PathClass.fromString(UNLIKE_CLASS, UNLIKE_COLOR)
    }

    /**
     * A score or threshold in a line, as the CLI writes it (Python's "{:.3g}",
     * milsil.inference.familiarity.FamiliarityScore.warning): 3 significant digits, trailing
     * zeros dropped, scientific ("1.23e+04") below 1e-4 and from 1e3 on.
     */
    static String number(double v) {
        if (Double.isNaN(v) || Double.isInfinite(v)) {
            return Double.isNaN(v) ? 'nan' : (v > 0 ? 'inf' : '-inf')
        }
        if (v == 0d) {
            return '0'
        }
        BigDecimal r = new BigDecimal(v).round(new java.math.MathContext(3, java.math.RoundingMode.HALF_EVEN))
        int exponent = r.precision() - r.scale() - 1
        if (exponent < -4 || exponent >= 3) {
            return r.movePointLeft(exponent).stripTrailingZeros().toPlainString() + 'e' +
                String.format(Locale.ROOT, '%+03d', exponent)
        }
        return r.stripTrailingZeros().toPlainString()
    }

    /**
     * " (N unlike the training data: class ...)" for a script's result line, '' for none;
     * `classified`: whether the script set classes (else the class is not mentioned).
     */
    String unlikeNote(int unlike, String what = '', boolean classified = true) {
        if (unlike == 0) {
            return ''
        }
        return ' (' + unlike + (what ? ' ' + what : '') + ' unlike the training data' +
            (!classified ? '' : marking ? ': class ' + UNLIKE_CLASS : ', class kept: ' + SETTING + ' = false') + ')'
    }
}
