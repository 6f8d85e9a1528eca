package milsilstub;

import java.awt.Shape;
import java.awt.geom.Area;
import java.awt.geom.Path2D;
import java.awt.geom.PathIterator;
import java.util.ArrayList;
import java.util.List;
import java.util.Locale;

import qupath.lib.geom.Point2;
import qupath.lib.regions.ImagePlane;
import qupath.lib.roi.GeometryROI;
import qupath.lib.roi.ROIs;
import qupath.lib.roi.interfaces.ROI;

/**
 * Test plumbing: the common base of the area ROI stand-ins (qupath.lib.roi.RectangleROI,
 * EllipseROI, PolygonROI, GeometryROI). QuPath computes with JTS; here a ROI's "geometry" is
 * a list of polygons, each a list of rings (shell first, then its holes; a ring's first
 * point is not repeated at its end), and set operations use java.awt.geom.Area. The
 * defaults here are those of QuPath's GeometryROI; the other types override what differs.
 */
public abstract class ShapeROI implements ROI {
    /** QuPath's GeometryTools default precision model: a 0.01 px grid (GeometryTools.java, v0.6.0). */
    public static final double GRID = 0.01;

    private final String name;
    private final ImagePlane plane;

    protected ShapeROI(String name, ImagePlane plane) {
        this.name = name;
        this.plane = plane == null ? ImagePlane.getDefaultPlane() : plane;
    }

    /** The geometry as polygons (shell, then holes; open rings). */
    public abstract List<List<double[][]>> polygons();

    /** The closed area this ROI covers, for set operations. */
    public Area area() {
        return new Area(getShape());
    }

    /** Every ring of every polygon (for the test dumps and the area). */
    public List<double[][]> rings() {
        List<double[][]> out = new ArrayList<>();
        for (List<double[][]> polygon : polygons()) {
            out.addAll(polygon);
        }
        return out;
    }

    @Override
    public String getRoiName() {
        return name;
    }

    @Override
    public ImagePlane getImagePlane() {
        return plane;
    }

    /** QuPath GeometryROI: the envelope of all coordinates. */
    @Override
    public double getBoundsX() {
        return envelope()[0];
    }

    @Override
    public double getBoundsY() {
        return envelope()[1];
    }

    @Override
    public double getBoundsWidth() {
        double[] e = envelope();
        return e[2] - e[0];
    }

    @Override
    public double getBoundsHeight() {
        double[] e = envelope();
        return e[3] - e[1];
    }

    private double[] envelope() {
        double minX = Double.POSITIVE_INFINITY;
        double minY = Double.POSITIVE_INFINITY;
        double maxX = Double.NEGATIVE_INFINITY;
        double maxY = Double.NEGATIVE_INFINITY;
        for (double[][] ring : rings()) {
            for (double[] p : ring) {
                minX = Math.min(minX, p[0]);
                minY = Math.min(minY, p[1]);
                maxX = Math.max(maxX, p[0]);
                maxY = Math.max(maxY, p[1]);
            }
        }
        if (minX > maxX) {
            return new double[] {0, 0, 0, 0};
        }
        return new double[] {minX, minY, maxX, maxY};
    }

    /** QuPath GeometryROI: JTS Geometry.getCentroid(), the area-weighted centroid (holes subtract). */
    @Override
    public double getCentroidX() {
        return centroid()[0];
    }

    @Override
    public double getCentroidY() {
        return centroid()[1];
    }

    private double[] centroid() {
        double a = 0;
        double cx = 0;
        double cy = 0;
        for (List<double[][]> polygon : polygons()) {
            for (int i = 0; i < polygon.size(); i++) {
                double[][] ring = polygon.get(i);
                double sign = Math.signum(signedArea(ring)) * (i == 0 ? 1 : -1);
                for (int k = 0; k < ring.length; k++) {
                    double[] p = ring[k];
                    double[] q = ring[(k + 1) % ring.length];
                    double cross = (p[0] * q[1] - q[0] * p[1]) * sign;
                    a += cross;
                    cx += (p[0] + q[0]) * cross;
                    cy += (p[1] + q[1]) * cross;
                }
            }
        }
        if (a == 0) {
            return new double[] {Double.NaN, Double.NaN};
        }
        return new double[] {cx / (3 * a), cy / (3 * a)};
    }

