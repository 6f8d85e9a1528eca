package qupath.lib.roi;

import java.awt.geom.Area;
import java.util.Arrays;
import java.util.Collection;
import java.util.Iterator;

import milsilstub.ShapeROI;
import qupath.lib.regions.ImagePlane;
import qupath.lib.roi.interfaces.ROI;

/** Stand-in for qupath.lib.roi.RoiTools (QuPath v0.6.0, qupath-core/src/main/java/qupath/lib/roi/RoiTools.java). */
public class RoiTools {
    private RoiTools() {
    }

    /** QuPath: public static ROI intersection(ROI... rois) (the Collection overload on the array). */
    public static ROI intersection(ROI... rois) {
        return intersection(Arrays.asList(rois));
    }

    /**
     * QuPath: public static ROI intersection(Collection&lt;? extends ROI&gt; rois). As there:
     * no ROI gives ROIs.createEmptyROI(); one ROI is returned itself (the same object); ROIs
     * on different planes are an IllegalArgumentException; otherwise the geometries are
     * intersected in turn (JTS there, java.awt.geom.Area here, on QuPath's 0.01 px grid) and
     * the result typed as GeometryTools.geometryToROI does (see ShapeROI.toROI): an
     * axis-aligned rectangle is a RectangleROI ("Rectangle"), another single polygon a
     * PolygonROI ("Polygon"), several parts or holes a GeometryROI ("Geometry"), nothing an
     * empty 0 x 0 RectangleROI. So the result is a new object whenever two or more ROIs are
     * given, even when it equals one of them.
     */
    public static ROI intersection(Collection<? extends ROI> rois) {
        if (rois.isEmpty()) {
            return ROIs.createEmptyROI();
        }
        Iterator<? extends ROI> it = rois.iterator();
        ROI first = it.next();
        if (rois.size() == 1) {
            return first;
        }
        ImagePlane plane = first.getImagePlane();
        Area area = ((ShapeROI) first).area();
        while (it.hasNext()) {
            ROI r = it.next();
            if (r.getImagePlane().getZ() != plane.getZ() || r.getImagePlane().getT() != plane.getT()
                || r.getImagePlane().getC() != plane.getC()) {
                throw new IllegalArgumentException("Cannot merge ROIs - found plane " + r.getImagePlane() + " but expected " + plane);
            }
            area.intersect(((ShapeROI) r).area());
        }
        return ShapeROI.toROI(ShapeROI.snapped(ShapeROI.polygonsOf(ShapeROI.ringsOf(area))), plane);
    }
}
