"""MeasureObjects over a real channel: streamed tiles and server-read slides give the
semantics' numbers (computed independently, tests/object_support.py); bad input is named."""

from __future__ import annotations

import json

import grpc
import numpy as np
import pytest
from object_support import expected, image, shapes
from server_support import register_tiny_model, running_server
from shapely import affinity
from shapely.geometry import Point, box, mapping

from milsil.client import MilsilClient
from milsil.inference.heatmap import logit_heatmap
from milsil.inference.tiling import context_pixels
from milsil.v1 import common_pb2, inference_service_pb2
from milsil.wsi.tiff import write_pyramidal_tiff
from milsil_server.resources import Limits

INVALID = grpc.StatusCode.INVALID_ARGUMENT


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    base = tmp_path_factory.mktemp("objects")
    slides = base / "slides"
    slides.mkdir()
    level0 = np.kron(image(), np.ones((2, 2, 1), np.uint8))  # 300x240, level 1 = image()
    write_pyramidal_tiff(slides / "case.tif", level0, tile=64, min_level_side=64)
    limits = Limits(max_objects=20_000)
    with running_server(base / "data", slide_roots=(slides,), limits=limits) as server:
        model = register_tiny_model(server, "tiny")
        client = MilsilClient(f"127.0.0.1:{server.port}", timeout=60)
        client.address = f"127.0.0.1:{server.port}"
        yield client, model, level0
        client.close()


def _objects(geoms, scale: float = 1.0):
    return [
        (f"cell-{k}", mapping(affinity.scale(g, scale, scale, origin=(0, 0))))
        for k, g in enumerate(geoms)
    ]


def _check(result, geoms, heat, downsample, classes):
    assert result.class_names == list(classes)
    assert result.ids == [f"cell-{k}" for k in range(len(geoms))]
    for k, g in enumerate(geoms):
        mean, peak, pixels = expected(heat, g, downsample)
        assert result.pixels[k] == pixels, k
        np.testing.assert_allclose(result.mean_logits[k], mean, rtol=1e-3, atol=1e-5)
        np.testing.assert_allclose(result.max_logits[k], peak, rtol=1e-3, atol=1e-5)
        p = np.exp(mean - mean.max())
        np.testing.assert_allclose(result.probabilities[k], p / p.sum(), rtol=1e-3, atol=1e-6)


def test_streamed_region_with_context(env):
    """A region inside a larger image, sent with the model's context around it."""
    client, model, _ = env
    full = image()
    c = context_pixels(model)
    x0, y0, w, h = 40, 30, 100, 80  # the region, in image pixels
    crop = full[y0 - c : y0 + h + c, x0 - c : x0 + w + c]
    geoms = [g for g in shapes() if g.within(box(x0, y0, x0 + w, y0 + h))]
    assert len(geoms) >= 2
    result = client.measure_objects(
        "models/tiny", _objects(geoms), crop, x=x0, y=y0, margin=c, tile_size=32
    )
    # With real context the region's map is the whole image's there.
    heat = logit_heatmap(model, full, stride=1).numpy().astype(np.float64)
    _check(result, geoms, heat, 1.0, model.class_names)


