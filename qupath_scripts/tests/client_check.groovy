/*
 * Exercises lib/MilsilClient.groovy against a live milsil server: every RPC shape (unary,
 * client-, server- and bidi-streaming) with a bearer token, deadlines, TLS and the one-line
 * errors. Run by tests/test_groovy_client.py under Debian's Groovy 2.4 and QuPath's Groovy
 * 4.0.26; one JVM runs every check (JVM starts are slow).
 *
 * Usage: groovy client_check.groovy HOME SERVER TOKEN MODEL [TLS_SERVER CA_PEM [train]]
 * (`train` adds UploadDataset -> StartTraining -> WatchJob; the script tests cover those.)
 * Prints one line per check: "CHECK <name> <json>".
 */

import com.google.gson.Gson
import com.google.gson.GsonBuilder

import java.awt.image.BufferedImage
import java.security.MessageDigest

String home = args[0]
String server = args[1]
String token = args[2]
String model = args[3]
String tlsServer = args.length > 4 ? args[4] : ''
String caPem = args.length > 5 ? args[5] : ''

// lib/ on the class path: MilsilClient.groovy compiles the lib files it names (MilsilRpc, ...).
def gcl = new GroovyClassLoader(this.class.classLoader)
gcl.addClasspath(new File(home, 'lib').getAbsolutePath())
def MilsilClient = gcl.loadClass('MilsilClient')
Gson gson = new GsonBuilder().disableHtmlEscaping().create()

def report = { String name, Object value ->
    println('CHECK ' + name + ' ' + gson.toJson(value))
}

def attempt = { String name, Closure body ->
    try {
        report(name, [ok: true, value: body.call()])
    } catch (Throwable t) {
        report(name, [ok: false, error: MilsilClient.describe(t)])
    }
}

/** A deterministic RGB tile: a gradient with a dark square (something for the model to see). */
def makeImage = { int w, int h, int seed ->
    BufferedImage img = new BufferedImage(w, h, BufferedImage.TYPE_INT_RGB)
    for (int y = 0; y < h; y++) {
        for (int x = 0; x < w; x++) {
            int r = (150 + x * 3 + seed * 7) % 256
            int g = (120 + y * 5 + seed * 11) % 256
            int b = (200 + (x ^ y) + seed) % 256
            if (x > w / 4 && x < w / 2 && y > h / 4 && y < h / 2) {
                r = 40; g = 20; b = 90
            }
            img.setRGB(x, y, (r << 16) | (g << 8) | b)
        }
    }
    return img
}

def client = MilsilClient.connect([server: server, token: token, home: home, timeoutSeconds: 30,
                                   streamTimeoutSeconds: 120, watchTimeoutSeconds: 300])

// ---- unary
attempt('health') { client.health() }
attempt('list_models') { client.listModels().collect { Map m -> m.get('name') } }
attempt('get_model') {
    Map m = client.getModel(model)
    [name: m.get('name'), classes: m.get('class_names'), rf: m.get('receptive_field'),
     context: m.get('context_pixels'), sha256: m.get('sha256'), size: m.get('size_bytes')]
}
attempt('unknown_model') { client.getModel('no-such-model') }
attempt('final_job_states') { client.finalJobStates() }

// ---- client streaming: ClassifyBag
attempt('classify_bag') {
    List<Map> tiles = []
    for (int i = 0; i < 5; i++) {
        tiles.add(MilsilClient.rgbTile(makeImage(32, 32, i), 0, 0, 1))
    }
    Map r = client.classifyBag(model, tiles, 2)
    [model: r.get('model'), classes: r.get('class_names'), tiles: r.get('tiles').size(),
     bag_probabilities: r.get('bag_probabilities'), predicted: r.get('predicted_class')]
}

