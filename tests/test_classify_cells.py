"""qupath_scripts/classify_cells.groovy against the QuPath stand-ins and the real server.

A synthetic image with a few hundred cells (each a cell polygon with a nucleus polygon) and
a few plain detections, run through run_qupath.groovy under Debian's Groovy 2.4 and
QuPath 0.6's Groovy 4.0.26 (as tests/test_qupath_scripts.py does). Every cell's
measurements must be the library's numbers, computed here independently: the stride-1
logit heatmap of the whole image (`logit_heatmap`), then `measure_objects` over the same
polygons; so cells that cross the borders of the script's regions (small on purpose) are
measured whole, and the streamed tiles, contexts and region boxes are right. Also: classes
from the threshold, the run modes (selection, whole image, annotations of a class over a
project), the server reading the slide itself, progress lines, and failures (before any
call, and half-way through) that change nothing.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import shapely
import torch
from PIL import Image
from qupath_support import (
    NO_STATISTICS,
    ONE_LINE,
    SCRIPTS,
    free_port,
    groovy_env,
    image_state,
    runner_fixtures,
)
from server_support import running_server, tiny_model
from shapely.geometry import Polygon

from milsil.data.synth import synth_image
from milsil.inference.heatmap import logit_heatmap
from milsil.inference.objects import measure_objects
from milsil.models import save_checkpoint
from milsil_server.resources import Limits

TOKEN = "cells-s3cret"
WIDTH, HEIGHT = 288, 224
SPACING = 16  # cells on a jittered grid, one per 16 x 16 pixels
REGION = 100  # the script's regionSize: grid lines at 100 and 200 cut through cells
TILE = 48
# An L-shaped annotation whose edges run between the grid's cells (centres at 8 + 16k,
# jittered by at most 2.5 px), so "centroid inside" has one answer however it is computed.
TUMOR = [[32, 32], [160, 32], [160, 96], [112, 96], [112, 160], [32, 160]]
MIDWAY_LIMIT = 8  # max_objects of the strict server: the second region of midway.png fails
CLASSES = ["benign", "malignant"]


def _ring(rng, cx: float, cy: float, radius: float, n: int) -> list[list[float]]:
    """A star-shaped (so simple) polygon, vertices rounded to 0.01 px (what QuPath writes)."""
    angles = (np.arange(n) + rng.uniform(-0.3, 0.3, n)) * 2 * np.pi / n
    radii = radius * rng.uniform(0.85, 1.15, n)
    return [
        [round(float(cx + r * np.cos(a)), 2), round(float(cy + r * np.sin(a)), 2)]
        for a, r in zip(angles, radii, strict=True)
    ]


def _objects(rng, width: int, height: int, keep=None) -> list[dict]:
    """Cells on the jittered grid (some unclassified, some "Stroma"), with a few plain
    detections and one cell without a nucleus among them; `keep(col, row)` picks places."""
    objects = []
    for row in range(height // SPACING):
        for col in range(width // SPACING):
            if keep is not None and not keep(col, row):
                continue
            cx = col * SPACING + 8 + rng.uniform(-2.5, 2.5)
            cy = row * SPACING + 8 + rng.uniform(-2.5, 2.5)
            k = len(objects)
            cell = _ring(rng, cx, cy, 6.5, 14)
            if k % 41 == 7:  # a plain detection (its ROI is measured)
                objects.append({"kind": "detection", "shape": "polygon", "coords": cell})
            else:
                nucleus = None if k % 53 == 11 else _ring(rng, cx, cy, 3.8, 10)
                objects.append(
                    {
                        "kind": "cell",
                        "coords": cell,
                        "nucleus": nucleus,
                        "class": "Stroma" if k % 5 == 0 else None,
                    }
                )
            objects[-1]["name"] = f"c{k}"
    return objects


def _geometry(ring: list[list[float]]) -> dict:
    return {"type": "Polygon", "coordinates": [[*ring, ring[0]]]}


def _expected(heat, objects: list[dict], cell_roi: bool) -> dict:
    """name -> the measurements the library gives each object (QuPath names) on ``heat``,
    the stride-1 heatmap of the whole image."""
    rings = [
        o["coords"] if cell_roi or o["kind"] != "cell" or not o["nucleus"] else o["nucleus"]
        for o in objects
    ]
    result = measure_objects(heat, [_geometry(r) for r in rings])
    rows = result.measurements(CLASSES)
    return {o["name"]: row for o, row in zip(objects, rows, strict=True)}


def _spread_model(rgb: np.ndarray, objects: list[dict], scale: float = 2000):
    """The tiny test model with its classifier scaled up and centred on these cells, so that
    their p(malignant) spread over (0, 1) instead of all lying within 1e-3 of 0.47 (the
    untrained model): a threshold then splits them with a clear margin. Returns the model
    and its stride-1 heatmap of `rgb` (logits are linear in the bias: shifted, not redone)."""
    model = tiny_model(width=4)
    with torch.no_grad():
        model.fc.weight.mul_(scale)
        model.fc.bias.zero_()
    heat = logit_heatmap(model, rgb, stride=1)
    means = measure_objects(heat, [_geometry(o.get("nucleus") or o["coords"]) for o in objects])
    bias = -np.median(means.mean_logit, axis=0)
    with torch.no_grad():
        model.fc.bias.copy_(torch.from_numpy(bias).float())
    return model, heat + model.fc.bias.detach()[:, None, None]


def _register(server, model, model_id: str = "tiny") -> None:
    path = server.store.root / "tmp" / f"{model_id}.pt"
    save_checkpoint(model, path, provenance={"config": {"patch_size": 32}})
    server.store.register_model(path, model_id, display_name=model_id, move=True)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Servers (one with an object limit), images (PNG + the same pixels as a slide), the
    expected numbers; shared by both runtimes."""
    from milsil.wsi.tiff import write_pyramidal_tiff

    base = tmp_path_factory.mktemp("cells")
    stubs = groovy_env.compile_stubs(base / "stub_classes")
    img, slides = base / "images", base / "slides"
    img.mkdir()
    slides.mkdir()
    rng = np.random.default_rng(5)
    rgb, _ = synth_image(rng, (HEIGHT, WIDTH), True)
    Image.fromarray(rgb).save(img / "cells.png")
    write_pyramidal_tiff(slides / "cells.tif", rgb, mpp=0.5)
    objects = _objects(rng, WIDTH, HEIGHT)
    # midway.png: 3 cells in the first region, 12 in the second (over the strict limit).
    small, _ = synth_image(rng, 128, False)
    Image.fromarray(small).save(img / "midway.png")
    first = {(0, 0), (1, 0), (0, 1)}
    midway = _objects(rng, 128, 128, keep=lambda c, r: (c, r) in first or (c >= 4 and r >= 4))
    midway = midway[:15]
    model, heat = _spread_model(rgb, objects)
    # For the downsample runs: spread 10 times less, so that one grey level of rounding (a
    # slide's level 2 is a mean of level 1's rounded means) moves p by less than 1e-2.
    gentle, _ = _spread_model(rgb, objects, scale=200)
    nuclei = _expected(heat, objects, cell_roi=False)
    whole = _expected(heat, objects, cell_roi=True)
    p = np.sort([m["milsil p(malignant)"] for m in nuclei.values()])
    # A threshold in the widest gap between the values of the middle half of the cells.
    quarter = len(p) // 4
    k = quarter + int(np.argmax(np.diff(p[quarter : 3 * quarter])))
    threshold = float((p[k] + p[k + 1]) / 2)
    assert p[k + 1] - p[k] > 1e-3
    with running_server(base / "server", token=TOKEN, slide_roots=(slides,)) as server:
        _register(server, model)
        _register(server, gentle, "gentle")
        with running_server(
            base / "strict", token=TOKEN, limits=Limits(max_objects=MIDWAY_LIMIT)
        ) as strict:
            _register(strict, model)
            yield {
                "base": base,
                "stubs": stubs,
                "gentle": gentle,
                "images": img,
                "slides": slides,
                "server": server,
                "strict": strict,
                "objects": objects,
                "midway": midway,
                "nuclei": nuclei,
                "cells": whole,
                "threshold": threshold,
            }


