/*
 * MilsilProgress.groovy -- progress lines of one long piece of work (a region's tiles, a
 * slide the server reads, a classify_cells run), at most every `everySeconds` and only when
 * the percentage moved: "milsil: slide.svs: Tumor 1: 38% (412/1,080 tiles), eta 2 min".
 * Lines go to `log` (a script's println) or standard output.
 * Same Groovy subset as the other lib files (Groovy 2.4 and 4; getters called explicitly).
 */

class MilsilProgress {
    final String label
    final double every
    final Closure log
    long started = System.nanoTime()
    long last = System.nanoTime()
    int percent = -1

    MilsilProgress(String label, Object everySeconds, Closure log) {
        this.label = label
        this.every = everySeconds == null ? 30.0d : MilsilSettings.num(everySeconds)
        this.log = log
    }

    /** One line, to `log` (a script's println) or standard output. */
    static void say(Closure log, String line) {
        if (log != null) {
            log.call(line)
        } else {
            System.out.println(line)
        }
    }

    /** From the start again (a call retried after "busy" re-sends its tiles). */
    void restart() {
        started = System.nanoTime()
        last = started
        percent = -1
    }

    /** `eta` < 0: estimated from the rate so far; `counted`: what `done` counts, and
     * anything to add ("cells, 12/30 regions"). */
    void update(long done, long total, double eta, String counted = 'tiles') {
        if (total <= 0 || done <= 0 || done >= total) {
            return
        }
        int p = (int) Math.floor(100.0d * done / total)
        long now = System.nanoTime()
        if (p == percent || (now - last) / 1e9d < every) {
            return
        }
        percent = p
        last = now
        double left = eta >= 0 ? eta : (now - started) / 1e9d / done * (total - done)
        say(log, 'milsil: ' + label + ': ' + p + '% (' + thousands(done) + '/' + thousands(total) +
            ' ' + counted + '), eta ' + duration(left))
    }

    static String thousands(long n) {
        return String.format(Locale.US, '%,d', n)
    }

    static String duration(double seconds) {
        if (seconds < 90) {
            return Math.round(seconds) + ' s'
        }
        if (seconds < 90 * 60) {
            return Math.round(seconds / 60.0d) + ' min'
        }
        return String.format(Locale.US, '%.1f h', seconds / 3600.0d)
    }
}
