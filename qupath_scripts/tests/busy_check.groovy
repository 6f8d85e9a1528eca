/*
 * Busy is not failure, from Groovy: three MilsilClients (three connections, as three QuPath
 * users) share a server with one compute slot and a tiny queue, each running Annotate,
 * Heatmap and ClassifyBag calls at the same time. Every call must finish: the client waits
 * and retries on "busy" (milsil-retry: busy), printing waiting lines, and reports queue
 * positions of Heatmap calls. A too-large region (milsil-retry: never) must fail at once,
 * without a retry. Run by tests/test_busy.py under Debian's Groovy 2.4 and Groovy 4.0.26.
 *
 * Usage: groovy busy_check.groovy HOME SERVER MODEL ROUNDS
 * Prints "CHECK <name> <json>" lines and "DONE".
 */

import com.google.gson.Gson
import com.google.gson.GsonBuilder

import java.awt.image.BufferedImage
import java.util.concurrent.ConcurrentHashMap

String home = args[0]
String server = args[1]
String model = args[2]
int rounds = Integer.parseInt(args[3])

// lib/ on the class path: MilsilClient.groovy compiles the lib files it names (MilsilRpc, ...).
def gcl = new GroovyClassLoader(this.class.classLoader)
gcl.addClasspath(new File(home, 'lib').getAbsolutePath())
def MilsilClient = gcl.loadClass('MilsilClient')
Gson gson = new GsonBuilder().disableHtmlEscaping().create()

def report = { String name, Object value ->
    synchronized (gson) {
        println('CHECK ' + name + ' ' + gson.toJson(value))
    }
}

def makeImage = { int w, int h, int seed ->
    BufferedImage img = new BufferedImage(w, h, BufferedImage.TYPE_INT_RGB)
    for (int y = 0; y < h; y++) {
        for (int x = 0; x < w; x++) {
            int r = (150 + x * 3 + seed * 7) % 256
            int g = (120 + y * 5 + seed * 11) % 256
            int b = (200 + (x ^ y) + seed) % 256
            img.setRGB(x, y, (r << 16) | (g << 8) | b)
        }
    }
    return img
}

List<String> waits = Collections.synchronizedList(new ArrayList<String>())
Map<String, Object> results = new ConcurrentHashMap<String, Object>()

def work = { int k ->
    def client = MilsilClient.connect([server: server, home: home, timeoutSeconds: 120,
                                       streamTimeoutSeconds: 120])
    client.onWait = { String line -> waits.add('client' + k + ' ' + line) }
    Map done = [annotate: 0, heatmap: 0, classify: 0, objects: [], rows: []]
    try {
        BufferedImage image = makeImage(64, 48, k)
        Closure whole = { Closure sendTile -> sendTile.call(MilsilClient.rgbTile(image, 0, 0, 1)) }
        for (int i = 0; i < rounds; i++) {
            Map a = client.annotate([heatmap: [model: model, region: [x: 0, y: 0, width: 64, height: 48, downsample: 1],
                                               stride: 1],
                                     threshold_on: 'LOGIT', threshold: -1000.0], whole)
            done.annotate = done.annotate + 1
            done.objects.add(a.get('objects').size())
            Map h = client.heatmap([model: model, region: [x: 0, y: 0, width: 64, height: 48, downsample: 1], stride: 1],
                whole)
            done.heatmap = done.heatmap + 1
            done.rows.add(((Map) h.get('header')).get('rows'))
            List<Map> tiles = [MilsilClient.rgbTile(makeImage(32, 32, k), 0, 0, 1),
                               MilsilClient.rgbTile(makeImage(32, 32, k + 1), 0, 0, 1)]
            client.classifyBag(model, tiles)
            done.classify = done.classify + 1
        }
        results.put('client' + k, [ok: true, value: done])
    } catch (Throwable t) {
        results.put('client' + k, [ok: false, error: MilsilClient.describe(t), value: done])
    } finally {
        client.close()
    }
}

List<Thread> threads = []
for (int k = 0; k < 3; k++) {
    int which = k
    threads.add(Thread.start { work.call(which) })
}
for (Thread t : threads) {
    t.join()
}
for (String key : new TreeSet<String>(results.keySet())) {
    report(key, results.get(key))
}
report('waits', new ArrayList<String>(waits))

// Too large can never fit: one answer, at once, and no waiting line.
List<String> tooLargeWaits = []
def big = MilsilClient.connect([server: server, home: home, timeoutSeconds: 60, streamTimeoutSeconds: 60])
big.onWait = { String line -> tooLargeWaits.add(line) }
long started = System.nanoTime()
try {
    big.annotate([heatmap: [model: model, region: [x: 0, y: 0, width: 400, height: 400, downsample: 1], stride: 1]],
        { Closure sendTile -> sendTile.call(MilsilClient.rgbTile(makeImage(400, 400, 9), 0, 0, 1)) })
    report('too_large', [ok: true])
} catch (Throwable t) {
    report('too_large', [ok: false, error: MilsilClient.describe(t), busy: t.busy,
                         seconds: (System.nanoTime() - started) / 1e9d, waits: tooLargeWaits])
} finally {
    big.close()
}
println('DONE')
