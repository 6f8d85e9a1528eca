"""The cell-edge rule, written once per language, agrees across them.

The server draws a heatmap's outlines on the cells of ``milsil/wsi/geojson.py``
``cell_edges``; heatmap_to_annotations.groovy draws its probability tiles on the cells of
``MilsilGrid.cellEdge`` (qupath_scripts/lib/MilsilGrid.groovy). Both are run here on the same
grids, ordinary and edge cases, under both Groovy runtimes, and must give the same edges.
"""

from __future__ import annotations

import pytest
from qupath_support import ROOT, groovy_env

from milsil.wsi.geojson import cell_edges

# (count, stride, length in region pixels)
GRIDS = [
    (6, 16, 96.0),  # samples fill the region exactly (the probability-tile test's grid)
    (3, 8, 17.0),  # the last cell shorter than a stride
    (7, 3, 20.5),  # a fractional length (a region's size at a fractional downsample)
    (5, 1, 5.0),  # stride 1: one cell per pixel
    (1, 4, 10.0),  # one sample: one cell, the whole axis
    (2, 64, 40.0),  # stride longer than the region: the inner edge clipped to its end
    (4, 32, 50.0),  # inner edges past the end: empty cells at the end, none negative
    (3, 2, 3.0),  # the last inner edge exactly past the end
    (2, 5, 0.0),  # an empty axis: every edge at 0
    (9, 7, 1000.0),  # a long axis: edges far from the sample positions' rounding
]


@pytest.mark.parametrize("runtime", sorted(groovy_env.RUNTIMES))
def test_groovy_and_python_cell_edges_agree(runtime):
    rt = groovy_env.RUNTIMES[runtime]()
    result = rt.run(
        ROOT / "qupath_scripts" / "tests" / "cell_edges_check.groovy",
        [str(ROOT / "qupath_scripts"), *(f"{c},{s},{length!r}" for c, s, length in GRIDS)],
    )
    assert result.returncode == 0, result.stderr[-4000:]
    lines = result.stdout.strip().splitlines()
    assert len(lines) == len(GRIDS), result.stdout
    for (count, stride, length), line in zip(GRIDS, lines, strict=True):
        groovy = [float(v) for v in line.split()]
        python = [float(v) for v in cell_edges(count, stride, length)]
        assert groovy == python, (count, stride, length, groovy, python)
        # What both promise: count cells from 0 to the end, in order.
        assert len(groovy) == count + 1 and groovy[0] == 0.0 and groovy[-1] == length
        assert all(a <= b for a, b in zip(groovy, groovy[1:], strict=False))
