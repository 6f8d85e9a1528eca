/*
 * Prints MilsilGrid.cellEdge (lib/MilsilGrid.groovy) for the grids named on the command line,
 * for tests/test_cell_edges.py to compare with milsil/wsi/geojson.py cell_edges.
 *
 * Usage: groovy cell_edges_check.groovy <milsil scripts folder> count,stride,length ...
 * Prints one line per grid: its count + 1 edges, separated by spaces (Double.toString: exact).
 */

def gcl = new GroovyClassLoader(this.class.classLoader)
gcl.addClasspath(new File(args[0], 'lib').getAbsolutePath())
def grid = gcl.loadClass('MilsilGrid')
for (String spec : args.drop(1)) {
    String[] parts = spec.split(',')
    int count = Integer.parseInt(parts[0])
    int stride = Integer.parseInt(parts[1])
    double length = Double.parseDouble(parts[2])
    println((0..count).collect { int k -> Double.toString((double) grid.cellEdge(k, count, stride, length)) }.join(' '))
}
