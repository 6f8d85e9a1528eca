package qupath.lib.roi;

import java.awt.Shape;
import java.awt.geom.Path2D;
import java.util.ArrayList;
import java.util.Collections;
import java.util.List;

import milsilstub.ShapeROI;
import qupath.lib.geom.Point2;
import qupath.lib.regions.ImagePlane;

/**
 * Stand-in for qupath.lib.roi.PolygonROI (QuPath v0.6.0,
 * qupath-core/src/main/java/qupath/lib/roi/PolygonROI.java, ClosedShapeStatistics.java,
 * WindingTest.java): one ring of vertices, stored as floats as QuPath's DefaultVertices does.
 * Made by ROIs.createPolygonROI, and by RoiTools / GeoJSON import for a single polygon without
 * holes that is not an axis-aligned rectangle (then the vertices are JTS's coordinates: the
 * first repeated at the end). Name "Polygon".
 */
public class PolygonROI extends ShapeROI {
    private final List<Point2> vertices;

    PolygonROI(List<? extends Point2> points, ImagePlane plane) {
        super("Polygon", plane);
        List<Point2> v = new ArrayList<>();
        for (Point2 p : points) {
            v.add(new Point2((float) p.getX(), (float) p.getY()));
        }
        this.vertices = Collections.unmodifiableList(v);
    }

    /** The ring without a repeated closing vertex. */
    @Override
    public List<List<double[][]>> polygons() {
        List<double[]> ring = new ArrayList<>();
        for (Point2 p : vertices) {
            ring.add(new double[] {p.getX(), p.getY()});
        }
        while (ring.size() > 1 && ring.get(0)[0] == ring.get(ring.size() - 1)[0]
            && ring.get(0)[1] == ring.get(ring.size() - 1)[1]) {
            ring.remove(ring.size() - 1);
        }
        List<List<double[][]>> out = new ArrayList<>();
        if (ring.size() >= 3) {
            List<double[][]> polygon = new ArrayList<>();
            polygon.add(ring.toArray(new double[0][]));
            out.add(polygon);
        }
        return out;
    }

    /** QuPath PolygonROI.getAllPoints: the vertices as stored (float precision). */
    @Override
    public List<Point2> getAllPoints() {
        return vertices;
    }

    @Override
    public int getNumPoints() {
        return vertices.size();
    }

    /** QuPath PolygonROI bounds: the vertices' (float) envelope. */
    @Override
    public double getBoundsX() {
        double v = Double.POSITIVE_INFINITY;
        for (Point2 p : vertices) {
            v = Math.min(v, p.getX());
        }
        return vertices.isEmpty() ? 0 : v;
    }

    @Override
    public double getBoundsY() {
        double v = Double.POSITIVE_INFINITY;
        for (Point2 p : vertices) {
            v = Math.min(v, p.getY());
        }
        return vertices.isEmpty() ? 0 : v;
    }

    @Override
    public double getBoundsWidth() {
        double v = Double.NEGATIVE_INFINITY;
        for (Point2 p : vertices) {
            v = Math.max(v, p.getX());
        }
        return vertices.isEmpty() ? 0 : v - getBoundsX();
    }

    @Override
    public double getBoundsHeight() {
        double v = Double.NEGATIVE_INFINITY;
        for (Point2 p : vertices) {
            v = Math.max(v, p.getY());
        }
        return vertices.isEmpty() ? 0 : v - getBoundsY();
    }

    /**
     * QuPath PolygonROI.getCentroidX via ClosedShapeStatistics: the polygon's area centroid,
     * kept as a float; a zero-area polygon: the length-weighted middle of its edges; one
     * vertex: that vertex.
     */
    @Override
    public double getCentroidX() {
        return centroid()[0];
    }

    @Override
    public double getCentroidY() {
        return centroid()[1];
    }

    private double[] centroid() {
        int n = vertices.size();
        if (n == 1) {
            return new double[] {vertices.get(0).getX(), vertices.get(0).getY()};
        }
        double a = 0;
        double cx = 0;
        double cy = 0;
        double length = 0;
        double lx = 0;
        double ly = 0;
        for (int i = 0; i < n; i++) {
            Point2 p = vertices.get(i);
            Point2 q = vertices.get((i + 1) % n);
            double cross = p.getX() * q.getY() - q.getX() * p.getY();
            a += cross;
            cx += (p.getX() + q.getX()) * cross;
            cy += (p.getY() + q.getY()) * cross;
            double d = p.distance(q);
            length += d;
            lx += (p.getX() + q.getX()) * 0.5 * d;
            ly += (p.getY() + q.getY()) * 0.5 * d;
        }
        if (a != 0) {
            return new double[] {(float) (cx / (3 * a)), (float) (cy / (3 * a))};
        }
        return new double[] {(float) (lx / length), (float) (ly / length)};
    }

    /** QuPath PolygonROI.getArea: 0 for 2 vertices or fewer, else the shoelace area (absolute). */
    @Override
    public double getArea() {
        int n = vertices.size();
        if (n <= 2) {
            return 0;
        }
        double s = 0;
        for (int i = 0; i < n; i++) {
            Point2 p = vertices.get(i);
            Point2 q = vertices.get((i + 1) % n);
            s += p.getX() * q.getY() - q.getX() * p.getY();
        }
        return Math.abs(s / 2);
    }

    /**
     * QuPath PolygonROI.contains: WindingTest.getWindingNumber(vertices, x, y) != 0 (an edge
     * going up counts +1 when the point is left of it, one going down -1 when right of it).
     */
    @Override
    public boolean contains(double x, double y) {
        int n = vertices.size();
        if (n <= 2) {
            return false;
        }
        int winding = 0;
        for (int i = 0; i < n; i++) {
            Point2 p = vertices.get(i);
            Point2 q = vertices.get((i + 1) % n);
            double side = (q.getX() - p.getX()) * (y - p.getY()) - (x - p.getX()) * (q.getY() - p.getY());
            if (p.getY() <= y) {
                if (q.getY() > y && side > 0) {
                    winding++;
                }
            } else if (q.getY() <= y && side < 0) {
                winding--;
            }
        }
        return winding != 0;
    }

    /** QuPath PolygonROI.getShape: a closed Path2D.Float through the vertices. */
    @Override
    public Shape getShape() {
        Path2D.Float path = new Path2D.Float();
        for (int i = 0; i < vertices.size(); i++) {
            Point2 p = vertices.get(i);
            if (i == 0) {
                path.moveTo(p.getX(), p.getY());
            } else {
                path.lineTo(p.getX(), p.getY());
            }
        }
        path.closePath();
        return path;
    }
}
