package qupath.lib.measurements;

/**
 * Stand-in for qupath.lib.measurements.Measurement (QuPath v0.6.0,
 * qupath-core/src/main/java/qupath/lib/measurements/Measurement.java): a name and a value.
 */
public interface Measurement {
    /** QuPath: String getName(). */
    String getName();

    /** QuPath: double getValue(). */
    double getValue();
}
