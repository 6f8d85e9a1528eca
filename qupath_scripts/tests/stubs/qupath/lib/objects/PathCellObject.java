package qupath.lib.objects;

import qupath.lib.measurements.MeasurementList;
import qupath.lib.objects.classes.PathClass;
import qupath.lib.roi.interfaces.ROI;

/**
 * Stand-in for qupath.lib.objects.PathCellObject (QuPath v0.6.0,
 * qupath-core/src/main/java/qupath/lib/objects/PathCellObject.java): a detection with two
 * ROIs, the cell boundary (getROI()) and, optionally, the nucleus (getNucleusROI(), may be
 * null). Made by PathObjects.createCellObject and by GeoJSON import of objectType "cell"
 * ("geometry" the cell, "nucleusGeometry" the nucleus). QuPath's cell detection, StarDist
 * and InstanSeg make these.
 */
public class PathCellObject extends PathDetectionObject {
    private final ROI nucleus;

    PathCellObject(ROI cellROI, ROI nucleusROI, PathClass pathClass, MeasurementList measurements) {
        super(cellROI, pathClass, measurements);
        this.nucleus = nucleusROI;
    }

    /** QuPath: public boolean hasNucleus(). */
    public boolean hasNucleus() {
        return nucleus != null;
    }

    /** QuPath: public ROI getNucleusROI() (null when the cell has none). */
    public ROI getNucleusROI() {
        return nucleus;
    }
}
