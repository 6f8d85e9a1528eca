/*
 * MilsilGrid.groovy -- the cells of a heatmap's sample grid, the Groovy copy of the one rule
 * milsil/wsi/geojson.py `cell_edges` states for Python (the server's outlines are drawn on
 * it; tests/test_cell_edges.py runs both on the same cells and requires them to agree).
 * Imports nothing: same Groovy subset as the other lib files (Groovy 2.4 and 4).
 */

class MilsilGrid {

    /**
     * Edge `k` (0..count) of the `count` cells along an axis of `length` region pixels sampled
     * every `stride` pixels: the outer edges on the region border, the inner ones midway
     * between neighbouring samples' pixel centres (k * stride + 0.5 - stride / 2), clipped to
     * the region, so the cells tile the region without gaps or overlaps.
     */
    static double cellEdge(int k, int count, int stride, double length) {
        if (k <= 0) {
            return 0.0d
        }
        if (k >= count) {
            return length
        }
        return Math.min(length, Math.max(0.0d, k * stride + 0.5d - stride / 2.0d))
    }
}