def _spec(world, out) -> dict:
    good = {
        "milsil.server": f"127.0.0.1:{world['server'].port}",
        "milsil.token": TOKEN,
        "milsil.model": "tiny",
        "milsil.timeoutSeconds": "30",
        "milsil.regionSize": str(REGION),
        "milsil.tileSize": str(TILE),
        "milsil.progressEverySeconds": "0",
    }
    classify = dict(
        good,
        **{
            "milsil.classify": "true",
            "milsil.className": "malignant",
            "milsil.threshold": repr(world["threshold"]),
        },
    )
    script = str(SCRIPTS / "classify_cells.groovy")
    images = [
        {
            "name": "cells.png",
            "path": str(world["images"] / "cells.png"),
            "slide": str(world["slides"] / "cells.tif"),
            "objects": [
                {
                    "kind": "annotation",
                    "shape": "polygon",
                    "coords": TUMOR,
                    "class": "Tumor",
                    "name": "tumor",
                },
                *world["objects"],
            ],
        },
        {
            "name": "midway.png",
            "path": str(world["images"] / "midway.png"),
            "objects": world["midway"],
        },
    ]

    def run(rid, props, image=0, select=(), **extra):
        return {
            "id": rid,
            "script": script,
            "properties": props,
            "image": image,
            "select": list(select),
            **extra,
        }

    runs = [
        # Failures first: each changes nothing.
        run("err_model", dict(good, **{"milsil.model": "models/no-such-model"})),
        run("err_down", dict(good, **{"milsil.server": f"127.0.0.1:{free_port()}"})),
        run("err_class", dict(classify, **{"milsil.className": "no-such-class"})),
        run("err_no_class", dict(good, **{"milsil.annotationClass": "Nowhere"})),
        run(
            "err_midway",
            dict(good, **{"milsil.server": f"127.0.0.1:{world['strict'].port}"}),
            image=1,
            **{"regionSize": 64},
        ),
        # The work.
        run("picked", good, select=["c3", "c100"]),
        run("measure", good),
        run("cells_in_tumor", dict(good, **{"milsil.useCellRoi": "true"}), select=["tumor"]),
        run("classify", classify),
        run(
            "by_class",
            dict(
                classify,
                **{"milsil.annotationClass": "Tumor", "milsil.negativeClass": "Other"},
            ),
            mode="project",
        ),
        run(
            "slide",
            dict(
                good,
                **{"milsil.serverSlides": "true", "milsil.slidePathMap": f"{world['slides']}="},
            ),
        ),
        run(
            "slide_fallback",
            dict(good, **{"milsil.serverSlides": "true", "milsil.slidePathMap": "/nowhere="}),
        ),
        run(
            "slide_refused",
            dict(
                good,
                **{
                    "milsil.serverSlides": "true",
                    "milsil.slidePathMap": f"{world['slides']}=not-there",
                },
            ),
        ),
        # At downsample 2: small regions (80 level-0 pixels) and one region.
        run("ds2_regions", dict(good, **{"milsil.downsample": "2", "milsil.regionSize": "40"})),
        run("ds2_one", dict(good, **{"milsil.downsample": "2", "milsil.regionSize": "1000"})),
        # Downsamples 1 to 4 with the gentler model (test_one_resampling_rule_across_every_path).
        *(
            run(
                f"gentle_ds{ds}",
                dict(
                    good,
                    **{
                        "milsil.model": "gentle",
                        "milsil.downsample": str(ds),
                        "milsil.regionSize": "1000",
                    },
                ),
            )
            for ds in (1, 2, 3, 4)
        ),
    ]
    for r in runs:  # midway.png's regions are smaller (3 and 12 cells)
        if r.pop("regionSize", None):
            r["properties"] = dict(r["properties"], **{"milsil.regionSize": "64"})
    return {"out": str(out), "project_dir": str(out / "project"), "images": images, "runs": runs}


