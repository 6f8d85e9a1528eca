"""``milsil measure-objects`` against the semantics, computed independently here: the whole
image's stride-1 ``logit_heatmap``, shapely's point-in-polygon for pixel centres, the
centroid's pixel for objects holding none."""

from __future__ import annotations

import json
import stat

import numpy as np
import pytest
import shapely
from conftest import OPEN_MODE
from object_support import expected
from object_support import image as _image
from object_support import shapes as _shapes
from PIL import Image
from server_support import tiny_model
from shapely import affinity
from shapely.geometry import Point, mapping

from milsil.cli import main
from milsil.inference.heatmap import logit_heatmap
from milsil.models import save_checkpoint
from milsil.wsi.tiff import write_pyramidal_tiff


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    model = tiny_model()
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    save_checkpoint(model, path)
    return model, path


def _features(shapes) -> dict:
    features = []
    for k, s in enumerate(shapes):
        features.append(
            {
                "type": "Feature",
                "id": f"00000000-0000-4000-8000-{k:012d}",
                "geometry": mapping(s),
                "properties": {"objectType": "detection", "measurements": {"area": s.area}},
            }
        )
    return {"type": "FeatureCollection", "features": features}


def _check(out_path, shapes, heat, downsample, classes):
    out = json.loads(out_path.read_text())
    assert [f["id"] for f in out["features"]] == [
        f"00000000-0000-4000-8000-{k:012d}" for k in range(len(shapes))
    ]
    for feature, shape in zip(out["features"], shapes, strict=True):
        assert shapely.geometry.shape(feature["geometry"]).equals(shape)
        m = feature["properties"]["measurements"]
        assert m["area"] == pytest.approx(shape.area)  # kept
        mean, peak, pixels = expected(heat, shape, downsample)
        assert m["milsil pixels"] == pixels
        means = np.array([m[f"milsil mean logit({c})"] for c in classes])
        np.testing.assert_allclose(means, mean, rtol=1e-3, atol=1e-5)
        peaks = np.array([m[f"milsil max logit({c})"] for c in classes])
        np.testing.assert_allclose(peaks, peak, rtol=1e-3, atol=1e-5)
        p = np.exp(mean - mean.max()) / np.exp(mean - mean.max()).sum()
        probs = np.array([m[f"milsil p({c})"] for c in classes])
        np.testing.assert_allclose(probs, p, rtol=1e-3, atol=1e-6)


def test_png_objects_match_the_semantics(tmp_path, checkpoint, capsys):
    model, ckpt = checkpoint
    img = _image()
    Image.fromarray(img).save(tmp_path / "image.png")
    shapes = _shapes()
    (tmp_path / "in.geojson").write_text(json.dumps(_features(shapes)))
    argv = ["measure-objects", str(tmp_path / "image.png"), "--model", str(ckpt)]
    argv += ["--objects", str(tmp_path / "in.geojson"), "-o", str(tmp_path / "out.geojson")]
    assert main([*argv, "--device", "cpu"]) == 0
    heat = logit_heatmap(model, img, stride=1).numpy().astype(np.float64)
    _check(tmp_path / "out.geojson", shapes, heat, 1.0, model.class_names)
    assert "6 objects (5 holding pixel centres, 1 measured at their centroid)" in (
        capsys.readouterr().out
    )


def test_the_output_takes_the_mode_open_gives(tmp_path, checkpoint, umask):
    """0644 under umask 022 (a colleague, or QuPath run by another user, reads it)."""
    _, ckpt = checkpoint
    Image.fromarray(_image()).save(tmp_path / "image.png")
    (tmp_path / "in.geojson").write_text(json.dumps(_features(_shapes()[:1])))
    argv = ["measure-objects", str(tmp_path / "image.png"), "--model", str(ckpt)]
    argv += ["--objects", str(tmp_path / "in.geojson"), "-o", str(tmp_path / "out.geojson")]
    assert main([*argv, "--device", "cpu"]) == 0
    assert stat.S_IMODE((tmp_path / "out.geojson").stat().st_mode) == OPEN_MODE[umask]


