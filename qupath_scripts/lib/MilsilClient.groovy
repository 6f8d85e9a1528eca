/*
 * MilsilClient.groovy -- the typed milsil API every QuPath script shares: models, ClassifyBag,
 * Annotate, Heatmap, MeasureObjects, AnnotateSlide, datasets and training jobs, each as one
 * method on plain Groovy maps.
 *
 * The layers under it: MilsilRpc (channel, calls, deadlines, the busy retry), MilsilCodec
 * (the contract read from milsil_v1.desc, messages as maps), MilsilFailure (the one line a
 * user sees), MilsilSettings (the settings reader). One source for QuPath 0.5 (Groovy
 * 4.0.15, Java 17), QuPath 0.6 (Groovy 4.0.26, Java 21) and Debian's Groovy 2.4 (CI): no
 * lambdas, no `var`, no Groovy-4-only syntax, getters called explicitly, no groovy.json.
 * A Heatmap waiting for compute prints its queue position through the waiting lines.
 *
 * Scripts load it through lib/MilsilBootstrap.groovy (a class loader with lib/ on its class
 * path, which compiles the layers it names) and use it dynamically:
 *     def client = MilsilClient.connect([server: 'localhost:50051', token: '...'])
 *     def models = client.listModels()
 *     client.close()
 */

import com.google.protobuf.Descriptors

import java.awt.image.BufferedImage

class MilsilClient extends MilsilRpc {

    /**
     * Open a channel. `options` uses the keys of MilsilSettings.DEFAULTS; Java system
     * properties `milsil.<key>` override them (for headless and test runs), and an empty token
     * falls back to the MILSIL_TOKEN environment variable so that tokens need not live in scripts.
     */
    static MilsilClient connect(Map options) {
        return new MilsilClient(MilsilSettings.withOverrides(options))
    }

    MilsilClient(Map s) {
        super(s)
    }

    /** The one line a script prints for any failure. */
    static String describe(Throwable t) {
        return MilsilFailure.describe(t)
    }


    /** grpc.health.v1 status of the server ("SERVING"). Exempt from the token. */
    String health() {
        return call('grpc.health.v1.Health', 'Check', [service: ''], 10).get('status')
    }

    List<Map> listModels() {
        return (List<Map>) call('ModelService', 'ListModels', [page_size: 1000]).get('models')
    }

    Map getModel(String name) {
        return call('ModelService', 'GetModel', [name: modelName(name)])
    }

    /** Exports a model's checkpoint to `out` (server streaming); returns the model map. */
    Map exportModel(String name, OutputStream out) {
        Map model = null
        serverStream('ModelService', 'ExportModel', [name: modelName(name)],
            settings.get('streamTimeoutSeconds'), { Map r ->
                if (r.get('model') != null) {
                    model = (Map) r.get('model')
                }
                out.write((byte[]) r.get('chunk_data'))
            })
        return model
    }

    /** ClassifyBag: `tiles` (maps from rgbTile) streamed in messages of `perMessage` tiles. */
    Map classifyBag(String model, List<Map> tiles, int perMessage = 32) {
        return clientStream('InferenceService', 'ClassifyBag', settings.get('streamTimeoutSeconds'), { Closure send ->
            boolean first = true
            for (int i = 0; i < tiles.size(); i += perMessage) {
                Map msg = [tiles: tiles.subList(i, Math.min(tiles.size(), i + perMessage))]
                if (first) {
                    msg.put('model', modelName(model))
                    first = false
                }
                send.call(msg)
            }
            if (first) {
                send.call([model: modelName(model)])
            }
        })
    }

    /** Annotate: `config` is an AnnotateConfig map; `tileProducer(sendTile)` sends tile maps. */
    Map annotate(Map config, Closure tileProducer) {
        return clientStream('InferenceService', 'Annotate', settings.get('streamTimeoutSeconds'), { Closure send ->
            send.call([config: config])
            tileProducer.call({ Map tile -> send.call([tiles: [tile]]) })
        })
    }

