package milsilstub;

import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;

import qupath.lib.measurements.MeasurementList;

/** Test plumbing: an insertion-ordered MeasurementList. */
public class SimpleMeasurementList implements MeasurementList {
    private final Map<String, Double> values = new LinkedHashMap<>();

    @Override
    public void put(String name, double value) {
        values.put(name, value);
    }

    @Override
    public double get(String name) {
        Double v = values.get(name);
        return v == null ? Double.NaN : v;
    }

    @Override
    public List<String> getMeasurementNames() {
        return new ArrayList<>(values.keySet());
    }

    @Override
    public Set<String> keySet() {
        return new LinkedHashSet<>(values.keySet());
    }

    @Override
    public int size() {
        return values.size();
    }

    @Override
    public void close() {
    }

    public Map<String, Double> asMap() {
        return new LinkedHashMap<>(values);
    }
}