def test_slide_objects_at_a_downsample(tmp_path, checkpoint):
    """A pyramidal TIFF read at its level of downsample 2: objects in level-0 pixels, the
    heatmap of the level, only the objects' region computed (a corner region: the far
    image edges are real context, the near ones mirrored)."""
    model, ckpt = checkpoint
    img = np.kron(_image(), np.ones((2, 2, 1), np.uint8))  # level 0 = 300x240
    write_pyramidal_tiff(tmp_path / "slide.tif", img, tile=64, min_level_side=64)
    level1 = img[0::2, 0::2]  # what the TIFF's second level holds (a 2x2 box of equal pixels)
    shapes = [affinity.scale(s, 2, 2, origin=(0, 0)) for s in _shapes()[:3]]
    (tmp_path / "in.geojson").write_text(json.dumps(_features(shapes)["features"]))
    argv = ["measure-objects", str(tmp_path / "slide.tif"), "--model", str(ckpt)]
    argv += ["--objects", str(tmp_path / "in.geojson"), "-o", str(tmp_path / "out.geojson")]
    assert main([*argv, "--downsample", "2", "--device", "cpu"]) == 0
    heat = logit_heatmap(model, level1, stride=1).numpy().astype(np.float64)
    out = json.loads((tmp_path / "out.geojson").read_text())
    assert isinstance(out, list)  # written back as it came: a list of features
    (tmp_path / "out.json").write_text(json.dumps({"type": "FeatureCollection", "features": out}))
    _check(tmp_path / "out.json", shapes, heat, 2.0, model.class_names)


def test_cells_use_the_nucleus_unless_asked(tmp_path, checkpoint):
    model, ckpt = checkpoint
    img = _image()
    Image.fromarray(img).save(tmp_path / "image.png")
    cell, nucleus = Point(60.3, 45.7).buffer(12.1), Point(61.2, 44.9).buffer(5.3)
    feature = _features([cell])["features"][0]
    feature["properties"]["objectType"] = "cell"
    feature["nucleusGeometry"] = mapping(nucleus)
    (tmp_path / "in.geojson").write_text(json.dumps(feature))
    heat = logit_heatmap(model, img, stride=1).numpy().astype(np.float64)
    for roi, shape in (("nucleus", nucleus), ("cell", cell)):
        out = tmp_path / f"{roi}.geojson"
        argv = ["measure-objects", str(tmp_path / "image.png"), "--model", str(ckpt), "--roi", roi]
        assert main([*argv, "--objects", str(tmp_path / "in.geojson"), "-o", str(out)]) == 0
        m = json.loads(out.read_text())["properties"]["measurements"]
        assert m["milsil pixels"] == expected(heat, shape, 1.0)[2]


def test_bad_objects_are_named(tmp_path, checkpoint, capsys):
    _, ckpt = checkpoint
    Image.fromarray(_image()).save(tmp_path / "image.png")
    bad = _features([Point(5, 5).buffer(2)])
    bad["features"].append({"type": "Feature", "id": "p1", "geometry": mapping(Point(9, 9))})
    (tmp_path / "in.geojson").write_text(json.dumps(bad))
    argv = ["measure-objects", str(tmp_path / "image.png"), "--model", str(ckpt)]
    argv += ["--objects", str(tmp_path / "in.geojson"), "-o", str(tmp_path / "out.geojson")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "feature 1 (p1) has geometry type 'Point'" in err and "Polygon" in err
    assert not (tmp_path / "out.geojson").exists()
    far = _features([Point(5000, 5000).buffer(2)])
    (tmp_path / "in.geojson").write_text(json.dumps(far))
    assert main(argv) == 2
    assert "lie outside the image (150x120" in capsys.readouterr().err


def test_an_object_outside_the_image_gets_no_measurements(tmp_path, checkpoint, capsys):
    """GeoJSON has no NaN: an object beyond the image keeps its feature, without milsil
    measurements, and the file stays strict JSON (QuPath's reader refuses NaN)."""
    _, ckpt = checkpoint
    Image.fromarray(_image()).save(tmp_path / "image.png")
    doc = _features([Point(60.3, 45.7).buffer(5), Point(900.5, 45.2).buffer(4)])
    (tmp_path / "in.geojson").write_text(json.dumps(doc))
    argv = ["measure-objects", str(tmp_path / "image.png"), "--model", str(ckpt)]
    argv += ["--objects", str(tmp_path / "in.geojson"), "-o", str(tmp_path / "out.geojson")]
    assert main(argv) == 0
    assert "1 outside the image: not measured" in capsys.readouterr().out

    def refuse(name):
        raise AssertionError(f"{name} in the GeoJSON")

    out = json.loads((tmp_path / "out.geojson").read_text(), parse_constant=refuse)
    inside, outside = (f["properties"]["measurements"] for f in out["features"])
    assert inside["milsil pixels"] > 0 and len(inside) == 8  # area + the 7
    assert list(outside) == ["area"]
