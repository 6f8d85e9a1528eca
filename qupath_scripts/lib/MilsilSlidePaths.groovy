/*
 * MilsilSlidePaths.groovy -- where the milsil server sees this machine's slide files, for the
 * scripts' `serverSlides` mode (the server reads the slide itself; no pixels cross the
 * network). `slidePathMap` maps local folders to paths under the server's --slide-root; an
 * image qualifies when its file (ImageServer.getURIs(): a file: URI) lies under one of them.
 * When the server cannot see the slide, the scripts say why in one line and stream pixels.
 * Same Groovy subset as the other lib files (Groovy 2.4 and 4; getters called explicitly).
 */

class MilsilSlidePaths {

    /**
     * The server's path of this image's slide under `s.slidePathMap`, or null after one line
     * (to `log`) saying why the server cannot read it: "the image is not a local file", or no
     * slidePathMap entry matches. `label` names the region in that line.
     */
    static String remote(Map s, Object server, String label, Closure log) {
        String local = localFile(server)
        String remote = local == null ? null : serverPath(local, pathMap(s.get('slidePathMap')))
        if (remote == null) {
            streamingInstead(label, local == null ? 'the image is not a local file' :
                'no slidePathMap entry matches ' + local, log)
        }
        return remote
    }

    /**
     * After a call on a slide the server reads failed with `t`: rethrows it unless it means
     * "this server cannot see that slide", else says so in one line (the caller streams pixels).
     */
    static void cannotRead(Throwable t, String label, Closure log) {
        if (!(t instanceof MilsilFailure && cannotSeeSlide(((MilsilFailure) t).code, t.getMessage()))) {
            throw t
        }
        streamingInstead(label, t.getMessage().replaceFirst('^milsil: ', ''), log)
    }

    static void streamingInstead(String label, String why, Closure log) {
        MilsilProgress.say(log, 'milsil: ' + label + ': the server cannot read the slide (' + why +
            '); streaming pixels instead')
    }

    /** Failures of AnnotateSlide that mean "this server cannot see that slide". */
    static boolean cannotSeeSlide(String code, String message) {
        return code == 'FAILED_PRECONDITION' || code == 'NOT_FOUND' ||
            (code == 'INVALID_ARGUMENT' && (message =~ /(?i)slide|config\.path/).find())
    }

    /** The image's file on this machine (its first file: URI), or null. */
    static String localFile(Object server) {
        try {
            for (Object uri : (Collection) server.getURIs()) {
                if (uri instanceof URI && 'file'.equalsIgnoreCase(((URI) uri).getScheme())) {
                    return new File((URI) uri).getAbsolutePath()
                }
            }
        } catch (Throwable ignored) {
            return null
        }
        return null
    }

    /** slidePathMap: a Groovy map, or "local=server;local2=server2" (a system-property override). */
    static Map<String, String> pathMap(Object v) {
        Map<String, String> out = [:]
        if (v instanceof Map) {
            ((Map) v).each { Object k, Object x -> out.put(k.toString(), x == null ? '' : x.toString()) }
            return out
        }
        String text = v == null ? '' : v.toString().trim()
        if (text.startsWith('[') && text.endsWith(']')) {
            text = text.substring(1, text.length() - 1)
        }
        for (String pair : text.split(';')) {
            int eq = pair.indexOf('=')
            if (eq > 0) {
                out.put(pair.substring(0, eq).trim(), pair.substring(eq + 1).trim())
            }
        }
        return out
    }

    /**
     * `local` with the longest matching prefix of `map` replaced by its server-side path
     * (relative to a --slide-root, or absolute inside one); null when no prefix matches.
     */
    static String serverPath(String local, Map<String, String> map) {
        String path = local.replace('\\', '/')
        String best = null
        String target = null
        for (Map.Entry<String, String> e : map.entrySet()) {
            String k = folder(e.getKey())
            if ((path == k || path.startsWith(k + '/')) && (best == null || k.length() > best.length())) {
                best = k
                target = e.getValue().replace('\\', '/')
            }
        }
        if (best == null) {
            return null
        }
        String rest = path.substring(best.length()).replaceFirst('^/+', '')
        if (!target) {
            return rest
        }
        return target.endsWith('/') ? target + rest : target + '/' + rest
    }

    /** A slidePathMap key as a folder: forward slashes, no trailing slash (but "/" stays). */
    static String folder(String key) {
        String k = key.replace('\\', '/')
        while (k.length() > 1 && k.endsWith('/')) {
            k = k.substring(0, k.length() - 1)
        }
        return k
    }
}