// ---- bidi streaming: Heatmap over a 48x40 region sent as 4 tiles (with per-pixel checks in Python)
BufferedImage region = makeImage(48, 40, 3)
def quarters = { Closure sendTile ->
    [[0, 0], [24, 0], [0, 20], [24, 20]].each { List xy ->
        int x = (int) xy[0]
        int y = (int) xy[1]
        sendTile.call(MilsilClient.rgbTile(region.getSubimage(x, y, 24, 20), 100 + x, 200 + y, 1))
    }
}
attempt('heatmap') {
    Map config = [model: MilsilClient.modelName(model),
                  region: [x: 100, y: 200, width: 48, height: 40, downsample: 1],
                  stride: 4, include_probabilities: true, value_type: 'VALUE_TYPE_FLOAT32']
    Map r = client.heatmap(config, quarters)
    Map h = (Map) r.get('header')
    [header: [rows: h.get('rows'), cols: h.get('cols'), stride: h.get('stride'), classes: h.get('class_names'),
              origin_x: h.get('origin_x'), origin_y: h.get('origin_y'), rf: h.get('receptive_field'),
              context: h.get('context_pixels')],
     tiles: r.get('tiles').collect { Map t ->
         [index: t.get('tile_index'), row: t.get('row'), col: t.get('col'), rows: t.get('rows'),
          cols: t.get('cols'), logits: (t.get('logits') as List), probabilities: (t.get('probabilities') as List)]
     }]
}
// The region's pixels, so Python can recompute the heatmap and compare.
byte[] rgb = (byte[]) MilsilClient.rgbTile(region, 0, 0, 1).get('data')
report('region_pixels', rgb.encodeBase64().toString())

// ---- client streaming: Annotate
attempt('annotate') {
    Map config = [heatmap: [model: MilsilClient.modelName(model),
                            region: [x: 100, y: 200, width: 48, height: 40, downsample: 1], stride: 2],
                  threshold_on: 'LOGIT', threshold: -1000.0, classification: 'Tumor', color: [200, 0, 0]]
    Map r = client.annotate(config, quarters)
    [geojson: r.get('geojson'), objects: r.get('objects').size(), class_name: r.get('class_name')]
}

// ---- bidi streaming: MeasureObjects of four objects (a hole, two parts, one holding no
// pixel centre) over the same region and tiles, 3 objects per message (Python recomputes)
Map<String, Map> shapes = [
    square: [type: 'Polygon', coordinates: [[[104.2, 203.7], [120.5, 203.7], [120.5, 215.25], [104.2, 215.25],
                                             [104.2, 203.7]]]],
    donut : [type: 'Polygon', coordinates: [[[125, 205], [145, 205], [145, 230], [125, 230], [125, 205]],
                                            [[130, 210], [138, 210], [138, 222], [130, 222], [130, 210]]]],
    pair  : [type: 'MultiPolygon', coordinates: [[[[101, 225], [112, 225], [101, 238], [101, 225]]],
                                                 [[[140.5, 232], [147.5, 232], [147.5, 239.5], [140.5, 232]]]]],
    speck : [type: 'Polygon', coordinates: [[[110.1, 230.1], [110.3, 230.1], [110.3, 230.3], [110.1, 230.1]]]],
]
report('object_shapes', gson.toJson(shapes))   // a string, like region_pixels
List<Map> objects = shapes.collect { String id, Map g -> [id: id, geometry: gson.toJson(g)] }
Map objectRegion = [x: 100, y: 200, width: 48, height: 40, downsample: 1]
attempt('measure_objects') {
    int starts = 0
    Map r = client.measureObjects([model: MilsilClient.modelName(model), region: objectRegion], objects, quarters,
        null, { -> starts++ }, 3)
    Map h = (Map) r.get('header')
    [header: [model: h.get('model'), classes: h.get('class_names'), count: h.get('object_count'),
              context: h.get('context_pixels')],
     starts: starts,
     objects: r.get('measurements').collect { Map m ->
         [id: m.get('id'), mean: m.get('mean_logits') as List, max: m.get('max_logits') as List,
          p: m.get('probabilities') as List, pixels: m.get('pixels')]
     }]
}
attempt('measure_objects_callback') {
    List<String> ids = []
    Map r = client.measureObjects([model: MilsilClient.modelName(model), region: objectRegion], objects, quarters,
        { Map header, Map m -> ids.add((String) header.get('model') + ' ' + m.get('id')) })
    [ids: ids, kept: r.get('measurements').size()]
}
attempt('measure_objects_unknown_model') {
    client.measureObjects([model: 'models/no-such-model', region: objectRegion], objects, quarters)
}