# Both runtimes' JVMs, started at once (launched); one runtime's results (ran).
launched, ran = runner_fixtures(_spec)


def _lines(log: str) -> list[str]:
    """What a run printed, less the waiting lines of a shared server (both runtimes use it
    at once, so one run may wait for the other's compute)."""
    return [line for line in log.strip().splitlines() if not line.startswith("milsil: waiting: ")]


def _objects_of(state: list, image: str) -> dict:
    """name -> object of the image's top level (cells, detections, annotations)."""
    return {o["name"]: o for o in image_state(state, image)["objects"]}


def _check_measured(got: dict, expected: dict, names) -> None:
    keys = sorted(next(iter(expected.values())))
    assert len(keys) == 7 and "milsil pixels" in keys
    for name in names:
        m = got[name]["measurements"]
        assert sorted(m) == keys, (name, m)
        want = expected[name]
        assert m["milsil pixels"] == want["milsil pixels"], name
        for key in keys:
            assert m[key] == pytest.approx(want[key], rel=1e-3, abs=1e-4), (name, key)


def test_cells_get_the_library_measurements(ran, world):
    logs, states = ran["logs"], ran["states"]
    cells = _objects_of(states["measure"], "cells.png")
    names = [o["name"] for o in world["objects"]]
    _check_measured(cells, world["nuclei"], names)
    # The regions are cut at x, y = 100 and 200 (the grid of squares of regionSize): cells
    # reaching over those lines were measured whole (the numbers above are the whole image's).
    crossing = [
        o["name"]
        for o in world["objects"]
        if any(
            lo < line < hi
            for line in (REGION, 2 * REGION)
            for lo, hi in (
                (min(x for x, _ in o["coords"]), max(x for x, _ in o["coords"])),
                (min(y for _, y in o["coords"]), max(y for _, y in o["coords"])),
            )
        )
    ]
    assert len(crossing) > 20
    # A cell without a nucleus and the plain detections: their own ROI.
    assert any(o["kind"] == "detection" for o in world["objects"])
    assert any(o["kind"] == "cell" and not o["nucleus"] for o in world["objects"])
    # The annotation is not a cell; classes are untouched without `classify`.
    assert cells["tumor"]["measurements"] == {}
    for o in world["objects"]:
        assert cells[o["name"]].get("class") == o.get("class")
    log = _lines(logs["measure"])
    progress = re.compile(
        r"milsil: cells\.png: cells: \d{1,2}% \([\d,]+/252 cells, \d/9 regions\), eta \d+ s"
    )
    assert sum(bool(progress.fullmatch(line)) for line in log) >= 3, log
    assert log[-1] == "milsil: cells.png: 252 cell(s) measured in 9 region(s) with models/tiny"
    # Tiles were read one at a time (tileSize 48, plus one pixel of overlap).
    reads = (ran["out"] / "measure.reads.json").read_text()
    assert 0 < int(re.search(r'"cells\.png": (\d+)', reads).group(1)) <= 49 * 49
    # One change event at the end (the stand-in counts events and additions).
    before = image_state(states["picked"], "cells.png")["changes"]  # the run before
    assert image_state(states["measure"], "cells.png")["changes"] == before + 1


