"""AnnotateSlide and SlideHeatmap: slides the server reads itself, under --slide-root.

A real server on a loopback port reads a small synthetic pyramidal TIFF; its answers must
equal milsil.wsi called directly. Paths outside the root, missing, corrupt and
folder paths are refused with the right code; a cancelled call resumes.
"""

from __future__ import annotations

import json
import os
import time

import grpc
import numpy as np
import pytest
from server_support import RAW_OUTLINES, register_tiny_model, running_server

from milsil.client import MilsilClient
from milsil.errors import MilsilError
from milsil.inference.heatmap import logit_heatmap
from milsil.v1 import inference_service_pb2
from milsil.wsi import annotate as wsi_annotate
from milsil.wsi.annotate import annotate_slide
from milsil.wsi.geojson import qupath_problems
from milsil.wsi.heatmap import slide_heatmap
from milsil.wsi.reader import open_slide
from milsil.wsi.settings import SlideSettings
from milsil.wsi.synthetic import synthetic_slide

INVALID = grpc.StatusCode.INVALID_ARGUMENT
SETTINGS = {"stride": 8, "tile_size": 64}  # 480x360 slide: an 8x6 tile grid, corners glass


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    base = tmp_path_factory.mktemp("slides")
    root = base / "root"
    (root / "sub").mkdir(parents=True)
    slide, _ = synthetic_slide(root / "a.tif", 480, 360, block=120, malignant_blocks=0.4, seed=3)
    data = slide.read_bytes()
    (root / "corrupt.tif").write_bytes(data[: len(data) // 3])  # truncated pyramid
    (root / "sub" / "junk.svs").write_bytes(b"not a slide at all\n" * 50)
    (base / "outside").mkdir()
    (base / "outside" / "secret.tif").write_bytes(data)
    os.symlink(base / "outside" / "secret.tif", root / "link.tif")
    with running_server(base / "data", slide_roots=(root,)) as server:
        model = register_tiny_model(server, "tiny")
        client = MilsilClient(f"127.0.0.1:{server.port}", timeout=120)
        yield {"server": server, "client": client, "model": model, "root": root, "base": base}
        client.close()


def _code(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details()


def _without_ids(collection: dict) -> list[dict]:
    features = json.loads(json.dumps(collection["features"]))
    for f in features:
        f.pop("id", None)
    return features


def _direct_heatmap(env, tmp_path, **kwargs):
    with open_slide(env["root"] / "a.tif") as s:
        heat, stopped = slide_heatmap(env["model"], s, tmp_path / "w", SlideSettings(**kwargs))
    assert not stopped
    return heat


def test_annotate_slide_streams_progress_then_geojson(env, tmp_path):
    client, server = env["client"], env["server"]
    direct_heat = _direct_heatmap(env, tmp_path, stride=8, tile=64)
    prob = direct_heat.probability_block(1, 0, direct_heat.rows, 0, direct_heat.cols)
    threshold = float(np.nanpercentile(prob, 60))  # several objects, not all tissue
    seen: list[inference_service_pb2.SlideProgress] = []
    collection, result = client.annotate_slide(
        "models/tiny", "a.tif", threshold=threshold, progress=seen.append, **SETTINGS
    )
    direct = annotate_slide(
        env["root"] / "a.tif",
        env["model"],
        None,
        SlideSettings(stride=8, tile=64, threshold=threshold),
    )
    assert qupath_problems(collection) == []
    assert result.object_count == len(collection["features"]) == direct.objects >= 1
    assert _without_ids(collection) == _without_ids(direct.collection)
    stages = [p.stage for p in seen]
    assert stages[:2] == ["queued", "tissue"] and stages[-1] == "polygons"
    tiles = [p for p in seen if p.stage == "heatmap"]
    assert [p.tiles_done for p in tiles] == list(range(1, direct.tiles_total + 1))
    assert all(p.tiles_total == direct.tiles_total for p in tiles)
    assert tiles[-1].tissue_megapixels > 0 and tiles[-1].eta_seconds == 0
    s = result.summary
    assert (s.model, s.path, s.class_name) == ("models/tiny", "a.tif", "malignant")
    assert s.tiles_total == direct.tiles_total and 0 < s.tiles_total < 48  # tissue only
    assert s.tiles_resumed == 0 and s.stride == 8 and s.downsample == 1.0
    assert s.tissue_megapixels == pytest.approx(direct.tissue_megapixels)
    assert {"read", "compute", "polygons"} <= set(s.timings) and not s.tiff_path
    assert not any((server.store.root / "slide-work").iterdir())  # cleaned after success


def test_slide_heatmap_equals_library(env, tmp_path):
    client = env["client"]
    direct = _direct_heatmap(env, tmp_path, stride=4, tile=64).to_array()
    heat, summary = client.slide_heatmap(
        "models/tiny", "a.tif", stride=4, tile_size=64, probabilities=True, block_size=16
    )
    assert heat.logits.shape == direct.shape == (2, 90, 120)
    assert np.array_equal(np.isnan(heat.logits), np.isnan(direct))  # glass: NaN
    assert 0 < np.isfinite(direct[0]).mean() < 1
    np.testing.assert_allclose(heat.logits, direct, atol=1e-5, equal_nan=True)
    probs = np.exp(direct) / np.exp(direct).sum(axis=0)
    np.testing.assert_allclose(heat.probabilities, probs, atol=1e-6, equal_nan=True)
    h = heat.header
    assert (h.rows, h.cols, h.stride, h.step, h.origin_x) == (90, 120, 4, 4.0, 0.5)
    assert summary.tiles_total > 0 and summary.tiles_resumed == 0
    # float16 and all tiles: the whole map, equal to logit_heatmap of the whole image
    heat16, _ = client.slide_heatmap(
        "models/tiny", "a.tif", stride=8, tissue_only=False, value_type="float16"
    )
    with open_slide(env["root"] / "a.tif") as s:
        whole = logit_heatmap(env["model"], s.read(0, 0, 480, 360), stride=8).numpy()
    assert np.isfinite(heat16.logits).all()
    np.testing.assert_allclose(heat16.logits, whole, atol=2e-3 + 1e-3 * np.abs(whole).max())


def test_probability_tiff_under_output_root(env):
    import openslide

    client, server = env["client"], env["server"]
    out = server.store.root / "outputs"
    _, result = client.annotate_slide("models/tiny", "a.tif", write_tiff=True, **SETTINGS)
    assert result.summary.tiff_path == "a.tif.tiny.s8-ds1.tif"
    with openslide.OpenSlide(str(out / result.summary.tiff_path)) as o:
        assert o.dimensions == (60, 45)
        assert float(o.properties["openslide.mpp-x"]) == pytest.approx(0.5 * 8)
    _, summary = client.slide_heatmap(
        "models/tiny", "a.tif", tiff_path="maps/a.tiff", values=False, **SETTINGS
    )
    assert summary.tiff_path == "maps/a.tiff" and (out / "maps" / "a.tiff").is_file()
    for bad in ("../escape.tif", "/tmp/abs.tif", "maps/a.png"):
        code, details = _code(
            lambda bad=bad: client.annotate_slide("models/tiny", "a.tif", tiff_path=bad)
        )
        assert code == INVALID and "tiff_path" in details


def test_cancelled_call_resumes(env, monkeypatch):
    client = env["client"]
    original = wsi_annotate.slide_heatmap  # what annotate_slide calls

    def slow(*args, progress=None, **kwargs):  # 0.2 s per tile: time to cancel mid-slide
        def tick(p):
            progress(p)
            time.sleep(0.2)

        return original(*args, progress=tick, **kwargs)

    monkeypatch.setattr(wsi_annotate, "slide_heatmap", slow)
    request = inference_service_pb2.AnnotateSlideRequest(
        config=inference_service_pb2.SlideConfig(
            model="models/tiny", path="a.tif", stride=8, tile_size=64
        )
    )
    call = client.inference.AnnotateSlide(request, timeout=60)
    for response in call:
        if response.progress.stage == "heatmap" and response.progress.tiles_done >= 2:
            call.cancel()
            break
    monkeypatch.setattr(wsi_annotate, "slide_heatmap", original)
    seen = []
    collection, result = client.annotate_slide(
        "models/tiny", "a.tif", progress=seen.append, **SETTINGS
    )
    s = result.summary
    assert 2 <= s.tiles_resumed < s.tiles_total
    assert len([p for p in seen if p.stage == "heatmap"]) == s.tiles_total - s.tiles_resumed
    direct = annotate_slide(
        env["root"] / "a.tif", env["model"], None, SlideSettings(stride=8, tile=64)
    )
    assert _without_ids(collection) == _without_ids(direct.collection)


@pytest.mark.parametrize(
    "path, code, words",
    [
        ("../outside/secret.tif", INVALID, "outside"),
        ("ABSOLUTE", INVALID, "outside"),
        ("link.tif", INVALID, "outside"),  # a symbolic link leading out of the root
        ("../missing.tif", INVALID, "outside"),  # no existence oracle outside the root
        ("missing.tif", grpc.StatusCode.NOT_FOUND, "not found"),
        ("corrupt.tif", INVALID, "corrupt.tif"),
        ("sub/junk.svs", INVALID, "junk.svs"),
        ("sub", INVALID, "folder"),
        ("", INVALID, "path is required"),
    ],
)
def test_bad_slide_paths_are_refused(env, path, code, words):
    client = env["client"]
    if path == "ABSOLUTE":
        path = str(env["base"] / "outside" / "secret.tif")
    got, details = _code(lambda: client.annotate_slide("models/tiny", path, **SETTINGS))
    assert got == code and words in details and "\n" not in details
    got, _ = _code(lambda: client.slide_heatmap("models/tiny", path, **SETTINGS))
    assert got == code


def test_bad_settings_and_server_still_serves(env):
    client = env["client"]
    for kwargs, field in (
        ({"stride": 99}, "stride"),
        ({"downsample": 0.5}, "downsample"),
        ({"tile_size": 4}, "tile_size"),
        ({"class_name": "nope"}, "class_name"),
        ({"threshold": 1.5}, "threshold"),
    ):
        got, details = _code(
            lambda kwargs=kwargs: client.annotate_slide("models/tiny", "a.tif", **kwargs)
        )
        assert got == INVALID and field in details
    got, _ = _code(lambda: client.annotate_slide("models/none", "a.tif"))
    assert got == grpc.StatusCode.NOT_FOUND
    assert client.health() == "SERVING"
    collection, _ = client.annotate_slide("models/tiny", "a.tif", threshold=0.0, **SETTINGS)
    assert qupath_problems(collection) == [] and collection["features"]


def test_without_slide_root_failed_precondition(tmp_path):
    with running_server(tmp_path / "data") as server:
        register_tiny_model(server, "tiny")
        with MilsilClient(f"127.0.0.1:{server.port}", timeout=30) as client:
            for call in (client.annotate_slide, client.slide_heatmap):
                got, details = _code(lambda call=call: call("models/tiny", "a.tif"))
                assert got == grpc.StatusCode.FAILED_PRECONDITION and "--slide-root" in details
            assert client.health() == "SERVING"


def test_client_cli_annotate_slide(env, tmp_path, capsys):
    from milsil.cli import main

    out = tmp_path / "a.geojson"
    argv = ["client", "--server", f"127.0.0.1:{env['server'].port}", "annotate-slide", "a.tif"]
    argv += ["--model", "models/tiny", "-o", str(out), "--tile-size", "64", "--threshold", "0"]
    assert main(argv) == 0
    assert qupath_problems(json.loads(out.read_text())) == []
    assert "annotations from" in capsys.readouterr().out
    assert main([*argv[:4], "../outside/secret.tif", *argv[5:]]) == 1
    assert "INVALID_ARGUMENT" in capsys.readouterr().err


def test_serve_slide_root_flag(tmp_path):
    import argparse

    from milsil_server.cli import register_cli

    parser = argparse.ArgumentParser()
    register_cli(parser.add_subparsers())
    args = parser.parse_args(["serve", "--slide-root", "/a", "--slide-root", "/b"])
    assert [str(p) for p in args.slide_roots] == ["/a", "/b"] and args.output_root is None
    from milsil_server.app import ServerConfig, build_server

    with pytest.raises(MilsilError, match="slide-root"):
        build_server(
            ServerConfig(port=0, data_dir=tmp_path, device="cpu", slide_roots=(tmp_path / "no",))
        )


def test_annotate_slide_in_a_region_of_interest_equals_streaming_its_pixels(env):
    """SlideConfig.roi: only tiles that intersect it are computed, the outlines are clipped
    to it, and they cover what Annotate finds in the same pixels streamed by a client
    (clipped to the same polygon): the server reading the slide is the same computation."""
    import shapely
    from shapely.geometry import Polygon, shape

    client = env["client"]
    roi = Polygon([(64, 48), (300, 64), (280, 250), (72, 230)])  # bounds on the stride grid
    x0, y0, x1, y1 = (int(v) for v in roi.bounds)
    with open_slide(env["root"] / "a.tif") as slide:
        pixels = slide.read(x0 - 4, y0 - 4, x1 - x0 + 8, y1 - y0 + 8)  # + the model's context
    streamed_heat = client.heatmap(
        "models/tiny", pixels, x=x0, y=y0, margin=4, stride=8, probabilities=True
    )
    threshold = float(np.median(streamed_heat.probabilities[1]))
    progress = []
    collection, result = client.annotate_slide(
        "models/tiny",
        "a.tif",
        stride=8,
        tile_size=64,
        tissue_only=False,
        threshold=threshold,
        roi=shapely.geometry.mapping(roi),
        progress=progress.append,
        outline=RAW_OUTLINES,  # clipping before simplifying and min area: compare raw outlines
    )
    grid = [(c, r) for r in range(0, 360, 64) for c in range(0, 480, 64)]
    touching = sum(roi.intersects(shapely.box(c, r, c + 64, r + 64)) for c, r in grid)
    assert result.summary.tiles_total == touching < len(grid)
    assert qupath_problems(collection) == []
    from_slide = shapely.union_all([shape(f["geometry"]) for f in collection["features"]])
    assert from_slide.difference(roi).area < 0.01 * roi.length  # 0.01 px snapping (QuPath)
    fc, _ = client.annotate(
        "models/tiny",
        pixels,
        x=x0,
        y=y0,
        margin=4,
        stride=8,
        threshold=threshold,
        outline=RAW_OUTLINES,
    )
    streamed = shapely.union_all([shape(f["geometry"]) for f in fc["features"]]).intersection(roi)
    assert from_slide.area > 0.1 * roi.area
    assert from_slide.symmetric_difference(streamed).area < 1e-3 * from_slide.area
    # A region of interest that is not a polygon is refused, naming the field.
    code, details = _code(
        lambda: client.annotate_slide(
            "models/tiny", "a.tif", roi={"type": "Point", "coordinates": [1, 2]}
        )
    )
    assert code == INVALID and "config.roi" in details
