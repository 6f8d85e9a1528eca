"""Whole slides: opening (real vendor files, corrupt ones), tissue, tiles, contours, patch
sampling, seamless whole-slide heatmaps, resumption, GeoJSON and the probability TIFF."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import randomize_batchnorm

from milsil.errors import MilsilError, NotFoundError
from milsil.inference.heatmap import logit_heatmap
from milsil.models import create_model, save_checkpoint
from milsil.wsi.annotate import annotate_slide
from milsil.wsi.contours import rasterize, read_contours, sample_patches, write_asap_xml
from milsil.wsi.geojson import heatmap_to_geojson, qupath_problems
from milsil.wsi.heatmap import default_work_dir, slide_heatmap
from milsil.wsi.polygons import heatmap_polygons
from milsil.wsi.reader import open_slide
from milsil.wsi.settings import SlideSettings
from milsil.wsi.synthetic import synthetic_slide
from milsil.wsi.tissue import iter_tiles, tile_grid, tissue_mask
from milsil_server.paths import resolve_under_root

VENDOR = Path(__file__).parent / "data" / "openslide"
CLI_MODULES = ("milsil.cli.slides", "milsil.cli.reproduce")


def run_cli(argv: list[str], monkeypatch) -> int:
    """``milsil ...`` with this scope's command modules registered."""
    from milsil import cli

    monkeypatch.setattr(
        cli, "COMMAND_MODULES", tuple(dict.fromkeys(cli.COMMAND_MODULES + CLI_MODULES))
    )
    return cli.main(argv)


def tiny_model(seed: int = 0):
    torch.manual_seed(seed)
    model = create_model("bagnet9", 2, width=8, class_names=["benign", "malignant"])
    return randomize_batchnorm(model, seed)


@pytest.fixture(scope="module")
def slide_file(tmp_path_factory) -> tuple[Path, list]:
    """A 640x480 synthetic pyramidal TIFF (tissue ellipse on glass) and its tumour rings."""
    path = tmp_path_factory.mktemp("slide") / "synthetic.tif"
    return synthetic_slide(path, 640, 480, block=160, malignant_blocks=0.4, seed=3)


@pytest.fixture(scope="module")
def small_slide(tmp_path_factory) -> Path:
    """A 200x150 slide for exactness checks at stride 1."""
    path = tmp_path_factory.mktemp("small") / "small.tif"
    return synthetic_slide(path, 200, 150, block=100, seed=5)[0]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    save_checkpoint(tiny_model(), path)
    return path


# ------------------------------------------------------------------ opening


def test_synthetic_slide_is_a_generic_tiff_pyramid(slide_file):
    path, rings = slide_file
    with open_slide(path) as s:
        assert s.format == "generic-tiff"
        assert s.dimensions == (640, 480)
        assert s.level_count >= 2 and s.level_downsamples[1] == pytest.approx(2.0)
        assert s.mpp == pytest.approx((0.5, 0.5))
        assert s.read(0, 0, 64, 32).shape == (32, 64, 3)
        # outside the slide is glass (white)
        assert (s.read(630, 470, 20, 20)[15:, 15:] == 255).all()
        # a downsample between levels is resampled to the asked size
        assert s.read(0, 0, 100, 50, downsample=3.0).shape == (50, 100, 3)
    assert rings, "the fixture slide must hold tumour"


@pytest.mark.parametrize(
    "name,fmt,size",
    [
        ("small.svs", "aperio", (16, 16)),
        ("boxes_0.dcm", "dicom", (16, 16)),
        ("boxes.tiff", "generic-tiff", (300, 250)),
    ],
)
def test_vendor_files_open(name, fmt, size):
    with open_slide(VENDOR / name) as s:
        assert s.format == fmt and s.dimensions == size
        assert s.read(0, 0, *size).shape == (size[1], size[0], 3)


@pytest.mark.parametrize("name", ["unreadable.svs", "unopenable.tiff"])
def test_corrupt_vendor_files_raise_one_line(name):
    with pytest.raises(MilsilError) as info:
        open_slide(VENDOR / name)
    assert "\n" not in str(info.value) and name in str(info.value)


def test_unsupported_and_missing_files(tmp_path):
    bogus = tmp_path / "notes.svs"
    bogus.write_text("not a slide")
    with pytest.raises(MilsilError, match="not a slide format"):
        open_slide(bogus)
    with pytest.raises(NotFoundError):
        open_slide(tmp_path / "missing.svs")
    with pytest.raises(MilsilError, match="folder"):
        open_slide(tmp_path)


def test_resolve_under_root_refuses_escapes(tmp_path):
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "a.svs").write_text("x")
    (tmp_path / "secret.svs").write_text("x")
    assert resolve_under_root(tmp_path / "root", "a.svs") == (tmp_path / "root" / "a.svs").resolve()
    for bad in ("../secret.svs", str(tmp_path / "secret.svs")):
        with pytest.raises(MilsilError, match="outside"):
            resolve_under_root(tmp_path / "root", bad)


# ------------------------------------------------------------------ tissue and tiles