def test_cells_inside_a_selected_annotation_with_their_whole_cell(ran, world):
    cells = _objects_of(ran["states"]["cells_in_tumor"], "cells.png")
    before = _objects_of(ran["states"]["measure"], "cells.png")
    tumor = Polygon(TUMOR)
    inside = [
        o["name"]
        for o in world["objects"]
        if tumor.contains(shapely.centroid(Polygon(o["coords"])))
    ]
    assert 40 < len(inside) < 100
    _check_measured(cells, world["cells"], inside)
    # The others kept what the previous run gave them.
    for o in world["objects"]:
        if o["name"] not in inside:
            assert cells[o["name"]]["measurements"] == before[o["name"]]["measurements"]
    # The L touches all four squares of the grid around (100, 100).
    assert _lines(ran["logs"]["cells_in_tumor"])[-1] == (
        f"milsil: cells.png: {len(inside)} cell(s) measured in 4 region(s) with models/tiny"
    )


def test_classify_sets_classes_from_the_threshold(ran, world):
    threshold = world["threshold"]
    cells = _objects_of(ran["states"]["classify"], "cells.png")
    positives = 0
    for o in world["objects"]:
        p = world["nuclei"][o["name"]]["milsil p(malignant)"]
        want = "malignant" if p >= threshold else None  # negativeClass '': unclassified
        assert cells[o["name"]].get("class") == want, (o["name"], p, threshold)
        positives += want is not None
    assert 0 < positives < len(world["objects"])
    assert re.fullmatch(
        rf"milsil: cells\.png: 252 cell\(s\) measured in 9 region\(s\) with models/tiny; "
        rf"{positives} classified malignant \(p >= 0\.\d+\)",
        _lines(ran["logs"]["classify"])[-1],
    )
    # "Run for project" over annotations of a class: the cells inside get malignant or
    # negativeClass, the others keep their class; an image without such annotations says so.
    after = _objects_of(ran["states"]["by_class"], "cells.png")
    tumor = Polygon(TUMOR)
    for o in world["objects"]:
        if tumor.contains(shapely.centroid(Polygon(o["coords"]))):
            p = world["nuclei"][o["name"]]["milsil p(malignant)"]
            assert after[o["name"]].get("class") == ("malignant" if p >= threshold else "Other")
        else:
            assert after[o["name"]].get("class") == cells[o["name"]].get("class")
    log = ran["logs"]["by_class"]
    assert re.search(r"^milsil: cells\.png: \d+ cell\(s\) measured in 4 region\(s\)", log, re.M)
    assert re.search(
        r'^milsil: NOTHING_SELECTED: midway\.png: no area annotation of class "Tumor"', log, re.M
    )