    /** QuPath GeometryROI: every coordinate of the JTS geometry, each ring closed (first point repeated). */
    @Override
    public List<Point2> getAllPoints() {
        List<Point2> out = new ArrayList<>();
        for (double[][] ring : rings()) {
            for (double[] p : ring) {
                out.add(new Point2(p[0], p[1]));
            }
            if (ring.length > 0) {
                out.add(new Point2(ring[0][0], ring[0][1]));
            }
        }
        return out;
    }

    @Override
    public int getNumPoints() {
        return getAllPoints().size();
    }

    /** QuPath GeometryROI: shells minus holes. */
    @Override
    public double getArea() {
        double total = 0;
        for (List<double[][]> polygon : polygons()) {
            for (int i = 0; i < polygon.size(); i++) {
                double a = Math.abs(signedArea(polygon.get(i)));
                total += i == 0 ? a : -a;
            }
        }
        return total;
    }

    @Override
    public double getScaledArea(double pixelWidth, double pixelHeight) {
        return getArea() * pixelWidth * pixelHeight;
    }

    /** QuPath GeometryROI.contains: the point is not exterior (on the boundary counts as inside). */
    @Override
    public boolean contains(double x, double y) {
        return geometryContains(x, y);
    }

    /**
     * Whether the point is not exterior to the geometry (JTS locate != EXTERIOR: the boundary
     * counts as inside), whatever this ROI's own contains() says; what QuPath's hierarchy
     * uses for centroids (RoiRelate.containsCentroid).
     */
    public boolean geometryContains(double x, double y) {
        boolean inside = false;
        for (double[][] ring : rings()) {
            for (int i = 0, j = ring.length - 1; i < ring.length; j = i++) {
                if (onSegment(ring[j], ring[i], x, y)) {
                    return true;
                }
                if ((ring[i][1] > y) != (ring[j][1] > y)
                    && x < (ring[j][0] - ring[i][0]) * (y - ring[i][1]) / (ring[j][1] - ring[i][1]) + ring[i][0]) {
                    inside = !inside;
                }
            }
        }
        return inside;
    }

    /** The distance from the point to the nearest ring edge. */
    public double distanceToBoundary(double x, double y) {
        double best = Double.POSITIVE_INFINITY;
        for (double[][] ring : rings()) {
            for (int i = 0, j = ring.length - 1; i < ring.length; j = i++) {
                double[] a = ring[j];
                double[] b = ring[i];
                double dx = b[0] - a[0];
                double dy = b[1] - a[1];
                double len2 = dx * dx + dy * dy;
                double t = len2 == 0 ? 0 : Math.max(0, Math.min(1, ((x - a[0]) * dx + (y - a[1]) * dy) / len2));
                best = Math.min(best, Math.hypot(x - (a[0] + t * dx), y - (a[1] + t * dy)));
            }
        }
        return best;
    }

    /**
     * QuPath's hierarchy rule for non-detections (RoiRelate.coversWithTolerance, v0.6.0,
     * qupath-core/src/main/java/qupath/lib/objects/hierarchy/RoiRelate.java): this ROI covers
     * `child` up to a 0.02 px tolerance (max(1e-3, 2 / the 0.01 px grid's scale)): same plane,
     * bounds within the tolerance, an area at least the child's, and no part of the child
     * further than the tolerance outside (here: no vertex of child minus this).
     */
    public boolean coversWithTolerance(ShapeROI child) {
        double tol = 0.02;
        if (getZ() != child.getZ() || getT() != child.getT() || getArea() < child.getArea() || child.isEmpty()) {
            return false;
        }
        if (child.getBoundsX() < getBoundsX() - tol || child.getBoundsY() < getBoundsY() - tol
            || child.getBoundsX() + child.getBoundsWidth() > getBoundsX() + getBoundsWidth() + tol
            || child.getBoundsY() + child.getBoundsHeight() > getBoundsY() + getBoundsHeight() + tol) {
            return false;
        }
        Area outside = child.area();
        outside.subtract(area());
        for (double[][] ring : ringsOf(outside)) {
            for (double[] p : ring) {
                if (!geometryContains(p[0], p[1]) && distanceToBoundary(p[0], p[1]) > tol) {
                    return false;
                }
            }
        }
        return true;
    }

    /** QuPath AbstractPathROI.isEmpty: no points, or zero area. */
    @Override
    public boolean isEmpty() {
        return rings().isEmpty() || getArea() == 0;
    }

