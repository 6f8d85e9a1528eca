package milsilstub;

import java.util.AbstractMap;
import java.util.AbstractSet;
import java.util.ArrayList;
import java.util.Collections;
import java.util.Iterator;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.NoSuchElementException;
import java.util.Objects;
import java.util.Set;

import qupath.lib.measurements.Measurement;
import qupath.lib.measurements.MeasurementList;

/**
 * Test plumbing: the MeasurementList of the stand-in objects. As QuPath v0.6.0
 * (PathObject.createEmptyMeasurementList: MeasurementListType.GENERAL, double values;
 * PathDetectionObject.createEmptyMeasurementList: MeasurementListType.FLOAT), a list made for a
 * detection keeps its values as floats.
 */
public class SimpleMeasurementList implements MeasurementList {
    private final List<String> names = new ArrayList<>();
    private final List<Double> values = new ArrayList<>();
    private final boolean floats;
    private Map<String, Number> view;

    public SimpleMeasurementList() {
        this(false);
    }

    public SimpleMeasurementList(boolean floats) {
        this.floats = floats;
    }

    private double stored(double value) {
        return floats ? (double) (float) value : value;
    }

    @Override
    public synchronized void put(String name, double value) {
        Objects.requireNonNull(name, "a measurement needs a name");
        int i = names.indexOf(name);
        if (i >= 0) {
            values.set(i, stored(value));
        } else {
            names.add(name);
            values.add(stored(value));
        }
    }

    @Override
    public synchronized double get(String name) {
        int i = names.indexOf(name);
        return i < 0 ? Double.NaN : values.get(i);
    }

    @Override
    public synchronized List<Measurement> getMeasurements() {
        List<Measurement> out = new ArrayList<>();
        for (int i = 0; i < names.size(); i++) {
            out.add(getByIndex(i));
        }
        return Collections.unmodifiableList(out);
    }

    @Override
    public synchronized Measurement getByIndex(int ind) {
        final String name = names.get(ind);
        final double value = values.get(ind);
        return new Measurement() {
            @Override
            public String getName() {
                return name;
            }

            @Override
            public double getValue() {
                return value;
            }

            @Override
            public String toString() {
                return name + ": " + value;
            }
        };
    }

    @Override
    public synchronized double[] values() {
        double[] out = new double[values.size()];
        for (int i = 0; i < out.length; i++) {
            out[i] = values.get(i);
        }
        return out;
    }

    @Override
    public synchronized double remove(String name) {
        int i = names.indexOf(name);
        if (i < 0) {
            return Double.NaN;
        }
        names.remove(i);
        return values.remove(i);
    }

    @Override
    public synchronized List<String> getNames() {
        return Collections.unmodifiableList(new ArrayList<>(names));
    }

    @Override
    public synchronized void removeAll(String... measurementNames) {
        for (String n : measurementNames) {
            remove(n);
        }
    }

    @Override
    public synchronized void clear() {
        names.clear();
        values.clear();
    }

    @Override
    public synchronized Map<String, Number> asMap() {
        if (view == null) {
            view = Collections.synchronizedMap(new MapView());
        }
        return view;
    }

    /** Test plumbing: a copy, in order. */
    public synchronized Map<String, Double> copy() {
        Map<String, Double> out = new LinkedHashMap<>();
        for (int i = 0; i < names.size(); i++) {
            out.put(names.get(i), values.get(i));
        }
        return out;
    }

    @Override
    public synchronized String toString() {
        return copy().toString();
    }

    /** QuPath's MeasurementsMap: a map backed by the list. */
    private final class MapView extends AbstractMap<String, Number> {
        @Override
        public Number get(Object key) {
            synchronized (SimpleMeasurementList.this) {
                return key instanceof String && names.contains(key) ? (Number) SimpleMeasurementList.this.get((String) key) : null;
            }
        }

        @Override
        public boolean containsKey(Object key) {
            return key instanceof String && containsKeyOfList((String) key);
        }

        @Override
        public Number put(String key, Number value) {
            Objects.requireNonNull(value, "measurement values cannot be null");
            synchronized (SimpleMeasurementList.this) {
                Number previous = get(key);
                SimpleMeasurementList.this.put(key, value.doubleValue());
                return previous;
            }
        }

        @Override
        public Number remove(Object key) {
            synchronized (SimpleMeasurementList.this) {
                Number previous = get(key);
                if (previous != null) {
                    SimpleMeasurementList.this.remove((String) key);
                }
                return previous;
            }
        }

        @Override
        public void clear() {
            SimpleMeasurementList.this.clear();
        }

        @Override
        public int size() {
            return SimpleMeasurementList.this.size();
        }

        @Override
        public Set<Map.Entry<String, Number>> entrySet() {
            return new AbstractSet<Map.Entry<String, Number>>() {
                @Override
                public int size() {
                    return SimpleMeasurementList.this.size();
                }

                @Override
                public Iterator<Map.Entry<String, Number>> iterator() {
                    return new Iterator<Map.Entry<String, Number>>() {
                        private int i;

                        @Override
                        public boolean hasNext() {
                            return i < SimpleMeasurementList.this.size();
                        }

                        @Override
                        public Map.Entry<String, Number> next() {
                            if (!hasNext()) {
                                throw new NoSuchElementException();
                            }
                            Measurement m = getByIndex(i++);
                            return new AbstractMap.SimpleImmutableEntry<String, Number>(m.getName(), m.getValue());
                        }
                    };
                }
            };
        }
    }

    private boolean containsKeyOfList(String key) {
        return containsKey(key);
    }
}
