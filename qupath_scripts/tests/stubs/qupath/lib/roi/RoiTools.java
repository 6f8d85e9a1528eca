package qupath.lib.roi;

import java.awt.geom.Area;

import milsilstub.ShapeROI;
import qupath.lib.roi.interfaces.ROI;

/** Stand-in for qupath.lib.roi.RoiTools (QuPath v0.5/v0.6). */
public class RoiTools {
    private RoiTools() {
    }

    /** QuPath: public static ROI intersection(ROI... rois). */
    public static ROI intersection(ROI... rois) {
        Area a = null;
        for (ROI r : rois) {
            Area b = new Area(r.getShape());
            if (a == null) {
                a = b;
            } else {
                a.intersect(b);
            }
        }
        return new ShapeROI(a == null ? new Area() : a, "Geometry");
    }
}