    /** QuPath GeometryROI.getShape: an Area of the rings (even-odd). */
    @Override
    public Shape getShape() {
        Path2D.Double path = new Path2D.Double(Path2D.WIND_EVEN_ODD);
        for (double[][] ring : rings()) {
            for (int i = 0; i < ring.length; i++) {
                if (i == 0) {
                    path.moveTo(ring[i][0], ring[i][1]);
                } else {
                    path.lineTo(ring[i][0], ring[i][1]);
                }
            }
            path.closePath();
        }
        return new Area(path);
    }

    /**
     * A JTS Geometry of {@link #polygons()} when JTS (org.locationtech.jts, Debian
     * libjts-java) is on the class path (read from WKT by reflection); otherwise an
     * UnsupportedOperationException that says so.
     */
    @Override
    public Object getGeometry() {
        StringBuilder wkt = new StringBuilder();
        List<List<double[][]>> polygons = polygons();
        if (polygons.isEmpty()) {
            wkt.append("POLYGON EMPTY");
        } else {
            wkt.append(polygons.size() == 1 ? "POLYGON " : "MULTIPOLYGON (");
            for (int k = 0; k < polygons.size(); k++) {
                wkt.append(k == 0 ? "" : ", ").append('(');
                List<double[][]> polygon = polygons.get(k);
                for (int r = 0; r < polygon.size(); r++) {
                    wkt.append(r == 0 ? "" : ", ").append('(');
                    double[][] ring = polygon.get(r);
                    for (int i = 0; i <= ring.length; i++) {
                        double[] p = ring[i % ring.length];
                        wkt.append(i == 0 ? "" : ", ").append(String.format(Locale.ROOT, "%s %s", p[0], p[1]));
                    }
                    wkt.append(')');
                }
                wkt.append(')');
            }
            if (polygons.size() != 1) {
                wkt.append(')');
            }
        }
        try {
            Object reader = Class.forName("org.locationtech.jts.io.WKTReader").getConstructor().newInstance();
            return reader.getClass().getMethod("read", String.class).invoke(reader, wkt.toString());
        } catch (ClassNotFoundException e) {
            throw new UnsupportedOperationException(
                "ROI.getGeometry() needs JTS on the class path (Debian libjts-java: /usr/share/java/jts-core.jar); "
                + "use getAllPoints(), getShape() or contains() instead", e);
        } catch (ReflectiveOperationException e) {
            throw new IllegalStateException("JTS could not read " + wkt, e);
        }
    }

    @Override
    public String toString() {
        return String.format(Locale.ROOT, "%s (%.0f, %.0f, %.0f, %.0f)", name, getBoundsX(), getBoundsY(),
            getBoundsWidth(), getBoundsHeight());
    }

    // ------------------------------------------------------------------ geometry helpers

    public static double signedArea(double[][] ring) {
        double s = 0;
        for (int i = 0; i < ring.length; i++) {
            double[] a = ring[i];
            double[] b = ring[(i + 1) % ring.length];
            s += a[0] * b[1] - b[0] * a[1];
        }
        return s / 2;
    }

    private static boolean onSegment(double[] a, double[] b, double x, double y) {
        double cross = (b[0] - a[0]) * (y - a[1]) - (b[1] - a[1]) * (x - a[0]);
        if (Math.abs(cross) > 1e-12 * Math.max(1, Math.abs(b[0] - a[0]) + Math.abs(b[1] - a[1]))) {
            return false;
        }
        return x >= Math.min(a[0], b[0]) && x <= Math.max(a[0], b[0])
            && y >= Math.min(a[1], b[1]) && y <= Math.max(a[1], b[1]);
    }

    private static boolean ringContains(double[][] ring, double x, double y) {
        boolean inside = false;
        for (int i = 0, j = ring.length - 1; i < ring.length; j = i++) {
            if ((ring[i][1] > y) != (ring[j][1] > y)
                && x < (ring[j][0] - ring[i][0]) * (y - ring[i][1]) / (ring[j][1] - ring[i][1]) + ring[i][0]) {
                inside = !inside;
            }
        }
        return inside;
    }

    /** The rings of an Area (curves flattened to 0.05 px), a ring's closing point not repeated. */
    public static List<double[][]> ringsOf(Area area) {
        List<double[][]> out = new ArrayList<>();
        List<double[]> current = new ArrayList<>();
        double[] c = new double[6];
        for (PathIterator it = area.getPathIterator(null, 0.05); !it.isDone(); it.next()) {
            int type = it.currentSegment(c);
            if (type == PathIterator.SEG_MOVETO) {
                addRing(out, current);
                current = new ArrayList<>();
                current.add(new double[] {c[0], c[1]});
            } else if (type == PathIterator.SEG_LINETO) {
                current.add(new double[] {c[0], c[1]});
            } else if (type == PathIterator.SEG_CLOSE) {
                addRing(out, current);
                current = new ArrayList<>();
            }
        }
        addRing(out, current);
        return out;
    }