def test_tissue_mask_finds_the_ellipse(slide_file):
    with open_slide(slide_file[0]) as s:
        tissue = tissue_mask(s)
        expected = np.pi * 0.42 * 0.40  # the synthetic tissue ellipse's area fraction
        assert tissue.mask.mean() == pytest.approx(expected, abs=0.03)
        assert tissue.fraction(300, 220, 40, 40) == 1.0  # centre
        assert tissue.fraction(0, 0, 40, 40) == 0.0  # corner is glass
        every = tile_grid(s, 128)
        on_tissue = tile_grid(s, 128, tissue=tissue)
        assert len(every) == 20 and 0 < len(on_tissue) < len(every)
        got = list(iter_tiles(s, 128, downsample=2.0, tissue=tissue))
        assert got and all(rgb.shape == (t.height, t.width, 3) for t, rgb in got)
        assert all(t.x == t.px * 2 for t, _ in got)


def test_tile_arguments_are_checked(slide_file):
    with open_slide(slide_file[0]) as s:
        with pytest.raises(MilsilError, match="downsample"):
            tile_grid(s, 128, downsample=0.5)
        with pytest.raises(MilsilError, match="tile size"):
            tile_grid(s, 0)


# ------------------------------------------------------------------ contours and patches


def test_asap_xml_and_geojson_contours(slide_file, tmp_path):
    from shapely.geometry import Polygon

    _, rings = slide_file
    xml = tmp_path / "tumor_001.xml"
    write_asap_xml(xml, rings)
    geom = read_contours(xml)
    expected = sum(Polygon(r).area for r in rings)
    assert geom.area == pytest.approx(expected, rel=1e-6)
    # an exclusion group (_2) is subtracted
    hole = [(300, 200), (340, 200), (340, 240), (300, 240)]
    write_asap_xml(tmp_path / "excl.xml", [hole], group="_2")
    text = (tmp_path / "excl.xml").read_text()
    both = xml.read_text().replace(
        "</Annotations>",
        text.split("<Annotations>")[1].split("</Annotations>")[0] + "</Annotations>",
    )
    (tmp_path / "both.xml").write_text(both)
    inter = Polygon(hole).intersection(geom).area
    assert read_contours(tmp_path / "both.xml").area == pytest.approx(expected - inter, rel=1e-6)
    # QuPath GeoJSON with the same polygons
    from milsil.wsi.geojson import make_feature

    features = [dict(make_feature(Polygon(r), "Tumor", [200, 0, 0], {})) for r in rings]
    gj = tmp_path / "tumor_001.geojson"
    gj.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    assert read_contours(gj).area == pytest.approx(expected, rel=1e-3)
    bad = tmp_path / "bad.xml"
    bad.write_text("<nope/>")
    with pytest.raises(MilsilError, match="ASAP"):
        read_contours(bad)


def test_sample_patches_label_by_overlap(slide_file):
    from shapely.geometry import Polygon, box

    path, rings = slide_file
    from shapely.ops import unary_union

    tumour = unary_union([Polygon(r) for r in rings])
    with open_slide(path) as s:
        patches = sample_patches(s, tumour, size=100, max_patches=None, min_tissue=0.5)
        assert patches
        for p in patches:
            overlap = tumour.intersection(box(p.x, p.y, p.x + 100, p.y + 100)).area
            assert p.label == int(overlap > 0)
            assert p.tissue >= 0.5
        assert {p.label for p in patches} == {0, 1}
        few = sample_patches(s, tumour, size=100, max_patches=6, seed=1)
        assert len(few) == 6 and sum(p.label for p in few) == 3
        mask = rasterize(tumour, 0, 0, 640, 480)
        assert mask.sum() == pytest.approx(tumour.area, rel=0.02)


# ------------------------------------------------------------------ heatmaps


@pytest.mark.parametrize("stride", [1, 3, 8])
def test_stitched_heatmap_equals_whole_image_heatmap(small_slide, tmp_path, stride):
    model = tiny_model()
    with open_slide(small_slide) as s:
        heat, stopped = slide_heatmap(
            model, s, tmp_path / "w", SlideSettings(stride=stride, tile=72, tissue_only=False)
        )
        whole = logit_heatmap(model, s.read(0, 0, 200, 150), stride=stride).numpy()
    assert not stopped
    tiled = heat.to_array()
    assert tiled.shape == whole.shape
    np.testing.assert_allclose(tiled, whole, rtol=0, atol=1e-4)


def test_heatmap_resumes_and_restarts_on_change(small_slide, tmp_path):
    model = tiny_model()
    work = tmp_path / "w"
    settings = SlideSettings(stride=2, tile=64, tissue_only=False)
    with open_slide(small_slide) as s:
        calls = iter(range(100))
        heat, stopped = slide_heatmap(
            model, s, work, settings, should_stop=lambda: next(calls) >= 3
        )
        assert stopped and len(heat.done) == 3
        del heat
        seen = []
        heat, stopped = slide_heatmap(model, s, work, settings, progress=seen.append)
        assert not stopped and len(heat.done) == heat.tiles_total == 12
        assert len(seen) == 12 - 3  # only the missing tiles were computed
        whole = logit_heatmap(model, s.read(0, 0, 200, 150), stride=2).numpy()
        np.testing.assert_allclose(heat.to_array(), whole, atol=1e-4)
        # a torn last log line (crash mid-write) is ignored, not fatal
        with open(work / "tiles.done", "a") as f:
            f.write("0 ")
        heat, _ = slide_heatmap(model, s, work, settings)
        assert len(heat.done) == 12
        # another model: the old tiles must not be reused
        seen.clear()
        heat, _ = slide_heatmap(tiny_model(seed=1), s, work, settings, progress=seen.append)
        assert len(seen) == 12


