package qupath.lib.measurements;

import java.util.Collections;
import java.util.HashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;

/**
 * Stand-in for qupath.lib.measurements.MeasurementList (QuPath v0.6.0,
 * qupath-core/src/main/java/qupath/lib/measurements/MeasurementList.java): an ordered
 * name -&gt; value list. The implementation is milsilstub.SimpleMeasurementList (double values
 * for annotations and TMA cores, float values for detections, as QuPath's lists).
 */
public interface MeasurementList extends AutoCloseable {
    /** QuPath: void put(String name, double value) (replaces a value of the same name, in place). */
    void put(String name, double value);

    /** QuPath: List&lt;Measurement&gt; getMeasurements(). */
    List<Measurement> getMeasurements();

    /** QuPath: Measurement getByIndex(int ind). */
    Measurement getByIndex(int ind);

    /** QuPath: default double getOrDefault(String name, double defaultValue) (a stored NaN is returned as NaN). */
    default double getOrDefault(String name, double defaultValue) {
        double v = get(name);
        if (Double.isNaN(v) && !Double.isNaN(defaultValue) && !containsKey(name)) {
            return defaultValue;
        }
        return v;
    }

    /** QuPath: double[] values(). */
    double[] values();

    /** QuPath: double remove(String name) (the removed value, NaN when absent). */
    double remove(String name);

    /** QuPath: default void putAll(Map&lt;String, ? extends Number&gt; map). */
    default void putAll(Map<String, ? extends Number> map) {
        for (Map.Entry<String, ? extends Number> e : map.entrySet()) {
            put(e.getKey(), e.getValue().doubleValue());
        }
    }

    /** QuPath: default void putAll(MeasurementList list). */
    default void putAll(MeasurementList list) {
        for (Measurement m : list.getMeasurements()) {
            put(m.getName(), m.getValue());
        }
    }

    /** QuPath: default Set&lt;String&gt; keySet() (an unmodifiable copy, no order: Set.copyOf there). */
    default Set<String> keySet() {
        return Collections.unmodifiableSet(new HashSet<>(getNames()));
    }

    /** QuPath: List&lt;String&gt; getNames() (in insertion order). */
    List<String> getNames();

    /** QuPath: default List&lt;String&gt; getMeasurementNames() (deprecated in v0.6.0: getNames()). */
    default List<String> getMeasurementNames() {
        return getNames();
    }

    /** QuPath: double get(String name) (NaN when absent). */
    double get(String name);

    /** QuPath: default boolean containsKey(String name). */
    default boolean containsKey(String name) {
        return getNames().contains(name);
    }

    /** QuPath: default boolean isEmpty(). */
    default boolean isEmpty() {
        return size() == 0;
    }

    /** QuPath: default int size(). */
    default int size() {
        return getNames().size();
    }

    /** QuPath: default void close() (nothing to do). */
    @Override
    default void close() {
    }

    /** QuPath: void removeAll(String... measurementNames). */
    void removeAll(String... measurementNames);

    /** QuPath: void clear(). */
    void clear();

    /**
     * QuPath: Map&lt;String, Number&gt; asMap(): a live view (get gives null when absent, put
     * needs a non-null value and stores it as this list does, iteration in list order).
     */
    Map<String, Number> asMap();
}