// ---- server streaming: ExportModel (bytes must hash to the registered sha256)
attempt('export_model') {
    ByteArrayOutputStream out = new ByteArrayOutputStream()
    Map m = client.exportModel(model, out)
    byte[] bytes = out.toByteArray()
    [name: m.get('name'), bytes: bytes.length,
     sha256: MessageDigest.getInstance('SHA-256').digest(bytes).encodeHex().toString()]
}

// ---- client streaming + unary + server streaming: UploadDataset -> StartTraining -> WatchJob
if (args.length > 6 && args[6] == 'train') attempt('train') {
    Map dataset = client.uploadDataset('groovy check', { Closure sendBag ->
        for (int p = 0; p < 4; p++) {
            for (int b = 0; b < 2; b++) {
                boolean malignant = (p + b) % 2 == 1
                List<Map> tiles = []
                for (int i = 0; i < 3; i++) {
                    tiles.add(MilsilClient.rgbTile(makeImage(16, 16, malignant ? 50 + i : i), 0, 0, 1))
                }
                sendBag.call([bag_id: 'p' + p + 'b' + b, label: malignant ? 'malignant' : 'benign',
                              patient_id: 'patient' + p, tiles: tiles])
            }
        }
    })
    Map job = client.startTraining((String) dataset.get('name'),
        [arch: 'bagnet9', width: 4, epochs: 1, batch_size: 4, seed: 1, no_augment: true], 'groovy check')
    List<String> states = []
    Map last = client.watchJob((String) job.get('name'), { Map j ->
        String s = (String) j.get('state')
        if (states.isEmpty() || states[-1] != s) {
            states.add(s)
        }
    })
    [dataset: dataset.get('name'), bags: dataset.get('bag_count'), patients: dataset.get('patient_count'),
     job: job.get('name'), states: states, final_state: last.get('state'), model: last.get('model'),
     error: last.get('error')]
}

// ---- deadlines are real: an impossible one fails as DEADLINE_EXCEEDED
attempt('deadline') { client.call('ModelService', 'ListModels', [:], 0.000001) }
client.close()

// ---- wrong token, missing token, server down: one line each
def wrong = MilsilClient.connect([server: server, token: 'wrong-token', home: home, timeoutSeconds: 10])
attempt('wrong_token') { wrong.listModels() }
attempt('wrong_token_stream') { wrong.classifyBag(model, [MilsilClient.rgbTile(makeImage(32, 32, 0), 0, 0, 1)]) }
wrong.close()

ServerSocket probe = new ServerSocket(0)
int freePort = probe.getLocalPort()
probe.close()
def down = MilsilClient.connect([server: '127.0.0.1:' + freePort, token: token, home: home, timeoutSeconds: 10])
attempt('server_down') { down.listModels() }
down.close()
attempt('bad_descriptor') {
    MilsilClient.connect([server: server, descriptor: '/nonexistent/milsil_v1.desc'])
}

// ---- TLS: trust the test CA
if (tlsServer) {
    attempt('tls_list_models') {
        def tls = MilsilClient.connect([server: tlsServer, token: token, trustCert: caPem, home: home, timeoutSeconds: 15])
        try {
            tls.listModels().collect { Map m -> m.get('name') }
        } finally {
            tls.close()
        }
    }
    def plain = MilsilClient.connect([server: tlsServer, token: token, home: home, timeoutSeconds: 5])
    attempt('tls_plaintext_refused') { plain.listModels() }
    plain.close()
}
println('DONE')
