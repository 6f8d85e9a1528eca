"""Heatmap -> QuPath GeoJSON: holes, validity, level-0 coordinates, measurements, bad arguments."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from shapely.geometry import shape

from milsil.errors import MilsilError
from milsil.wsi.geojson import heatmap_to_geojson, qupath_problems


def test_ring_with_hole_in_level0_coordinates():
    values = np.zeros((10, 10))
    values[2:8, 2:8] = 0.9
    values[4:6, 4:6] = 0.1  # the hole
    fc, objects = heatmap_to_geojson(
        values, 0.5, origin=(100.0, 200.0), downsample=2.0, measurement_maps={"probability": values}
    )
    assert qupath_problems(json.loads(json.dumps(fc))) == []
    (feature,) = fc["features"]
    geom = shape(feature["geometry"])
    assert geom.geom_type == "Polygon" and len(geom.interiors) == 1
    assert geom.bounds == (104.0, 204.0, 116.0, 216.0)
    assert math.isclose(geom.area, (36 - 4) * 4)
    assert objects[0]["mean_probability"] == pytest.approx(0.9)
    props = feature["properties"]
    assert props["objectType"] == "annotation"
    assert props["classification"] == {"name": "malignant", "color": [200, 0, 0]}
    assert props["measurements"]["area"] == pytest.approx(128.0)


def test_checkerboard_and_noise_stay_valid():
    rng = np.random.default_rng(0)
    values = rng.random((40, 40))
    values[::2, ::2] = 1.0  # diagonal-only contacts
    fc, objects = heatmap_to_geojson(
        values, 0.6, stride=3, downsample=1.5, simplify_tolerance=0.7, origin=(0.005, 0.0)
    )
    assert fc["features"] and qupath_problems(json.loads(json.dumps(fc))) == []
    for f in fc["features"]:
        assert shape(f["geometry"]).is_valid


def test_stride_cells_cover_the_region_exactly():
    values = np.ones((5, 6))
    fc, objects = heatmap_to_geojson(values, 0.5, stride=4, region_size=(23.0, 19.0))
    assert len(objects) == 1 and objects[0]["area"] == pytest.approx(23 * 19)


def test_min_area_threshold_nan_and_colour():
    values = np.zeros((20, 20))
    values[1:3, 1:3] = 1.0  # 4 px
    values[10:18, 10:18] = 1.0  # 64 px
    values[0, 19] = np.nan
    fc, objects = heatmap_to_geojson(
        values, 0.5, min_area=10, classification="Tumor", color=[1, 2, 3]
    )
    assert [o["area"] for o in objects] == [64.0]
    assert fc["features"][0]["properties"]["classification"] == {
        "name": "Tumor",
        "color": [1, 2, 3],
    }
    empty, none = heatmap_to_geojson(values, 2.0)
    assert empty["features"] == [] and none == []
    for kwargs in (
        {"threshold": float("nan")},
        {"min_area": -1},
        {"color": [300, 0, 0]},
        {"stride": 0},
    ):
        args = {"threshold": 0.5, **kwargs}
        with pytest.raises(MilsilError):
            heatmap_to_geojson(values, **args)
    with pytest.raises(MilsilError):
        heatmap_to_geojson(np.zeros(5), 0.5)


def test_problems_are_reported():
    bowtie = {"type": "Polygon", "coordinates": [[[0, 0], [2, 2], [2, 0], [0, 2], [0, 0]]]}
    bad = {
        "type": "FeatureCollection",
        "features": [
            {
                "type": "Feature",
                "id": "x",
                "geometry": bowtie,
                "properties": {
                    "objectType": "blob",
                    "classification": {"name": "a"},
                    "measurements": {"m": "x"},
                },
            }
        ],
    }
    problems = " ".join(qupath_problems(bad))
    for word in ("UUID", "objectType", "color", "measurements", "invalid"):
        assert word in problems