    private static void addRing(List<double[][]> out, List<double[]> ring) {
        List<double[]> clean = new ArrayList<>();
        for (double[] p : ring) {
            double[] last = clean.isEmpty() ? null : clean.get(clean.size() - 1);
            if (last == null || last[0] != p[0] || last[1] != p[1]) {
                clean.add(p);
            }
        }
        while (clean.size() > 1 && clean.get(0)[0] == clean.get(clean.size() - 1)[0]
            && clean.get(0)[1] == clean.get(clean.size() - 1)[1]) {
            clean.remove(clean.size() - 1);
        }
        if (clean.size() >= 3) {
            double[][] r = clean.toArray(new double[0][]);
            if (signedArea(r) != 0) {
                out.add(r);
            }
        }
    }

    /**
     * Rings (which do not cross, as an Area's) grouped into polygons: a ring inside an odd
     * number of others is a hole of the smallest ring around it; the rest are shells.
     */
    public static List<List<double[][]>> polygonsOf(List<double[][]> rings) {
        int n = rings.size();
        int[] depth = new int[n];
        for (int i = 0; i < n; i++) {
            double[] p = interiorSample(rings.get(i));
            for (int j = 0; j < n; j++) {
                if (i != j && Math.abs(signedArea(rings.get(j))) > Math.abs(signedArea(rings.get(i)))
                    && ringContains(rings.get(j), p[0], p[1])) {
                    depth[i]++;
                }
            }
        }
        List<List<double[][]>> polygons = new ArrayList<>();
        List<Integer> shellIndex = new ArrayList<>();
        for (int i = 0; i < n; i++) {
            if (depth[i] % 2 == 0) {
                List<double[][]> polygon = new ArrayList<>();
                polygon.add(rings.get(i));
                polygons.add(polygon);
                shellIndex.add(i);
            }
        }
        for (int i = 0; i < n; i++) {
            if (depth[i] % 2 == 1) {
                double[] p = interiorSample(rings.get(i));
                int best = -1;
                for (int k = 0; k < shellIndex.size(); k++) {
                    double[][] shell = rings.get(shellIndex.get(k));
                    if (depth[shellIndex.get(k)] == depth[i] - 1 && ringContains(shell, p[0], p[1])
                        && (best < 0 || Math.abs(signedArea(shell)) < Math.abs(signedArea(rings.get(shellIndex.get(best)))))) {
                        best = k;
                    }
                }
                if (best >= 0) {
                    polygons.get(best).add(rings.get(i));
                }
            }
        }
        return polygons;
    }

    /** The midpoint of a ring's first edge (a vertex may touch another ring; an edge's middle rarely does). */
    private static double[] interiorSample(double[][] ring) {
        double[] a = ring[0];
        double[] b = ring[1 % ring.length];
        return new double[] {(a[0] + b[0]) / 2, (a[1] + b[1]) / 2};
    }

    /** Coordinates snapped to QuPath's 0.01 px grid (JTS PrecisionModel.makePrecise), degenerate rings dropped. */
    public static List<List<double[][]>> snapped(List<List<double[][]>> polygons) {
        List<List<double[][]>> out = new ArrayList<>();
        for (List<double[][]> polygon : polygons) {
            List<double[][]> rings = new ArrayList<>();
            for (int r = 0; r < polygon.size(); r++) {
                List<double[]> ring = new ArrayList<>();
                for (double[] p : polygon.get(r)) {
                    ring.add(new double[] {snap(p[0]), snap(p[1])});
                }
                List<double[][]> cleaned = new ArrayList<>();
                addRing(cleaned, ring);
                if (cleaned.isEmpty() && r == 0) {
                    break;  // the shell collapsed: so does the polygon
                }
                rings.addAll(cleaned);
            }
            if (!rings.isEmpty()) {
                out.add(rings);
            }
        }
        return out;
    }

