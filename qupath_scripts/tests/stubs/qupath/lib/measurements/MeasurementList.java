package qupath.lib.measurements;

import java.util.List;
import java.util.Set;

/** Stand-in for qupath.lib.measurements.MeasurementList (QuPath v0.5/v0.6): name -> value. */
public interface MeasurementList extends AutoCloseable {
    /** QuPath: void put(String name, double value). */
    void put(String name, double value);

    /** QuPath: double get(String name) (NaN when absent). */
    double get(String name);

    /** QuPath: List&lt;String&gt; getMeasurementNames(). */
    List<String> getMeasurementNames();

    /** QuPath: default Set&lt;String&gt; keySet(). */
    Set<String> keySet();

    /** QuPath: int size(). */
    int size();

    /** QuPath: default void close(). */
    @Override
    void close();
}
