package qupath.lib.geom;

/**
 * Stand-in for qupath.lib.geom.Point2 (QuPath v0.6.0,
 * qupath-core/src/main/java/qupath/lib/geom/Point2.java): an immutable-in-practice 2D point,
 * what ROI.getAllPoints() returns. Equality is exact on x and y; ordering is by y, then x.
 */
public class Point2 implements Comparable<Point2> {
    private double x;
    private double y;

    /** QuPath: public Point2() (the origin). */
    public Point2() {
        this(0, 0);
    }

    /** QuPath: public Point2(final double x, final double y). */
    public Point2(final double x, final double y) {
        this.x = x;
        this.y = y;
    }

    /** QuPath: public double getX(). */
    public double getX() {
        return x;
    }

    /** QuPath: public double getY(). */
    public double getY() {
        return y;
    }

    /** QuPath: public double distanceSq(final double x, final double y). */
    public double distanceSq(final double x, final double y) {
        double dx = this.x - x;
        double dy = this.y - y;
        return dx * dx + dy * dy;
    }

    /** QuPath: public double distance(final double x, final double y). */
    public double distance(final double x, final double y) {
        return Math.sqrt(distanceSq(x, y));
    }

    /** QuPath: public double distance(final Point2 p). */
    public double distance(final Point2 p) {
        return distance(p.getX(), p.getY());
    }

    /** QuPath: public double get(int dim) (0: x, 1: y). */
    public double get(int dim) {
        if (dim == 0) {
            return x;
        }
        if (dim == 1) {
            return y;
        }
        throw new IllegalArgumentException("Requested dimension " + dim + " for Point2 - allowable values are 0 and 1");
    }

    /** QuPath: public int dim(). */
    public int dim() {
        return 2;
    }

    /** QuPath: "Point: x, y". */
    @Override
    public String toString() {
        return "Point: " + x + ", " + y;
    }

    @Override
    public int hashCode() {
        return 31 * Double.hashCode(x) + Double.hashCode(y);
    }

    @Override
    public boolean equals(Object obj) {
        if (this == obj) {
            return true;
        }
        if (!(obj instanceof Point2)) {
            return false;
        }
        Point2 p = (Point2) obj;
        return x == p.x && y == p.y;
    }

    /** QuPath: public int compareTo(Point2 other): by y, then by x. */
    @Override
    public int compareTo(Point2 other) {
        if (y != other.y) {
            return y < other.y ? -1 : 1;
        }
        return x < other.x ? -1 : (x > other.x ? 1 : 0);
    }
}