def test_whole_image_and_server_slide_agree(env):
    """Every object on the whole image, streamed; and the same objects in level-0
    coordinates of the slide the server reads itself at downsample 2."""
    client, model, _ = env
    full = image()
    geoms = shapes()
    streamed = client.measure_objects("models/tiny", _objects(geoms), full, tile_size=40)
    heat = logit_heatmap(model, full, stride=1).numpy().astype(np.float64)
    _check(streamed, geoms, heat, 1.0, model.class_names)
    on_slide = client.measure_objects(
        "models/tiny", _objects(geoms, 2.0), slide_path="case.tif", downsample=2.0
    )
    np.testing.assert_allclose(on_slide.mean_logits, streamed.mean_logits, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(on_slide.pixels, streamed.pixels)


def test_thousands_of_objects_in_many_messages(env):
    client, model, _ = env
    full = image()
    rng = np.random.default_rng(7)
    centres = rng.uniform((2, 2), (148, 118), (3000, 2))
    geoms = [
        Point(x, y).buffer(r, quad_segs=4)
        for (x, y), r in zip(centres, rng.uniform(0.2, 4, 3000), strict=True)
    ]
    result = client.measure_objects(
        "models/tiny", _objects(geoms), full, objects_per_message=700, tile_size=64
    )
    heat = logit_heatmap(model, full, stride=1).numpy().astype(np.float64)
    assert len(result.ids) == 3000
    for k in rng.choice(3000, 40, replace=False):
        mean, _, pixels = expected(heat, geoms[k], 1.0)
        assert result.pixels[k] == pixels
        np.testing.assert_allclose(result.mean_logits[k], mean, rtol=1e-3, atol=1e-5)


def _raw(config, *messages):
    return [inference_service_pb2.MeasureObjectsRequest(config=config), *messages]


def _error(client, requests):
    with pytest.raises(grpc.RpcError) as info:
        list(client.inference.MeasureObjects(iter(requests), timeout=30))
    return info.value.code(), info.value.details()


def test_bad_input_is_named(env):
    client, _, _ = env
    Request = inference_service_pb2.MeasureObjectsRequest
    region = common_pb2.Region(x=0, y=0, width=20, height=20)
    config = inference_service_pb2.MeasureObjectsConfig(model="models/tiny", region=region)
    circle = json.dumps(mapping(Point(5, 5).buffer(2)))
    obj = inference_service_pb2.MeasureObject
    tile = common_pb2.Tile(
        encoding=common_pb2.Tile.RAW_RGB8, data=bytes(20 * 20 * 3), width=20, height=20
    )
    cases = [
        (_raw(config), INVALID, "no objects were sent"),
        (_raw(config, Request(objects=[obj(id="a", geometry=circle), obj(id="a", geometry=circle)])),
         INVALID, "objects[1].id 'a' was already used"),
        (_raw(config, Request(objects=[obj(id="p", geometry='{"type": "Point", "coordinates": [1, 2]}')])),
         INVALID, "objects[0].geometry must be a GeoJSON Polygon or MultiPolygon, got 'Point'"),
        (_raw(config, Request(objects=[obj(id="j", geometry="{not json")])),
         INVALID, "objects[0].geometry is not JSON text"),
        (_raw(config, Request(objects=[obj(geometry=circle)])), INVALID, "objects[0].id is required"),
        (_raw(config, Request(objects=[obj(id="a", geometry=circle)], tiles=[tile]),
              Request(objects=[obj(id="b", geometry=circle)])),
         INVALID, "objects must all come before the first tile"),
        ([Request(objects=[obj(id="a", geometry=circle)])], INVALID, "config is required"),
    ]  # fmt: skip
    for requests, code, text in cases:
        got, details = _error(client, requests)
        assert got == code and text in details, (text, got, details)
    slide = inference_service_pb2.MeasureObjectsConfig(
        model="models/tiny", region=region, slide_path="../outside.tif"
    )
    got, details = _error(client, _raw(slide, Request(objects=[obj(id="a", geometry=circle)])))
    assert got == INVALID and "config.slide_path" in details and "outside" in details
    slide.slide_path = "case.tif"
    got, details = _error(
        client, _raw(slide, Request(objects=[obj(id="a", geometry=circle)], tiles=[tile]))
    )
    assert got == INVALID and "tiles were sent with config.slide_path" in details
    many = [obj(id=str(k), geometry=circle) for k in range(20_001)]
    got, details = _error(client, _raw(config, Request(objects=many)))
    assert got == grpc.StatusCode.RESOURCE_EXHAUSTED and "at most 20,000 objects" in details
    assert client.health() == "SERVING"


def test_client_command_equals_the_local_command(env, tmp_path):
    """``milsil client measure-objects`` (server) and ``milsil measure-objects`` (local)
    write the same measurements into the same features, for streamed pixels and for the
    server's slide."""
    from PIL import Image

    from milsil.cli import main
    from milsil.models import save_checkpoint

    client, model, _ = env
    Image.fromarray(image()).save(tmp_path / "image.png")
    save_checkpoint(model, tmp_path / "tiny.pt")
    features = [
        {"type": "Feature", "id": f"id-{k}", "geometry": mapping(g), "properties": {}}
        for k, g in enumerate(shapes())
    ]
    (tmp_path / "in.geojson").write_text(json.dumps(features))
    common = ["--objects", str(tmp_path / "in.geojson")]
    assert main(["measure-objects", str(tmp_path / "image.png"), "--model", str(tmp_path / "tiny.pt"),
                 *common, "-o", str(tmp_path / "local.geojson")]) == 0  # fmt: skip
    server = ["client", "--server", client.address, "measure-objects", "models/tiny"]
    assert (
        main([*server, str(tmp_path / "image.png"), *common, "-o", str(tmp_path / "srv.geojson")])
        == 0
    )
    local = json.loads((tmp_path / "local.geojson").read_text())
    remote = json.loads((tmp_path / "srv.geojson").read_text())
    assert [f["id"] for f in remote] == [f["id"] for f in local] == [f["id"] for f in features]
    for a, b in zip(local, remote, strict=True):
        ma, mb = a["properties"]["measurements"], b["properties"]["measurements"]
        assert ma.keys() == mb.keys() and len(ma) == 7
        for key in ma:
            assert mb[key] == pytest.approx(ma[key], rel=1e-4, abs=1e-5), key
    scaled = [
        {**f, "geometry": mapping(affinity.scale(g, 2, 2, origin=(0, 0)))}
        for f, g in zip(features, shapes(), strict=True)
    ]
    (tmp_path / "scaled.geojson").write_text(
        json.dumps({"type": "FeatureCollection", "features": scaled})
    )
    assert main([*server, "--slide", "case.tif", "--downsample", "2", "--objects",
                 str(tmp_path / "scaled.geojson"), "-o", str(tmp_path / "slide.geojson")]) == 0  # fmt: skip
    on_slide = json.loads((tmp_path / "slide.geojson").read_text())["features"]
    for a, b in zip(local, on_slide, strict=True):
        ma, mb = a["properties"]["measurements"], b["properties"]["measurements"]
        assert mb["milsil pixels"] == ma["milsil pixels"]
        assert mb["milsil p(malignant)"] == pytest.approx(
            ma["milsil p(malignant)"], rel=1e-4, abs=1e-6
        )