def test_polygons_do_not_depend_on_blocks(small_slide, tmp_path):
    import shapely
    from shapely.geometry import shape

    model = tiny_model()
    with open_slide(small_slide) as s:
        heat, _ = slide_heatmap(
            model, s, tmp_path / "w", SlideSettings(stride=2, tile=64, tissue_only=False)
        )
    prob = heat.probability_block(1, 0, heat.rows, 0, heat.cols)
    threshold = float(np.percentile(prob, 70))  # many separate objects, some across blocks
    whole = heatmap_polygons(heat, 1, threshold, block=10_000)
    blocked = heatmap_polygons(heat, 1, threshold, block=7)
    ref, _ = heatmap_to_geojson(prob, threshold, stride=2, region_size=(200, 150))
    assert qupath_problems(whole) == [] and qupath_problems(blocked) == []
    assert len(whole["features"]) == len(blocked["features"]) == len(ref["features"]) > 3

    def union(fc):
        return shapely.union_all([shape(f["geometry"]) for f in fc["features"]])

    assert union(whole).symmetric_difference(union(ref)).area < 1e-3
    assert union(blocked).symmetric_difference(union(ref)).area < 1e-3
    by_area = sorted(f["properties"]["measurements"]["area"] for f in blocked["features"])
    assert by_area == pytest.approx(
        sorted(f["properties"]["measurements"]["area"] for f in ref["features"])
    )
    for f in blocked["features"]:
        m = f["properties"]["measurements"]
        assert threshold <= m["mean_probability"] <= m["max_probability"] <= 1.0


def test_annotate_slide_writes_geojson_and_tiff(slide_file, tmp_path):
    import openslide

    model = tiny_model()
    out = tmp_path / "out.geojson"
    settings = SlideSettings(stride=8, threshold=0.0, tile=64)
    res = annotate_slide(slide_file[0], model, out, settings, tiff=tmp_path / "prob.tif")
    data = json.loads(out.read_text())
    assert qupath_problems(data) == [] and res.objects == len(data["features"]) >= 1
    assert res.tiles_computed == res.tiles_total > 0 and not res.stopped
    assert not default_work_dir(out).exists()  # cleaned after success
    with openslide.OpenSlide(str(tmp_path / "prob.tif")) as o:
        assert o.dimensions == (80, 60)  # 640x480 at stride 8
        assert float(o.properties["openslide.mpp-x"]) == pytest.approx(0.5 * 8)
        # glass was never computed: probability 0 there
        assert np.asarray(o.read_region((0, 0), 0, (4, 4)))[..., 0].max() == 0


@pytest.mark.parametrize("name", ["small.svs", "boxes_0.dcm", "boxes.tiff"])
def test_annotate_slide_cli_on_vendor_files(name, checkpoint, tmp_path, monkeypatch):
    out = tmp_path / "o.geojson"
    argv = ["annotate-slide", str(VENDOR / name), "--model", str(checkpoint), "-o", str(out)]
    # --min-area 0: small.svs is 16 x 16 px (64 µm²), below the default minimum object area
    flags = ["--stride", "4", "--threshold", "0", "--all-tiles", "--min-area", "0"]
    assert run_cli(argv + flags, monkeypatch) == 0
    data = json.loads(out.read_text())
    assert qupath_problems(data) == [] and data["features"]


@pytest.mark.parametrize("name", ["unreadable.svs", "unopenable.tiff"])
def test_annotate_slide_cli_corrupt_file_one_line(name, checkpoint, tmp_path, monkeypatch, capsys):
    argv = [
        "annotate-slide",
        str(VENDOR / name),
        "--model",
        str(checkpoint),
        "-o",
        str(tmp_path / "o.geojson"),
    ]
    assert run_cli(argv, monkeypatch) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and name in err


def test_slide_flags_are_slide_settings(checkpoint, tmp_path, monkeypatch, capsys):
    """The flags' defaults are SlideSettings' own, and SlideSettings refuses a bad value."""
    import argparse

    from milsil.cli.slides import add_slide_arguments, slide_settings

    parser = argparse.ArgumentParser()
    add_slide_arguments(parser)
    assert slide_settings(parser.parse_args(["--model", "m.pt"])) == SlideSettings()
    argv = ["annotate-slide", str(VENDOR / "small.svs"), "--model", str(checkpoint)]
    assert run_cli(argv + ["-o", str(tmp_path / "o.geojson"), "--tile", "4"], monkeypatch) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "milsil annotate-slide: error: tile must be an integer >= the stride (8), got 4"
    ]
