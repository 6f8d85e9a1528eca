/*
 * milsil: lib/MilsilGeoJSON.groovy -- the server's GeoJSON into QuPath objects, losing none
 * that QuPath can read when one of them it cannot (a polygon that crosses itself).
 *
 * QuPath calls: PathIO.readObjectsFromGeoJSON(InputStream); Gson's JsonParser (bundled with
 * QuPath).
 */

import com.google.gson.JsonElement
import com.google.gson.JsonObject
import com.google.gson.JsonParser
import qupath.lib.io.PathIO
import qupath.lib.objects.PathObject

import java.nio.charset.StandardCharsets

class MilsilGeoJSON {

    /**
     * The objects of a GeoJSON document (PathIO.readObjectsFromGeoJSON). QuPath 0.6 refuses the
     * whole document when one polygon crosses itself (ROITypeAdapters.parseGeometry: JTS
     * GeometryPrecisionReducer throws "Reduction failed, possible invalid input"); then the
     * features are read one at a time and each one QuPath refuses is skipped, with one line
     * (to `log`) naming it: the other objects are kept.
     */
    static List<PathObject> read(String geojson, Closure log = null) {
        Closure read = { String text ->
            PathIO.readObjectsFromGeoJSON(new ByteArrayInputStream(text.getBytes(StandardCharsets.UTF_8)))
        }
        try {
            return read(geojson)
        } catch (RuntimeException whole) {
            JsonElement doc = JsonParser.parseString(geojson)
            JsonObject top = doc.isJsonObject() ? doc.getAsJsonObject() : null
            String type = top != null && top.has('type') ? top.get('type').getAsString() : ''
            List<JsonElement> features = doc.isJsonArray() ? doc.getAsJsonArray().collect { JsonElement e -> e } :
                type == 'FeatureCollection' ? top.getAsJsonArray('features').collect { JsonElement e -> e } :
                type == 'Feature' ? [doc] : null
            if (features == null) {
                throw whole
            }
            List<PathObject> objects = []
            features.eachWithIndex { JsonElement feature, int k ->
                try {
                    objects.addAll(read(feature.toString()))
                } catch (RuntimeException e) {
                    JsonObject f = feature.isJsonObject() ? feature.getAsJsonObject() : new JsonObject()
                    JsonObject props = f.has('properties') && f.get('properties').isJsonObject() ?
                        f.getAsJsonObject('properties') : new JsonObject()
                    List<String> about = []
                    for (String key : ['name', 'classification']) {
                        JsonElement value = props.has(key) ? props.get(key) : null
                        if (value != null && value.isJsonObject() && value.getAsJsonObject().has('name')) {
                            value = value.getAsJsonObject().get('name')
                        }
                        if (value != null && value.isJsonPrimitive()) {
                            about.add(key + ' ' + value.getAsString())
                        }
                    }
                    if (f.has('id') && f.get('id').isJsonPrimitive()) {
                        about.add('id ' + f.get('id').getAsString())
                    }
                    MilsilProgress.say(log, 'milsil: skipped object ' + (k + 1) + ' of ' + features.size() +
                        (about ? ' (' + about.join(', ') + ')' : '') + ': QuPath cannot read its outline (' +
                        e.getMessage() + '; a polygon that crosses itself)')
                }
            }
            return objects
        }
    }
}