    /**
     * Whether two edges of the rings, on the 0.01 px grid, cross (each passes strictly through
     * the other's line, at no vertex): a ring crossing itself, a hole crossing its shell, two
     * polygons crossing. Checked before degenerate rings are dropped (a bow tie's two lobes
     * cancel: zero area).
     * What makes QuPath's GeoJSON import throw (see qupath.lib.io.PathIO.toROI). Edges are
     * swept in order of their left end, so only those whose x ranges meet are compared.
     */
    public static boolean edgesCross(List<List<double[][]>> polygons) {
        List<double[]> edges = new ArrayList<>();
        for (List<double[][]> polygon : polygons) {
            for (double[][] ring : polygon) {
                for (int i = 0; i < ring.length; i++) {
                    double[] a = {snap(ring[i][0]), snap(ring[i][1])};
                    double[] b = {snap(ring[(i + 1) % ring.length][0]), snap(ring[(i + 1) % ring.length][1])};
                    edges.add(a[0] <= b[0] ? new double[] {a[0], a[1], b[0], b[1]} : new double[] {b[0], b[1], a[0], a[1]});
                }
            }
        }
        edges.sort((e, f) -> Double.compare(e[0], f[0]));
        for (int i = 0; i < edges.size(); i++) {
            double[] e = edges.get(i);
            for (int j = i + 1; j < edges.size() && edges.get(j)[0] <= e[2]; j++) {
                double[] f = edges.get(j);
                if (Math.signum(turn(e, f[0], f[1])) * Math.signum(turn(e, f[2], f[3])) < 0
                    && Math.signum(turn(f, e[0], e[1])) * Math.signum(turn(f, e[2], e[3])) < 0) {
                    return true;
                }
            }
        }
        return false;
    }

    /** The side of the line through edge e (x1, y1, x2, y2) that (x, y) lies on (0: on it). */
    private static double turn(double[] e, double x, double y) {
        return (e[2] - e[0]) * (y - e[1]) - (e[3] - e[1]) * (x - e[0]);
    }

    public static double snap(double v) {
        return Math.round(v / GRID) * GRID;
    }

    /**
     * A ROI of the type QuPath's GeometryTools.geometryToROI (v0.6.0,
     * qupath-core/src/main/java/qupath/lib/roi/GeometryTools.java, GeometryConverter.geometryToROI)
     * gives a polygonal JTS geometry: empty: ROIs.createEmptyROI() (a 0 x 0 RectangleROI);
     * several polygons, or one with holes: a GeometryROI; one polygon that is an axis-aligned
     * rectangle (JTS Polygon.isRectangle: a ring of 4 corners): a RectangleROI; any other
     * polygon: a PolygonROI of the ring's coordinates, the first repeated at the end (as
     * JTS Polygon.getCoordinates gives them).
     */
    public static ROI toROI(List<List<double[][]>> polygons, ImagePlane plane) {
        if (polygons.isEmpty()) {
            return ROIs.createEmptyROI();
        }
        if (polygons.size() > 1 || polygons.get(0).size() > 1) {
            return new GeometryROI(polygons, plane);
        }
        double[][] ring = polygons.get(0).get(0);
        double[] rect = rectangle(ring);
        if (rect != null) {
            return ROIs.createRectangleROI(rect[0], rect[1], rect[2], rect[3], plane);
        }
        List<Point2> points = new ArrayList<>();
        for (double[] p : ring) {
            points.add(new Point2(p[0], p[1]));
        }
        points.add(new Point2(ring[0][0], ring[0][1]));
        return ROIs.createPolygonROI(points, plane);
    }

    /**
     * [x, y, w, h] when the (open) ring is an axis-aligned rectangle by JTS
     * Polygon.isRectangle's rule: exactly 4 vertices, each on the envelope's corners, each
     * edge changing x or y but not both; otherwise null.
     */
    public static double[] rectangle(double[][] ring) {
        if (ring.length != 4) {
            return null;
        }
        double minX = Math.min(Math.min(ring[0][0], ring[1][0]), Math.min(ring[2][0], ring[3][0]));
        double maxX = Math.max(Math.max(ring[0][0], ring[1][0]), Math.max(ring[2][0], ring[3][0]));
        double minY = Math.min(Math.min(ring[0][1], ring[1][1]), Math.min(ring[2][1], ring[3][1]));
        double maxY = Math.max(Math.max(ring[0][1], ring[1][1]), Math.max(ring[2][1], ring[3][1]));
        for (int i = 0; i < 4; i++) {
            double[] p = ring[i];
            double[] q = ring[(i + 1) % 4];
            if ((p[0] != minX && p[0] != maxX) || (p[1] != minY && p[1] != maxY)) {
                return null;
            }
            if ((p[0] != q[0]) == (p[1] != q[1])) {
                return null;
            }
        }
        return new double[] {minX, minY, maxX - minX, maxY - minY};
    }
}