def test_the_server_reads_the_slide_itself_or_the_script_says_why_not(ran, world):
    names = [o["name"] for o in world["objects"]]
    log = ran["logs"]["slide"]
    assert "streaming pixels instead" not in log and "UNCAUGHT" not in log, log
    _check_measured(_objects_of(ran["states"]["slide"], "cells.png"), world["nuclei"], names)
    lines = _lines(ran["logs"]["slide_fallback"])
    assert re.fullmatch(
        r"milsil: cells\.png: the server cannot read the slide \(no slidePathMap entry matches "
        r"\S+cells\.tif\); streaming pixels instead",
        lines[0],
    ), lines
    assert lines[-1].startswith("milsil: cells.png: 252 cell(s) measured in 9 region(s)")
    _check_measured(
        _objects_of(ran["states"]["slide_fallback"], "cells.png"), world["nuclei"], names
    )


def test_failures_change_nothing(ran):
    logs, states = ran["logs"], ran["states"]
    expected = {
        "err_model": "NOT_FOUND",
        "err_down": "UNAVAILABLE",
        "err_class": "INVALID_ARGUMENT",
        "err_no_class": "NOTHING_SELECTED",
    }
    for rid, code in expected.items():
        lines = _lines(logs[rid])
        assert len(lines) == 1 and ONE_LINE.match(lines[0]), (rid, logs[rid])
        assert lines[0].startswith(f"milsil: {code}: "), (rid, lines[0])
        assert states[rid] == states["initial"], rid
    assert "no-such-class" in logs["err_class"] and "benign, malignant" in logs["err_class"]
    # Half-way: the first region (3 cells) was measured, the second (12 cells, over the
    # server's limit of 8 objects a call) failed: one line, and no cell changed.
    lines = _lines(logs["err_midway"])
    assert lines[0].startswith("milsil: midway.png: cells: 20% (3/15 cells, 1/2 regions), eta "), (
        lines
    )
    # (Progress inside the second region may come first: its tiles go out while the
    # server's refusal travels back.)
    assert lines[-1].startswith("milsil: RESOURCE_EXHAUSTED: "), lines
    # (The tiny model carries no training statistics: one line says so, after the first region.)
    assert sum(bool(NO_STATISTICS.fullmatch(line)) for line in lines) == 1, lines
    assert all(
        re.match(r"milsil: midway\.png: cells: \d+% ", line) or NO_STATISTICS.fullmatch(line)
        for line in lines[:-1]
    ), lines
    assert states["err_midway"] == states["initial"]


