package milsilstub;

import java.awt.Shape;
import java.awt.geom.Area;
import java.awt.geom.PathIterator;
import java.awt.geom.Rectangle2D;
import java.util.ArrayList;
import java.util.List;

import qupath.lib.regions.ImagePlane;
import qupath.lib.roi.interfaces.ROI;

/** Test plumbing: an area ROI backed by java.awt.geom.Area (QuPath uses JTS; same answers here). */
public class ShapeROI implements ROI {
    private final Area area;
    private final String name;

    public ShapeROI(Shape shape, String name) {
        this.area = new Area(shape);
        this.name = name;
    }

    public Area area() {
        return (Area) area.clone();
    }

    @Override
    public String getRoiName() {
        return name;
    }

    @Override
    public ImagePlane getImagePlane() {
        return ImagePlane.getDefaultPlane();
    }

    @Override
    public double getBoundsX() {
        return area.getBounds2D().getX();
    }

    @Override
    public double getBoundsY() {
        return area.getBounds2D().getY();
    }

    @Override
    public double getBoundsWidth() {
        return area.getBounds2D().getWidth();
    }

    @Override
    public double getBoundsHeight() {
        return area.getBounds2D().getHeight();
    }

    @Override
    public double getCentroidX() {
        Rectangle2D b = area.getBounds2D();
        return b.getCenterX();
    }

    @Override
    public double getCentroidY() {
        Rectangle2D b = area.getBounds2D();
        return b.getCenterY();
    }

    @Override
    public Shape getShape() {
        return area();
    }

    @Override
    public boolean isArea() {
        return true;
    }

    @Override
    public double getArea() {
        double total = 0;
        for (double[][] ring : rings()) {
            double s = 0;
            for (int i = 0; i < ring.length; i++) {
                double[] a = ring[i];
                double[] b = ring[(i + 1) % ring.length];
                s += a[0] * b[1] - b[0] * a[1];
            }
            total += s / 2;
        }
        return Math.abs(total);
    }

    @Override
    public boolean contains(double x, double y) {
        return area.contains(x, y);
    }

    @Override
    public boolean isEmpty() {
        return area.isEmpty();
    }

    /** Closed rings (outer and holes, opposite windings; curves flattened to 0.05 px), for the area and the test dump. */
    public List<double[][]> rings() {
        List<double[][]> out = new ArrayList<>();
        List<double[]> current = new ArrayList<>();
        double[] c = new double[6];
        for (PathIterator it = area.getPathIterator(null, 0.05); !it.isDone(); it.next()) {
            int type = it.currentSegment(c);
            if (type == PathIterator.SEG_MOVETO) {
                if (!current.isEmpty()) {
                    out.add(current.toArray(new double[0][]));
                }
                current = new ArrayList<>();
                current.add(new double[] {c[0], c[1]});
            } else if (type == PathIterator.SEG_LINETO) {
                current.add(new double[] {c[0], c[1]});
            } else if (type == PathIterator.SEG_CLOSE) {
                if (!current.isEmpty()) {
                    out.add(current.toArray(new double[0][]));
                }
                current = new ArrayList<>();
            }
        }
        if (!current.isEmpty()) {
            out.add(current.toArray(new double[0][]));
        }
        return out;
    }
}
