"""Outline settings in µm reach the same outlines from every face of milsil (issue 22).

One set of settings in µm² / µm (minimum object and hole areas, smoothing, a simplification)
on a calibrated image (0.5 µm per pixel) gives the same outlines from ``milsil
annotate-slide`` on a pyramidal TIFF (the slide's own pixel size), from the server's
AnnotateSlide (the slide's pixel size, or the request's on an uncalibrated copy), from its
Annotate with ``pixel_size_um``, and from heatmap_to_annotations.groovy against the QuPath
stand-ins (QuPath's pixel calibration). On an uncalibrated image the same numbers are
pixels, and every face says so.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import shapely
from PIL import Image
from qupath_support import SCRIPTS, groovy_env, image_state, polygon, runner_results, start_runner
from server_support import register_tiny_model, running_server
from shapely.geometry import shape

from milsil.cli import main
from milsil.client import MilsilClient
from milsil.models import save_checkpoint
from milsil.wsi.reader import open_slide
from milsil.wsi.synthetic import synthetic_slide

MPP = 0.5  # µm per level-0 pixel of the calibrated images
STRIDE = 4
# The settings in µm² / µm, and the same outlines' settings in level-0 px² / px at MPP.
MICRONS = {"min_area": 100.0, "min_hole_area": 10.0, "smooth_sigma": 1.0, "simplify": 0.25}
PIXELS = {"min_area": 400.0, "min_hole_area": 40.0, "smooth_sigma": 2.0, "simplify": 0.25}
# What MICRONS' numbers mean as pixels, in µm at MPP (the uncalibrated fallback, calibrated).
AS_PIXELS_IN_MICRONS = {
    "min_area": 25.0,
    "min_hole_area": 2.5,
    "smooth_sigma": 0.5,
    "simplify": 0.25,
}
FLAGS = ["--min-area", "100", "--min-hole-area", "10", "--smooth-sigma", "1", "--simplify", "0.25"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    base = tmp_path_factory.mktemp("units")
    root = base / "root"
    root.mkdir()
    # The same pixels with and without a pixel size in the TIFF.
    synthetic_slide(root / "cal.tif", 320, 240, block=80, malignant_blocks=0.5, seed=3, mpp=MPP)
    synthetic_slide(root / "uncal.tif", 320, 240, block=80, malignant_blocks=0.5, seed=3, mpp=None)
    with open_slide(root / "cal.tif") as slide:
        assert slide.mpp and slide.mpp[0] == pytest.approx(MPP)
        pixels = slide.read(0, 0, 320, 240)
    with open_slide(root / "uncal.tif") as slide:
        assert not slide.mpp
    with running_server(base / "server", slide_roots=(root,)) as server:
        model = register_tiny_model(server, "tiny")
        save_checkpoint(model, base / "tiny.pt", provenance={"config": {"patch_size": 32}})
        client = MilsilClient(f"127.0.0.1:{server.port}", timeout=300)
        heat = client.heatmap("models/tiny", pixels, stride=STRIDE, probabilities=True)
        threshold = float(np.median(heat.probabilities[1]))
        yield {
            "base": base,
            "root": root,
            "server": server,
            "client": client,
            "pixels": pixels,
            "threshold": threshold,
            "checkpoint": base / "tiny.pt",
        }
        client.close()


def _outlines(collection: dict) -> list[tuple[shapely.Geometry, float]]:
    """Each feature's geometry and area, in the collection's order (ids differ per call)."""
    return [
        (shape(f["geometry"]), f["properties"]["measurements"]["area"])
        for f in collection["features"]
    ]


def _same(a: list, b: list) -> None:
    assert len(a) == len(b) > 0
    for (ga, area_a), (gb, area_b) in zip(a, b, strict=True):
        assert ga.symmetric_difference(gb).area < 1e-6
        assert area_a == pytest.approx(area_b)


def _differ(a: list, b: list) -> bool:
    return len(a) != len(b) or any(
        ga.symmetric_difference(gb).area > 1e-6 for (ga, _), (gb, _) in zip(a, b, strict=True)
    )


def _cli(env, slide: str, out: str, capsys) -> tuple[dict, str]:
    argv = ["annotate-slide", str(env["root"] / slide), "--model", str(env["checkpoint"])]
    argv += ["-o", str(env["base"] / out), "--stride", str(STRIDE), "--tile", "64"]
    argv += ["--threshold", repr(env["threshold"]), "--all-tiles", *FLAGS]
    assert main(argv) == 0
    return json.loads((env["base"] / out).read_text()), capsys.readouterr().out


def _slide(env, path: str, outline: dict, pixel_size_um: float = 0.0) -> dict:
    collection, _ = env["client"].annotate_slide(
        "models/tiny",
        path,
        stride=STRIDE,
        tile_size=64,
        tissue_only=False,
        threshold=env["threshold"],
        outline=outline,
        pixel_size_um=pixel_size_um,
    )
    return collection


def _region(env, outline: dict, pixel_size_um: float = 0.0) -> dict:
    collection, _ = env["client"].annotate(
        "models/tiny",
        env["pixels"],
        stride=STRIDE,
        threshold=env["threshold"],
        outline=outline,
        pixel_size_um=pixel_size_um,
    )
    return collection


def test_microns_from_the_cli_and_annotate_slide_on_a_calibrated_tiff(env, capsys):
    cli, printed = _cli(env, "cal.tif", "cli_cal.geojson", capsys)
    assert "in µm (0.5 µm/px)" in printed
    assert cli["outline_settings"]["units"] == "um"
    assert cli["outline_settings"]["pixel_size_um"] == MPP
    # AnnotateSlide: the slide's pixel size; on the uncalibrated copy, the request's.
    from_slide = _slide(env, "cal.tif", MICRONS)
    from_request = _slide(env, "uncal.tif", MICRONS, pixel_size_um=MPP)
    for collection in (from_slide, from_request):
        assert collection["outline_settings"]["units"] == "um"
        _same(_outlines(collection), _outlines(cli))
    # The conversion matters: the same numbers as pixels give other outlines.
    assert _differ(_outlines(_slide(env, "uncal.tif", MICRONS)), _outlines(cli))


def test_an_uncalibrated_tiff_falls_back_to_pixels_and_says_so(env, capsys):
    cli, printed = _cli(env, "uncal.tif", "cli_uncal.geojson", capsys)
    assert "in pixels (no pixel size: fell back to pixels)" in printed
    assert (cli["outline_settings"]["units"], cli["outline_settings"]["pixel_size_um"]) == (
        "px",
        None,
    )
    server = _slide(env, "uncal.tif", MICRONS)
    assert server["outline_settings"]["units"] == "px"
    _same(_outlines(server), _outlines(cli))
    # The numbers were taken as pixels: what they are in µm on the calibrated copy.
    _same(_outlines(_slide(env, "cal.tif", AS_PIXELS_IN_MICRONS)), _outlines(cli))


def test_annotate_takes_microns_with_pixel_size_um(env):
    microns = _region(env, MICRONS, pixel_size_um=MPP)
    pixels = _region(env, PIXELS)
    assert microns["outline_settings"]["units"] == "um"
    assert pixels["outline_settings"]["units"] == "px"
    _same(_outlines(microns), _outlines(pixels))
    assert _differ(_outlines(_region(env, MICRONS)), _outlines(microns))


def test_bad_outline_settings_name_their_request_field(env):
    import grpc

    cases = [
        (lambda: _region(env, {"min_area": float("nan")}), "config.outline.min_area"),
        (lambda: _region(env, {"simplify": 1.5}), "config.outline.simplify"),
        (lambda: _region(env, {}, pixel_size_um=-1.0), "config.pixel_size_um"),
        (lambda: _slide(env, "cal.tif", {"smooth_sigma": 1e6}), "config.outline.smooth_sigma"),
        (lambda: _slide(env, "cal.tif", {}, pixel_size_um=2000.0), "config.pixel_size_um"),
    ]
    for call, field in cases:
        with pytest.raises(grpc.RpcError) as info:
            call()
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert info.value.details().startswith(field + " must be"), info.value.details()


# ------------------------------------------------------------------ the QuPath script


@pytest.fixture(scope="module")
def scripted(env):
    """heatmap_to_annotations.groovy on the whole image, calibrated (the stand-in's pixel
    calibration, 0.5 µm) and uncalibrated (NaN, as QuPath answers), with MICRONS' settings;
    under QuPath's Groovy 4 when it is there, else Debian's 2.4."""
    runtime = groovy_env.available("groovy4")
    if isinstance(runtime, str):
        runtime = groovy_env.available("groovy2.4")
    if isinstance(runtime, str):
        groovy_env.missing(runtime)
    base = env["base"] / "qupath"
    stubs = groovy_env.compile_stubs(base / "stub_classes")
    for name in ("calibrated.png", "uncalibrated.png"):  # the image's name is its file's
        Image.fromarray(env["pixels"]).save(base / name)
    settings = {
        "milsil.server": f"127.0.0.1:{env['server'].port}",
        "milsil.model": "tiny",
        "milsil.timeoutSeconds": "60",
        "milsil.stride": str(STRIDE),
        "milsil.threshold": repr(env["threshold"]),
        "milsil.tileSize": "64",
        "milsil.minAreaMicrons": "100",
        "milsil.minHoleAreaMicrons": "10",
        "milsil.smoothSigmaMicrons": "1",
        "milsil.simplify": "0.25",
    }
    script = str(SCRIPTS / "heatmap_to_annotations.groovy")
    spec = {
        "out": str(base / "out"),
        "images": [
            {"name": "calibrated.png", "path": str(base / "calibrated.png"), "pixel_size_um": MPP},
            {
                "name": "uncalibrated.png",
                "path": str(base / "uncalibrated.png"),
                "pixel_size_um": None,
            },
        ],
        "runs": [
            {"id": "calibrated", "script": script, "properties": settings, "image": 0},
            {"id": "uncalibrated", "script": script, "properties": settings, "image": 1},
        ],
    }
    proc = start_runner(runtime, spec, base / "out", stubs)
    return runner_results(proc, base / "out", spec, timeout=300)


def _script_outlines(results: dict, run: str, image: str) -> list:
    objects = image_state(results["states"][run], image)["objects"]
    return sorted(
        ((polygon(o), o["measurements"]["area"]) for o in objects if o["type"] == "annotation"),
        key=lambda g: (g[0].bounds[1], g[0].bounds[0]),
    )


def _sorted(outlines: list) -> list:
    return sorted(outlines, key=lambda g: (g[0].bounds[1], g[0].bounds[0]))


def test_the_script_sends_microns_with_qupaths_calibration(env, scripted):
    log = scripted["logs"]["calibrated"]
    assert re.search(r"^milsil: calibrated\.png: whole image: \d+ malignant region", log, re.M), log
    assert "no pixel calibration" not in log
    assert "fast mode" not in log  # an exact server: no line about its arithmetic
    expected = _region(env, MICRONS, pixel_size_um=MPP)
    _same(_script_outlines(scripted, "calibrated", "calibrated.png"), _sorted(_outlines(expected)))


def test_the_script_falls_back_to_pixels_without_calibration_and_says_so(env, scripted):
    log = scripted["logs"]["uncalibrated"]
    assert (
        "milsil: uncalibrated.png: the image has no pixel calibration: the outline settings "
        "(minAreaMicrons, minHoleAreaMicrons, smoothSigmaMicrons, mergeDistanceMicrons) are "
        "taken as pixels"
    ) in log, log
    expected = _region(env, MICRONS)  # no pixel size: the numbers are pixels
    assert expected["outline_settings"]["units"] == "px"
    got = _script_outlines(scripted, "uncalibrated", "uncalibrated.png")
    _same(got, _sorted(_outlines(expected)))
    assert _differ(got, _script_outlines(scripted, "calibrated", "calibrated.png"))