def test_selected_cells_are_measured_themselves(ran, world):
    cells = _objects_of(ran["states"]["picked"], "cells.png")
    _check_measured(cells, world["nuclei"], ["c3", "c100"])
    assert all(not o["measurements"] for n, o in cells.items() if n not in ("c3", "c100"))
    assert _lines(ran["logs"]["picked"])[-1] == (
        "milsil: cells.png: 2 cell(s) measured in 2 region(s) with models/tiny"
    )


def test_a_server_that_cannot_find_the_slide_means_streaming(ran, world):
    lines = _lines(ran["logs"]["slide_refused"])
    assert re.fullmatch(
        r"milsil: cells\.png: the server cannot read the slide \((NOT_FOUND|INVALID_ARGUMENT): "
        r".*not-there.*\); streaming pixels instead",
        lines[0],
    ), lines
    assert lines[-1].startswith("milsil: cells.png: 252 cell(s) measured in 9 region(s)")
    names = [o["name"] for o in world["objects"]]
    _check_measured(
        _objects_of(ran["states"]["slide_refused"], "cells.png"), world["nuclei"], names
    )


def test_at_a_downsample_the_regions_do_not_change_the_numbers(ran, world):
    """At downsample 2 each region's origin lies on the downsample's pixel grid, so a cell
    gets the same numbers in a region of its own square as in one region of the whole
    image, and the pixels whose centres it holds are those of the image's grid."""
    small = _objects_of(ran["states"]["ds2_regions"], "cells.png")
    one = _objects_of(ran["states"]["ds2_one"], "cells.png")
    assert _lines(ran["logs"]["ds2_one"])[-1] == (
        "milsil: cells.png: 252 cell(s) measured in 1 region(s) with models/tiny"
    )
    assert re.search(r"measured in (\d+) region", _lines(ran["logs"]["ds2_regions"])[-1])
    # One region of several tiles still reports progress, counted from the tiles sent.
    within = re.compile(
        r"milsil: cells\.png: cells: \d{1,2}% \([\d,]+/252 cells, 1/1 regions\), eta \d+ s"
    )
    assert sum(bool(within.fullmatch(line)) for line in _lines(ran["logs"]["ds2_one"])) >= 2
    rings = [o.get("nucleus") or o["coords"] for o in world["objects"]]
    grid = np.zeros((2, HEIGHT // 2, WIDTH // 2))
    pixels = measure_objects(grid, [_geometry(r) for r in rings], downsample=2).pixels
    for o, count in zip(world["objects"], pixels, strict=True):
        a, b = small[o["name"]]["measurements"], one[o["name"]]["measurements"]
        assert a["milsil pixels"] == b["milsil pixels"] == count, o["name"]
        for key in a:
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-5), (o["name"], key)
        assert a != world["nuclei"][o["name"]]  # not the downsample-1 numbers


def _cli_p(world, path, downsample: int, tmp) -> dict:
    """name -> p(malignant) from `milsil measure-objects` on ``path`` at ``downsample``."""
    from milsil.cli import main

    ckpt = tmp / "model.pt"
    if not ckpt.exists():
        save_checkpoint(world["gentle"], ckpt, provenance={"config": {"patch_size": 32}})
    features = [
        {
            "type": "Feature",
            "id": f"00000000-0000-4000-8000-{k:012d}",
            "geometry": _geometry(o.get("nucleus") or o["coords"]),
            "properties": {"objectType": "detection", "name": o["name"]},
        }
        for k, o in enumerate(world["objects"])
    ]
    (tmp / "in.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    out = tmp / f"{path.stem}-{downsample}.geojson"
    argv = ["measure-objects", str(path), "--model", str(ckpt), "--device", "cpu"]
    argv += ["--objects", str(tmp / "in.geojson"), "-o", str(out), "--downsample", str(downsample)]
    assert main(argv) == 0
    return {
        f["properties"]["name"]: f["properties"]["measurements"]["milsil p(malignant)"]
        for f in json.loads(out.read_text())["features"]
    }


def test_one_resampling_rule_across_every_path(ran, world, tmp_path):
    """The same cells at downsamples 1 to 4 through the image-file CLI, the pyramidal-TIFF
    CLI (levels 1 and 2 only: 3 is shrunk from level 2's pixels by 1.5), the server reading
    the slide (MeasureObjects with slide_path) and the Groovy client streaming pixels (the
    stand-in server shrinks regions as QuPath's image-file server does; the client averages
    what it reads): p(malignant) within 1e-2, and no cell on the other side of 0.5 unless it
    lies within 1e-2 of it. The model is the 10 times gentler one: a slide's level 2 holds
    means of level 1's rounded means, one grey level from the 4 x 4 means of an image file,
    which the steep model would turn into a few 1e-2 of p."""
    from milsil.client import MilsilClient

    runs = {ds: f"gentle_ds{ds}" for ds in (1, 2, 3, 4)}
    client = MilsilClient(f"127.0.0.1:{world['server'].port}", token=TOKEN, timeout=120)
    names = [o["name"] for o in world["objects"]]
    rings = [
        (n, _geometry(o.get("nucleus") or o["coords"]))
        for n, o in zip(names, world["objects"], strict=True)
    ]
    worst = {}
    try:
        for ds, run_id in runs.items():
            groovy = _objects_of(ran["states"][run_id], "cells.png")
            server = client.measure_objects(
                "models/gentle",
                rings,
                slide_path="cells.tif",
                downsample=float(ds),
                region=(0, 0, WIDTH // ds * ds, HEIGHT // ds * ds),
            )
            paths = {
                "image CLI": _cli_p(world, world["images"] / "cells.png", ds, tmp_path),
                "TIFF CLI": _cli_p(world, world["slides"] / "cells.tif", ds, tmp_path),
                "server slide": dict(
                    zip(server.ids, server.probabilities[:, 1].tolist(), strict=True)
                ),
                "Groovy": {n: groovy[n]["measurements"]["milsil p(malignant)"] for n in names},
            }
            reference = paths["image CLI"]
            for label, got in paths.items():
                diffs = [abs(got[n] - reference[n]) for n in names]
                worst[(ds, label)] = max(diffs)
                crossed = [
                    n
                    for n in names
                    if (got[n] > 0.5) != (reference[n] > 0.5)
                    and min(abs(got[n] - 0.5), abs(reference[n] - 0.5)) > 1e-2
                ]
                assert not crossed, (ds, label, crossed)
    finally:
        client.close()
    print({f"ds{d} {label}": round(v, 5) for (d, label), v in worst.items()})
    assert all(v <= 1e-2 for v in worst.values()), worst
