"""The outline clean-up (milsil.wsi.outlines): hand-drawn masks with hand-computed answers,
band by band equal to the whole map, µm vs pixels, validation; and the outline bench's
metrics on hand-made label images."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from shapely.geometry import shape

from milsil.errors import MilsilError
from milsil.wsi.geojson import OutlineStream, heatmap_to_geojson
from milsil.wsi.outlines import OutlineSettings
from milsil.wsi.settings import SlideSettings

ROOT = Path(__file__).resolve().parents[1]


def outlines(values, **settings):
    """(areas sorted, features) of ``values >= 0.5`` with these clean-up settings (px)."""
    pixel_size = settings.pop("pixel_size_um", None)
    outline = OutlineSettings(**{**OutlineSettings.raw().__dict__, **settings})
    collection, objects = heatmap_to_geojson(
        values, 0.5, outline=outline, pixel_size_um=pixel_size, measurement_maps={"p": values}
    )
    return collection, objects


def test_min_area_keeps_objects_at_or_above_it():
    values = np.zeros((12, 12))
    values[1:4, 1:4] = 1  # 9 px²
    values[1, 8:10] = 1  # 2 px²
    values[6:10, 6:10] = 1  # 16 px²
    collection, objects = outlines(values, min_area=9)
    assert sorted(o["area"] for o in objects) == [9.0, 16.0]
    collection, objects = outlines(values, min_area=10)
    assert [o["area"] for o in objects] == [16.0]
    _, objects = outlines(values)  # raw: all three
    assert sorted(o["area"] for o in objects) == [2.0, 9.0, 16.0]


def test_holes_below_min_hole_area_are_filled_and_measured():
    values = np.zeros((12, 20))
    values[1:6, 1:6] = 1
    values[3, 3] = 0  # a 1 px² hole in a 5x5 square: 24 px²
    values[1:8, 10:17] = 1
    values[3:6, 12:15] = 0  # a 9 px² hole in a 7x7 square: 40 px²
    values[9:12, 0:5] = 1
    values[11, 2] = 0  # a notch at the map's border is no hole: 14 px²
    collection, objects = outlines(values, min_hole_area=4)
    by_area = {o["area"]: o for o in objects}
    assert sorted(by_area) == [14.0, 25.0, 40.0]
    # the filled hole's sample counts in the measurements: 24 ones and one zero
    assert by_area[25.0]["mean_p"] == pytest.approx(24 / 25)
    holes = sorted(len(shape(f["geometry"]).interiors) for f in collection["features"])
    assert holes == [0, 0, 1]  # only the 9 px² hole is left
    _, objects = outlines(values)
    assert sorted(o["area"] for o in objects) == [14.0, 24.0, 40.0]


def test_merge_distance_joins_objects_across_a_gap():
    values = np.zeros((8, 13))
    values[2:5, 2:5] = 1
    values[2:5, 7:10] = 1  # a 2-pixel gap (columns 5, 6)
    _, objects = outlines(values)
    assert sorted(o["area"] for o in objects) == [9.0, 9.0]
    # merge 2 px: a closing with a radius-1 disk (a cross) bridges the middle row only
    _, objects = outlines(values, merge_distance=2)
    assert [o["area"] for o in objects] == [20.0]
    assert objects[0]["mean_p"] == pytest.approx(18 / 20)
    wide = np.zeros((8, 15))
    wide[2:5, 2:5] = 1
    wide[2:5, 9:12] = 1  # a 4-pixel gap stays open at merge 2
    _, objects = outlines(wide, merge_distance=2)
    assert len(objects) == 2


def test_simplify_drops_collinear_staircase_vertices_only():
    values = np.zeros((9, 8))
    values[2:6, 1:5] = 1
    values[6:8, 1:3] = 1  # a 4x4 square with a 2x2 foot: 20 px², an L with 6 corners
    raw, _ = outlines(values)
    simple, objects = outlines(values, simplify=0.5)
    ring = shape(simple["features"][0]["geometry"]).exterior.coords
    assert len(ring) == 7  # 6 corners and the closing point
    assert objects[0]["area"] == 20.0
    assert len(shape(raw["features"][0]["geometry"]).exterior.coords) >= 7


def smooth_field(rows: int, cols: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    from scipy import ndimage

    noise = ndimage.gaussian_filter(rng.random((rows, cols)), 1.5)
    speckle = rng.random((rows, cols)) > 0.93
    values = (noise - noise.min()) / (noise.max() - noise.min())
    return np.where(speckle, 1.0, values)


@pytest.mark.parametrize("band", [1, 5, 17])
def test_band_by_band_equals_whole_map_with_every_step_on(band):
    values = smooth_field(70, 45, 3)
    values[30:34, 10:20] = np.nan  # never computed: outside, and left out of the smoothing
    outline = OutlineSettings(
        min_area=6, min_hole_area=5, smooth_sigma=1.2, merge_distance=2, simplify=0.5
    )
    whole, whole_objects = heatmap_to_geojson(
        values, 0.55, outline=outline, measurement_maps={"p": values}
    )
    stream = OutlineStream(70, 45, 0.55, outline=outline)
    for r0 in range(0, 70, band):
        part = values[r0 : r0 + band]
        stream.add(part, {"p": part})
    banded, banded_objects = stream.finish()
    assert len(whole["features"]) >= 3
    assert [f["geometry"] for f in banded["features"]] == [f["geometry"] for f in whole["features"]]
    # the same samples, summed band by band: equal up to the order of the additions
    strip = [{k: v for k, v in o.items() if k != "id"} for o in banded_objects]
    assert strip == [
        pytest.approx({k: v for k, v in o.items() if k != "id"}, rel=1e-12) for o in whole_objects
    ]


def test_smoothing_moves_the_outline_not_the_measurements():
    values = np.full((5, 5), 0.6)
    values[2, 2] = 0.2  # a low sample: a 1 px² hole in the raw outline
    _, raw = outlines(values)
    assert [(o["area"], o["max_p"]) for o in raw] == [(24.0, 0.6)]
    assert raw[0]["mean_p"] == pytest.approx(0.6)
    # smoothed (σ 1 px, the border extended) the centre reads 0.6 - 0.4 x ~0.16 > 0.5:
    # the outline closes, and its measurements are the exact map's over all 25 samples
    _, smooth = outlines(values, smooth_sigma=1)
    assert [o["area"] for o in smooth] == [25.0]
    assert smooth[0]["mean_p"] == pytest.approx((24 * 0.6 + 0.2) / 25)
    assert smooth[0]["max_p"] == 0.6


def test_microns_reach_the_same_outlines_as_the_equivalent_pixels():
    values = smooth_field(60, 50, 7)
    microns = OutlineSettings(
        min_area=2.5, min_hole_area=1.0, smooth_sigma=0.5, merge_distance=1.0, simplify=0.5
    )
    # at 0.5 µm per pixel: 2.5 µm² = 10 px², 1 µm² = 4 px², 0.5 µm = 1 px, 1 µm = 2 px
    pixels = OutlineSettings(
        min_area=10, min_hole_area=4, smooth_sigma=1, merge_distance=2, simplify=0.5
    )
    calibrated, _ = heatmap_to_geojson(values, 0.5, outline=microns, pixel_size_um=0.5)
    plain, _ = heatmap_to_geojson(values, 0.5, outline=pixels)
    assert len(plain["features"]) >= 2
    assert [f["geometry"] for f in calibrated["features"]] == [
        f["geometry"] for f in plain["features"]
    ]
    assert calibrated["outline_settings"]["units"] == "um"
    assert calibrated["outline_settings"]["pixel_size_um"] == 0.5
    assert calibrated["outline_settings"]["min_area"] == 2.5  # as given, with its units
    # without a pixel size the same numbers are pixels, and the output says so
    uncalibrated, _ = heatmap_to_geojson(values, 0.5, outline=microns)
    assert uncalibrated["outline_settings"]["units"] == "px"
    assert uncalibrated["outline_settings"]["pixel_size_um"] is None
    assert [f["geometry"] for f in uncalibrated["features"]] != [
        f["geometry"] for f in plain["features"]
    ]


def test_slide_settings_pixel_size_comes_from_the_request_then_the_slide():
    assert SlideSettings().outline == OutlineSettings()
    assert SlideSettings().outline_pixel_size((0.25, 0.25)) == 0.25
    assert SlideSettings().outline_pixel_size(None) is None
    assert SlideSettings(pixel_size_um=0.5).outline_pixel_size((0.25, 0.25)) == 0.5
    restored = SlideSettings.from_dict(SlideSettings(outline=OutlineSettings.raw()).to_dict())
    assert restored.outline == OutlineSettings.raw()


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: OutlineSettings(min_area=-1), "min_area must be a number in [0, 1e+09]"),
        (lambda: OutlineSettings(min_hole_area=float("nan")), "min_hole_area must be a number"),
        (lambda: OutlineSettings(smooth_sigma=2000), "smooth_sigma must be a number in [0, 1000]"),
        (lambda: OutlineSettings(merge_distance="far"), "merge_distance must be a number"),
        (lambda: OutlineSettings(simplify=1.0), "simplify must be a number in [0, 1)"),
        (lambda: SlideSettings(pixel_size_um=-0.5), "pixel_size_um must be a number in"),
        (
            lambda: SlideSettings(outline={"min_size": 3}),
            "unknown outline setting(s) min_size; allowed:",
        ),
        (
            lambda: OutlineStream(5000, 10, 0.5, outline=OutlineSettings(min_hole_area=1e6)),
            "rows of context",
        ),
    ],
)
def test_validation_names_the_field_and_the_range(make, message):
    with pytest.raises(MilsilError) as info:
        make()
    assert message in str(info.value)


def test_zero_means_default_and_negative_means_off():
    d = OutlineSettings()
    s = OutlineSettings.with_defaults(min_area=0, min_hole_area=-1, smooth_sigma=None)
    assert (s.min_area, s.min_hole_area, s.smooth_sigma) == (d.min_area, 0.0, d.smooth_sigma)


def test_slide_flags_build_outline_settings_with_the_measured_defaults():
    import argparse

    from milsil.cli.slides import add_slide_arguments, slide_settings

    parser = argparse.ArgumentParser()
    add_slide_arguments(parser)
    defaults = slide_settings(parser.parse_args(["--model", "m.pt"]))
    assert defaults.outline == OutlineSettings()
    assert defaults.pixel_size_um is None
    given = slide_settings(
        parser.parse_args(
            ["--model", "m.pt", "--min-area", "10", "--min-hole-area", "4", "--smooth-sigma"]
            + ["0.5", "--merge-distance", "1", "--simplify", "0.25", "--pixel-size", "0.5"]
        )
    )
    assert given.outline == OutlineSettings(10, 4, 0.5, 1, 0.25)
    assert given.pixel_size_um == 0.5
    with pytest.raises(MilsilError, match=r"simplify must be a number in \[0, 1\)"):
        slide_settings(parser.parse_args(["--model", "m.pt", "--simplify", "2"]))


# ---- the bench's metrics, on label images whose answers are counted by hand ----


def bench():
    spec = importlib.util.spec_from_file_location("outline_bench", ROOT / "bench/outline_bench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_object_scores_dice_and_nuclei_covered():
    b = bench()
    truth = np.zeros((6, 10), int)
    truth[0:2, 0:2] = 1  # found
    truth[4:6, 0:2] = 2  # missed
    truth[0:2, 6:8] = 3  # found
    pred = np.zeros((6, 10), int)
    pred[1:3, 1:3] = 1  # overlaps 1
    pred[0:2, 7:9] = 2  # overlaps 3
    pred[4:6, 8:10] = 3  # false positive
    scores = b.object_scores(pred, truth)
    assert scores["precision"] == pytest.approx(2 / 3)
    assert scores["recall"] == pytest.approx(2 / 3)
    assert scores["f1"] == pytest.approx(2 / 3)
    # |P| = 12, |G| = 12, |P & G| = 1 (pixel (1,1)) + 2 (column 7, rows 0-1) = 3
    assert b.dice(pred > 0, truth > 0) == pytest.approx(2 * 3 / 24)
    instances = np.zeros((6, 10), int)
    instances[0:2, 0:2] = 1  # 1 of 4 pixels in pred: not covered
    instances[0:2, 7:9] = 2  # all 4 in: covered
    instances[2, 1:3] = 3  # (2,1), (2,2): 2 of 2 in: covered
    assert b.nuclei_covered(pred > 0, instances, [1, 2, 3]) == (2, 3)
    assert b.object_scores(np.zeros((2, 2), int), np.zeros((2, 2), int))["f1"] == 1.0


def test_bench_choice_needs_the_bar_then_takes_the_best_dice_then_f1():
    b = bench()

    def row(fragments, recall, covered, f1, dice_):
        scores = {"fragments": fragments, "recall": recall, "nuclei_covered": covered}
        return {"setting": [fragments], "scores": scores | {"f1": f1, "dice": dice_}}

    base = row(100, 0.90, 0.95, 0.10, 0.20)
    rows = [
        base,
        row(11, 0.90, 0.95, 0.90, 0.30),  # only 9.1x fewer fragments
        row(10, 0.87, 0.95, 0.80, 0.30),  # recall 3 points down
        row(10, 0.90, 0.92, 0.80, 0.30),  # nuclei covered 3 points down
        row(5, 0.90, 0.95, 0.70, 0.19),  # Dice below the baseline's
        row(10, 0.885, 0.935, 0.50, 0.25),  # 1.5 points down on both: eligible
        row(2, 0.95, 0.96, 0.90, 0.21),  # eligible, best F1, lower Dice
        row(3, 0.95, 0.96, 0.55, 0.30),  # eligible, best Dice
        row(3, 0.95, 0.96, 0.56, 0.30),  # the same Dice, better F1
    ]
    assert b.choose(rows) is rows[8]
    assert b.choose(rows[:8]) is rows[7]
    assert b.choose(rows[:7]) is rows[5]
    assert b.choose(rows[:6]) is rows[5]
    assert b.choose(rows[:5]) is None


def test_bench_truth_regions_join_close_nuclei_into_clusters():
    b = bench()
    malignant = np.zeros((30, 30), bool)
    malignant[5:8, 5:8] = True
    malignant[5:8, 11:14] = True  # 3 px apart: one cluster at radius 4
    malignant[22:25, 22:25] = True  # far: its own region
    labels = b.truth_regions(malignant)
    assert labels.max() == 2
    assert labels[6, 6] == labels[6, 12] != labels[23, 23]


def test_annotate_slide_takes_microns_from_the_slide_or_the_request(tmp_path):
    """A 640 x 480 slide at 0.5 µm/px outlined whole (307,200 px² = 76,800 µm²): the
    minimum area is in µm² with the slide's pixel size, or with the request's instead."""
    import torch
    from conftest import randomize_batchnorm

    from milsil.models import create_model
    from milsil.wsi.annotate import annotate_slide
    from milsil.wsi.synthetic import synthetic_slide

    torch.manual_seed(0)
    model = randomize_batchnorm(
        create_model("bagnet9", 2, width=8, class_names=["benign", "malignant"]), 0
    )
    slide = tmp_path / "s.tif"
    synthetic_slide(slide, 640, 480, block=160, malignant_blocks=0.4, seed=3)
    base = SlideSettings(stride=4, tile=128, threshold=0.5, tissue_only=False)

    def objects(min_area, pixel_size=None):
        settings = base.replace(
            outline=OutlineSettings(min_area=min_area, simplify=0.5), pixel_size_um=pixel_size
        )
        result = annotate_slide(slide, model, None, settings)
        return [f["properties"]["measurements"]["area"] for f in result.collection["features"]], (
            result.outline_settings
        )

    areas, recorded = objects(76800)
    assert areas == [307200.0]
    assert (recorded["units"], recorded["pixel_size_um"], recorded["min_area"]) == (
        "um",
        0.5,
        76800,
    )
    assert objects(76801)[0] == []
    # QuPath's calibration, sent with the request, wins: at 0.25 µm/px it is 19,200 µm²
    assert objects(19200, pixel_size=0.25)[0] == [307200.0]
    assert objects(19201, pixel_size=0.25)[0] == []