    /**
     * Heatmap (bidirectional): returns [header: Map, tiles: List<Map>] where each tile has
     * float arrays `logits` / `probabilities` decoded to float[] (C order [class][row][col]).
     * With `onTile`, each tile goes to onTile(header, tile) as it arrives (while tiles are
     * still being sent) and none is kept: `tiles` is then empty.
     */
    Map heatmap(Map config, Closure tileProducer, Closure onTile = null) {
        Map header = null
        List<Map> tiles = []
        bidiStream('InferenceService', 'Heatmap', settings.get('streamTimeoutSeconds'), { Closure send ->
            send.call([config: config])
            tileProducer.call({ Map tile -> send.call([tiles: [tile]]) })
        }, { Map r ->
            if (r.get('queue') != null) {
                Map q = (Map) r.get('queue')
                waitLine('Heatmap: queued for compute, position ' + q.get('position') + ' of ' + q.get('waiting'))
            } else if (r.get('header') != null) {
                header = (Map) r.get('header')
            } else if (r.get('tile') != null) {
                Map t = (Map) r.get('tile')
                t.put('logits', MilsilCodec.floats((byte[]) t.get('logits')))
                t.put('probabilities', MilsilCodec.floats((byte[]) t.get('probabilities')))
                if (onTile != null) {
                    onTile.call(header, t)
                } else {
                    tiles.add(t)
                }
            }
        })
        return [header: header, tiles: tiles]
    }

    /**
     * MeasureObjects (bidirectional): per-object measurements on the stride-1 logit heatmap
     * of a region. `config` is a MeasureObjectsConfig map (model, region, slide_path);
     * `objects` a list of [id: String, geometry: GeoJSON geometry JSON text] maps, sent
     * `perMessage` to a message before any tile; `tileProducer(sendTile)` sends the region's
     * tiles (with context, row order, as for heatmap()), or is null when `config.slide_path`
     * names a slide the server reads itself. Each measurement goes to
     * onMeasurement(header, m) with m = [id, mean_logits, max_logits, probabilities: double[]
     * in header.class_names order, pixels: long]; without `onMeasurement` they are returned.
     * Returns [header: Map, measurements: List<Map>] (measurements empty with onMeasurement).
     * A call retried after "busy" sends everything again: `onStart()` (optional) hears of
     * each attempt, so a caller can drop what an earlier attempt delivered.
     */
    Map measureObjects(Map config, List<Map> objects, Closure tileProducer, Closure onMeasurement = null,
                       Closure onStart = null, int perMessage = 256) {
        Map header = null
        List<Map> measurements = []
        int batch = Math.max(1, perMessage)
        bidiStream('InferenceService', 'MeasureObjects', settings.get('streamTimeoutSeconds'), { Closure send ->
            header = null
            measurements.clear()
            if (onStart != null) {
                onStart.call()
            }
            send.call([config: config])
            for (int i = 0; i < objects.size(); i += batch) {
                send.call([objects: objects.subList(i, Math.min(objects.size(), i + batch))])
            }
            if (tileProducer != null) {
                tileProducer.call({ Map tile -> send.call([tiles: [tile]]) })
            }
        }, { Map r ->
            if (r.get('queue') != null) {
                Map q = (Map) r.get('queue')
                waitLine('MeasureObjects: queued for compute, position ' + q.get('position') + ' of ' +
                    q.get('waiting'))
            } else if (r.get('header') != null) {
                header = (Map) r.get('header')
            } else if (r.get('measurements') != null) {
                for (Object o : (List) ((Map) r.get('measurements')).get('objects')) {
                    Map m = (Map) o
                    Map plain = [id           : m.get('id'),
                                 mean_logits  : MilsilCodec.doubles((List) m.get('mean_logits')),
                                 max_logits   : MilsilCodec.doubles((List) m.get('max_logits')),
                                 probabilities: MilsilCodec.doubles((List) m.get('probabilities')),
                                 pixels       : ((Number) m.get('pixels')).longValue()]
                    if (onMeasurement != null) {
                        onMeasurement.call(header, plain)
                    } else {
                        measurements.add(plain)
                    }
                }
            }
        })
        if (header == null) {
            throw new MilsilFailure('INTERNAL', 'MeasureObjects ended without a header')
        }
        return [header: header, measurements: measurements]
    }

