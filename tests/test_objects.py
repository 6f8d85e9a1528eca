"""measure_objects against an independent computation (shapely's point-in-polygon and PIL's
rasterizer), band-by-band accumulation, and nucleus-level scores on hand-made cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import shapely
import torch
from PIL import Image, ImageDraw
from shapely.geometry import MultiPolygon, Point, Polygon, mapping

from milsil.errors import MilsilError
from milsil.experiments.nuclei import score_nuclei, summarize_nuclei
from milsil.inference.objects import ObjectAccumulator, measure_objects

H, W, C = 48, 64, 3


@pytest.fixture(scope="module")
def heat():
    return np.random.default_rng(0).normal(0.0, 2.0, (C, H, W))


def _reference(heat: np.ndarray, geom) -> tuple[np.ndarray, np.ndarray, int]:
    """Mean/max per class over the pixels whose centre shapely says is inside; the centroid's
    pixel when none is."""
    jj, ii = np.meshgrid(np.arange(W) + 0.5, np.arange(H) + 0.5)
    inside = shapely.contains_xy(geom, jj, ii)
    if inside.any():
        return heat[:, inside].mean(1), heat[:, inside].max(1), int(inside.sum())
    c = geom.centroid
    v = heat[:, int(math.floor(c.y)), int(math.floor(c.x))]
    return v, v, 0


def _shapes() -> list:
    d = 0.0137  # keep vertices off pixel centres, where "inside" is a matter of convention
    return [
        Point(20.3, 15.7).buffer(6.2, quad_segs=32),  # circle
        Point(50.1, 30.2).buffer(2.4, quad_segs=16),  # small circle
        Polygon(
            [(3 + d, 3 + d), (30 + d, 4 + d), (28 + d, 30 + d), (5 + d, 25 + d)],
            [[(10 + d, 10 + d), (20 + d, 10 + d), (18 + d, 20 + d), (11 + d, 18 + d)]],
        ),  # polygon with a hole
        Point(40.2, 30.3).buffer(0.3),  # sub-pixel: holds no pixel centre
        Polygon([(44.61, 5.62), (44.93, 5.71), (44.8, 6.05)]),  # sub-pixel triangle
        MultiPolygon([Point(10.2, 36.6).buffer(3.1), Point(55.3, 8.4).buffer(2.6)]),
        Polygon(  # a donut: a ring of pixels between two circles
            Point(45.3, 38.1).buffer(8.0).exterior.coords,
            [Point(45.3, 38.1).buffer(4.5).exterior.coords[::-1]],
        ),
        Polygon([(60.3, 44.2), (70.4, 44.3), (70.2, 52.1), (60.1, 52.6)]),  # partly outside
    ]


def test_polygons_match_shapely(heat):
    shapes = _shapes()
    m = measure_objects(heat, shapes)
    assert m.ids == list(range(len(shapes)))
    for k, geom in enumerate(shapes):
        mean, peak, n = _reference(heat, geom)
        assert m.pixels[k] == n, k
        np.testing.assert_allclose(m.mean_logit[k], mean, rtol=1e-3, atol=1e-9)
        np.testing.assert_allclose(m.max_logit[k], peak, rtol=1e-3, atol=1e-9)
    assert m.pixels[3] == 0 and m.pixels[4] == 0  # the sub-pixel objects
    p = np.exp(m.mean_logit) / np.exp(m.mean_logit).sum(1, keepdims=True)
    np.testing.assert_allclose(m.p, p, rtol=1e-9)


def test_geojson_features_shapely_and_plain_rings_agree(heat):
    shapes = _shapes()
    features = [
        {"type": "Feature", "id": f"cell{k}", "geometry": mapping(g), "properties": {}}
        for k, g in enumerate(shapes)
    ]
    a = measure_objects(heat, shapes)
    b = measure_objects(heat, {"type": "FeatureCollection", "features": features})
    assert b.ids == [f"cell{k}" for k in range(len(shapes))]
    np.testing.assert_array_equal(a.mean_logit, b.mean_logit)
    ring = measure_objects(heat, [list(shapes[0].exterior.coords)])
    np.testing.assert_array_equal(ring.mean_logit[0], a.mean_logit[0])


def test_circles_match_the_analytic_disc_and_pil(heat):
    """Random circles (as 256-gons): the pixel set is the analytic disc's (centre distance
    < r), computed here without any geometry library; PIL's polygon fill agrees up to the
    outline pixels it draws inclusively."""
    rng = np.random.default_rng(1)
    ii, jj = np.mgrid[0:H, 0:W] + 0.5
    shapes, discs, fills = [], [], []
    while len(shapes) < 30:
        cx, cy, r = rng.uniform(3, W - 3), rng.uniform(3, H - 3), rng.uniform(0.8, 7.0)
        dist = np.hypot(jj - cx, ii - cy)
        if np.min(np.abs(dist - r)) < 1e-3 * r:  # a centre on the outline: skip this circle
            continue
        t = np.linspace(0, 2 * np.pi, 257)[:-1]
        ring = np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], 1)
        # the 256-gon lies within r * (1 - cos(pi / 256)) of the circle
        if np.any(np.abs(dist - r) < r * (1 - math.cos(math.pi / 256)) + 1e-9):
            continue
        shapes.append(ring)
        discs.append((dist < r, np.abs(dist - r)))
        img = Image.new("1", (W, H), 0)  # PIL samples pixel (j, i) at the point (j, i)
        ImageDraw.Draw(img).polygon([(x - 0.5, y - 0.5) for x, y in ring], fill=1)
        fills.append(np.asarray(img, dtype=bool))
    m = measure_objects(heat, shapes)
    for k, (disc, off_outline) in enumerate(discs):
        assert m.pixels[k] == disc.sum()
        if disc.any():
            np.testing.assert_allclose(m.mean_logit[k], heat[:, disc].mean(1), rtol=1e-3)
            np.testing.assert_allclose(m.max_logit[k], heat[:, disc].max(1), rtol=1e-3)
        # PIL rounds vertices to whole pixels and fills the outline: it differs only there
        assert np.all(off_outline[fills[k] ^ disc] < 1.5)


def test_label_image_and_bands(heat):
    rng = np.random.default_rng(2)
    labels = np.zeros((H, W), dtype=np.uint16)
    for k in range(1, 41):
        y, x = rng.integers(0, H - 4), rng.integers(0, W - 4)
        labels[y : y + rng.integers(1, 5), x : x + rng.integers(1, 5)] = k
    whole = measure_objects(torch.from_numpy(heat).float(), labels)
    present = np.unique(labels[labels > 0])
    assert whole.ids == [int(i) for i in present]
    for row, k in enumerate(present):
        sel = labels == k
        np.testing.assert_allclose(whole.mean_logit[row], heat[:, sel].mean(1), rtol=1e-5)
        np.testing.assert_allclose(whole.max_logit[row], heat[:, sel].max(1), rtol=1e-5)
        assert whole.pixels[row] == sel.sum()
    # band by band, uneven bands, objects straddling them: the same numbers
    acc = ObjectAccumulator(labels, H, W, C)
    for r0, r1 in ((0, 7), (7, 8), (8, 30), (30, H)):
        acc.add_band(r0, heat[:, r0:r1])
    banded = acc.result()
    np.testing.assert_allclose(banded.mean_logit, measure_objects(heat, labels).mean_logit)
    np.testing.assert_array_equal(banded.max_logit, measure_objects(heat, labels).max_logit)
    # asked-for ids keep their order; an absent one is NaN with 0 pixels
    some = measure_objects(heat, labels, ids=[int(present[3]), 999, int(present[0])])
    assert some.ids == [int(present[3]), 999, int(present[0])]
    assert some.pixels[1] == 0 and np.isnan(some.mean_logit[1]).all()
    np.testing.assert_allclose(some.mean_logit[2], whole.mean_logit[0])


def test_polygon_bands_and_origin(heat):
    shapes = _shapes()
    acc = ObjectAccumulator(shapes, H, W, C)
    for r0 in range(0, H, 5):
        acc.add_band(r0, heat[:, r0 : r0 + 5])
    whole = measure_objects(heat, shapes)
    np.testing.assert_allclose(acc.result().mean_logit, whole.mean_logit, rtol=1e-12)
    # slide coordinates: the heatmap's pixel (0, 0) is slide pixel (x 1000, y 200)
    moved = [shapely.affinity.translate(g, 1000, 200) for g in shapes]
    shifted = measure_objects(heat, moved, origin=(1000, 200))
    np.testing.assert_allclose(shifted.mean_logit, whole.mean_logit, rtol=1e-9)


def test_accumulator_rejects_bad_bands(heat):
    acc = ObjectAccumulator(_shapes(), H, W, C)
    acc.add_band(0, heat[:, :10])
    with pytest.raises(MilsilError, match="overlap"):
        acc.add_band(5, heat[:, 5:12])
    with pytest.raises(MilsilError, match="never added"):
        acc.result()
    with pytest.raises(MilsilError, match="classes"):
        acc.add_band(10, heat[:2, 10:12])
    with pytest.raises(MilsilError, match="Polygon"):
        measure_objects(heat, [{"type": "Point", "coordinates": [1, 2]}])


def test_measurement_names():
    heat = np.stack([np.zeros((4, 4)), np.full((4, 4), math.log(3.0))])
    m = measure_objects(heat, np.ones((4, 4), dtype=int))
    row = m.measurements(["benign", "malignant"])[0]
    assert row["milsil p(malignant)"] == pytest.approx(0.75)
    assert row["milsil mean logit(benign)"] == 0.0 and row["milsil pixels"] == 16
    assert set(row) == {
        "milsil mean logit(benign)",
        "milsil max logit(benign)",
        "milsil p(benign)",
        "milsil mean logit(malignant)",
        "milsil max logit(malignant)",
        "milsil p(malignant)",
        "milsil pixels",
    }


def test_nucleus_scores_and_auroc_hand_made():
    """Three nuclei in one image, two in another: scores and AUROC computed by hand."""
    heat = np.zeros((10, 10))
    labels = np.zeros((10, 10), dtype=int)
    labels[0:2, 0:2] = 1  # malignant, map mean 3
    heat[0:2, 0:2] = [[2, 4], [3, 3]]
    labels[5:7, 5:7] = 2  # benign, mean 1
    heat[5:7, 5:7] = 1
    labels[8, 8] = 3  # benign, 1 pixel: below min_pixels, left out
    heat[8, 8] = 9
    table = [
        {"id": 1, "class": "malignant"},
        {"id": 2, "class": "benign"},
        {"id": 3, "class": "benign"},
    ]
    scores, target = score_nuclei(heat, labels, table, "malignant", min_pixels=2)
    np.testing.assert_allclose(scores, [3.0, 1.0])
    np.testing.assert_array_equal(target, [True, False])
    # image 2: a malignant nucleus scored 2 below a benign one scored 2.5
    second = (np.array([2.0, 2.5]), np.array([True, False]))
    s = summarize_nuclei([(scores, target), second])
    # pooled pairs (mal, ben): (3,1) (3,2.5) (2,1) win, (2,2.5) loses -> 3/4
    assert s["object_auroc"] == pytest.approx(0.75)
    assert s["object_auroc_within"] == pytest.approx(0.5)  # 1.0 and 0.0
    assert s["object_pointing"] == pytest.approx(0.5)
    assert s["nuclei"] == 4 and s["target_nuclei"] == 2
    # a benign image only adds benign nuclei to the pooled AUROC, not to pointing
    s3 = summarize_nuclei([(scores, target), second, (np.array([5.0]), np.array([False]))])
    assert s3["object_auroc"] == pytest.approx(3 / 6)
    assert s3["object_pointing"] == pytest.approx(0.5)


def test_measure_image_objects_fed_by_the_tiled_engine():
    """Band by band from the tiled engine (small tiles: many bands) = the whole heatmap."""
    from milsil.data.synth import synth_sample
    from milsil.inference.heatmap import logit_heatmap
    from milsil.inference.objects import measure_image_objects
    from milsil.models import create_model

    torch.manual_seed(0)
    model = create_model("bagnet9", 2, width=4).eval()
    sample = synth_sample(np.random.default_rng(0), (40, 56), True)
    whole = logit_heatmap(model, sample.rgb)
    for objects in (sample.labels, _shapes()[:3]):
        banded = measure_image_objects(model, sample.rgb, objects, tile=8)
        expected = measure_objects(whole, objects)
        np.testing.assert_allclose(banded.mean_logit, expected.mean_logit, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(banded.max_logit, expected.max_logit, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(banded.pixels, expected.pixels)


def test_pixel_centres_on_edges_do_not_depend_on_the_region():
    """QuPath keeps 0.01 px, so pixel centres often lie exactly on an edge (here the
    45-degree edges of regular 12-gons); the same object must hold the same pixels whatever
    region (origin) it is measured in, or a cell's numbers would depend on the script's
    grouping. Before the tolerance (ON_EDGE) 4 of these 400 differed."""
    rng = np.random.default_rng(3)
    angles = np.linspace(0, 2 * np.pi, 13)[:-1]
    shapes = []
    for _ in range(400):
        cx, cy, r = rng.uniform(2000, 2100), rng.uniform(5, 95), rng.uniform(2.5, 4.5)
        ring = np.stack([cx + r * np.cos(angles), cy + r * np.sin(angles)], 1).round(2)
        shapes.append({"type": "Polygon", "coordinates": [ring.tolist()]})
    whole = measure_objects(np.zeros((1, 110, 2200)), shapes).pixels
    for ox, oy in ((1990, 0), (1993, -1), (1500, -3), (1977, -2)):
        shifted = measure_objects(np.zeros((1, 113, 700)), shapes, origin=(ox, oy))
        np.testing.assert_array_equal(shifted.pixels, whole)
    halved = measure_objects(np.zeros((1, 55, 1100)), shapes, downsample=2.0).pixels
    doubled = [
        {"type": "Polygon", "coordinates": [(np.asarray(s["coordinates"][0]) * 2).tolist()]}
        for s in shapes
    ]
    np.testing.assert_array_equal(
        measure_objects(np.zeros((1, 55, 1100)), doubled, downsample=4.0).pixels, halved
    )
