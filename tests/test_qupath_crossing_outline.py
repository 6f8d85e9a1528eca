"""The scripts on an outline QuPath 0.6 refuses: a polygon that crosses itself makes
``PathIO.readObjectsFromGeoJSON`` throw for the whole document (JTS GeometryPrecisionReducer,
"Reduction failed, possible invalid input"; the stand-ins do the same, pinned in
test_qupath_standins.py). The library reads such a document feature by feature: the
crossing object is skipped with one line naming it, every other object is kept.

Runs the library's GeoJSON reader (loaded as the scripts load it, through
lib/MilsilBootstrap.groovy) against the stand-ins, under Groovy 2.4 and 4.
"""

from __future__ import annotations

import json

import pytest
from qupath_support import RUNTIMES, SCRIPTS, groovy_env

DRIVER = r"""
import com.google.gson.GsonBuilder
def milsil = new GroovyClassLoader(this.getClass().getClassLoader())
    .parseClass(new File(args[0], 'lib/MilsilBootstrap.groovy')).load(args[0], [:], ['MilsilGeoJSON'])
assert milsil.error == null : milsil.error
def lines = []
def objects = milsil.MilsilGeoJSON.read(new File(args[1]).getText('UTF-8'), { String line -> lines << line })
def out = [lines: lines, objects: objects.collect { o -> [name: o.getName(), cls: o.getPathClass()?.toString(),
    area: o.getROI().getArea(), p: o.getMeasurementList().get('milsil p(tumor)')] }]
new File(args[2]).setText(new GsonBuilder().create().toJson(out), 'UTF-8')
"""


def _feature(k: int, name: str, ring: list, p: float) -> dict:
    return {
        "type": "Feature",
        "id": f"00000000-0000-4000-8000-{k:012d}",
        "geometry": {"type": "Polygon", "coordinates": [ring]},
        "properties": {
            "objectType": "annotation",
            "name": name,
            "classification": {"name": "tumor", "color": [200, 0, 0]},
            "measurements": {"milsil p(tumor)": p},
        },
    }


@pytest.fixture(scope="module")
def stub_classes(tmp_path_factory):
    return groovy_env.compile_stubs(tmp_path_factory.mktemp("stub_classes"))


@pytest.mark.parametrize("runtime_name", RUNTIMES)
def test_a_crossing_outline_is_skipped_and_named_the_rest_kept(
    runtime_name, stub_classes, tmp_path
):
    runtime = groovy_env.available(runtime_name)
    if isinstance(runtime, str):
        groovy_env.missing(runtime)
    square = [[0, 0], [10, 0], [10, 10], [0, 10], [0, 0]]
    bow_tie = [[20, 0], [30, 10], [30, 0], [20, 10], [20, 0]]
    far = [[40, 0], [44, 0], [44, 5], [40, 5], [40, 0]]
    doc = {
        "type": "FeatureCollection",
        "features": [
            _feature(1, "a", square, 0.75),
            _feature(2, "bow", bow_tie, 0.5),
            _feature(3, "ccc", far, 0.25),
        ],
    }
    (tmp_path / "in.geojson").write_text(json.dumps(doc))
    (tmp_path / "driver.groovy").write_text(DRIVER)
    args = [str(SCRIPTS), str(tmp_path / "in.geojson"), str(tmp_path / "out.json")]
    result = runtime.run(tmp_path / "driver.groovy", args, extra_cp=[stub_classes])
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    out = json.loads((tmp_path / "out.json").read_text())
    assert out["objects"] == [
        {"name": "a", "cls": "tumor", "area": 100, "p": 0.75},
        {"name": "ccc", "cls": "tumor", "area": 20, "p": 0.25},
    ]
    assert out["lines"] == [
        "milsil: skipped object 2 of 3 (name bow, classification tumor, "
        "id 00000000-0000-4000-8000-000000000002): QuPath cannot read its outline "
        "(Reduction failed, possible invalid input; a polygon that crosses itself)"
    ]