    /**
     * AnnotateSlide (server streaming): a slide the server reads itself. `request` is an
     * AnnotateSlideRequest map; onProgress(Map) gets every SlideProgress. Returns the
     * AnnotateSlideResult map (geojson, object_count, summary).
     */
    Map annotateSlide(Map request, Closure onProgress) {
        Map result = null
        serverStream('InferenceService', 'AnnotateSlide', request, settings.get('streamTimeoutSeconds'), { Map r ->
            if (r.get('progress') != null) {
                onProgress.call((Map) r.get('progress'))
            } else if (r.get('result') != null) {
                result = (Map) r.get('result')
            }
        })
        if (result == null) {
            throw new MilsilFailure('INTERNAL', 'AnnotateSlide ended without a result')
        }
        return result
    }

    /** UploadDataset: `bagProducer(sendBag)`; each bag map: bag_id, label, patient_id, tiles. */
    Map uploadDataset(String displayName, Closure bagProducer) {
        return clientStream('TrainingService', 'UploadDataset', settings.get('streamTimeoutSeconds'), { Closure send ->
            boolean first = true
            bagProducer.call({ Map bag ->
                Map msg = [bags: [bag]]
                if (first) {
                    msg.put('display_name', displayName)
                    first = false
                }
                send.call(msg)
            })
            if (first) {
                send.call([display_name: displayName])
            }
        })
    }

    Map startTraining(String dataset, Map config, String displayName) {
        return call('TrainingService', 'StartTraining',
            [dataset: dataset, config: config, display_name: displayName])
    }

    Map getJob(String name) {
        return call('TrainingService', 'GetJob', [name: name])
    }

    Map cancelJob(String name) {
        return call('TrainingService', 'CancelJob', [name: name])
    }

    /** WatchJob until the job is final; `onJob(Map job)` per update; returns the last job. */
    Map watchJob(String name, Closure onJob) {
        Map last = null
        serverStream('TrainingService', 'WatchJob', [name: name], settings.get('watchTimeoutSeconds'), { Map r ->
            last = (Map) r.get('job')
            onJob.call(last)
        })
        return last
    }

    /**
     * A model as the user wrote it: "models/{id}" or a bare id, both of which the server
     * accepts (the contract says so); the server's answers carry the full name.
     */
    static String modelName(String name) {
        return (name ?: '').trim()
    }

    /**
     * Names of the final job states, read from the contract: every Job.State numbered above
     * RUNNING (training_service.proto). WatchJob ends in one of them.
     */
    List<String> finalJobStates() {
        Descriptors.EnumDescriptor states = codec.messages.get('milsil.v1.Job').findEnumTypeByName('State')
        int running = states.findValueByName('RUNNING').getNumber()
        List<String> names = []
        for (Descriptors.EnumValueDescriptor v : states.getValues()) {
            if (v.getNumber() > running) {
                names.add(v.getName())
            }
        }
        return names
    }

    /** A RAW_RGB8 Tile map from any BufferedImage (alpha dropped) at level-0 (x, y). */
    static Map rgbTile(BufferedImage image, double x, double y, double downsample) {
        int w = image.getWidth()
        int h = image.getHeight()
        int[] argb = image.getRGB(0, 0, w, h, null, 0, w)
        byte[] data = new byte[w * h * 3]
        int j = 0
        for (int i = 0; i < argb.length; i++) {
            int p = argb[i]
            data[j++] = (byte) ((p >> 16) & 0xff)
            data[j++] = (byte) ((p >> 8) & 0xff)
            data[j++] = (byte) (p & 0xff)
        }
        return [encoding: 'RAW_RGB8', data: data, width: w, height: h, x: x, y: y, downsample: downsample]
    }

}
