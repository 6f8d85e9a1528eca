"""The QuPath scripts, run against stand-ins of the QuPath classes they call and the real server.

qupath_scripts/tests/run_qupath.groovy builds a small "project" of synthetic images (with
annotations, TMA cores and image metadata) from QuPath stand-in classes
(qupath_scripts/tests/stubs: QuPath's package names and signatures), then runs each script
the way QuPath does: on the current image, or "Run for project" with QuPath's batch binding
variables. One JVM per Groovy runtime runs every scenario; this file checks what the
scripts printed, what they changed in each image, the CSV they wrote and the GeoJSON they
imported (parsed under QuPath's rules by the stand-in PathIO, and checked here with shapely).

Under Debian's Groovy 2.4 (what CI installs) and QuPath 0.6's Groovy 4.0.26. Missing
Groovy, jars or javac: skip locally, FAIL when CI is set.
"""

from __future__ import annotations

import csv
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import shapely
import torch
from PIL import Image
from qupath_support import (
    NO_STATISTICS,
    ONE_LINE,
    RUNTIMES,
    SCRIPTS,
    groovy_env,
    runner_results,
    start_runner,
    stop_runners,
)
from qupath_support import find as _find
from qupath_support import free_port as _free_port
from qupath_support import image_state as _image_state
from qupath_support import polygon as _polygon
from server_support import register_tiny_model, running_server
from shapely.geometry import Polygon, shape

from milsil.client import MilsilClient
from milsil.data.synth import synth_image
from milsil.wsi.geojson import cell_edges

TOKEN = "qupath-s3cret"
NO_FILE_NAME = "Lymph node 3"  # the metadata name of the image with no file
ROI1 = [[20, 20], [150, 30], [170, 160], [40, 140]]  # a polygon annotation (class Region*)
ROI2 = [100, 100, 60, 60]  # a rectangle annotation, unclassified
# What every outline of the streaming Annotate mode carries (qupath_scripts/README.md).
FIVE_MEASUREMENTS = ("area", "mean_probability", "max_probability", "mean_logit", "max_logit")
CORES = {  # name: (x, y, w, h, missing, user class)
    "A-1": (20, 20, 100, 100, False, None),
    "A-2": (136, 20, 100, 100, False, "benign"),
    "B-1": (20, 136, 100, 100, True, None),
    "B-2": (136, 136, 100, 100, False, None),
}


def _image(path: Path, seed: int, size: int, malignant: bool) -> np.ndarray:
    rgb, _ = synth_image(np.random.default_rng(seed), size, malignant)
    Image.fromarray(rgb).save(path)
    return rgb


# A whole-slide-sized image: one annotation's bounding box (5800 x 5800 = 33.6 MP) is larger
# than the old per-request limit (2^25 = 33.5 MP). The same pixels as a PNG (what the QuPath
# stand-in serves) and as a pyramidal TIFF under the server's slide root (what it reads in
# the server-reads-the-slide mode, through slidePathMap).
BIG_SIDE = 5832
BIG_ROI = [[16, 16], [5816, 40], [5790, 5816], [40, 5800]]  # bounding box 16..5816 (stride-aligned)


def _big_image(png: Path, tiff: Path) -> np.ndarray:
    from milsil.wsi.tiff import write_pyramidal_tiff

    rng = np.random.default_rng(11)
    tile, _ = synth_image(rng, 256, True)
    n = -(-BIG_SIDE // 256)
    rgb = np.tile(tile, (n, n, 1))[:BIG_SIDE, :BIG_SIDE]
    shade = rng.integers(-50, 50, (n, n, 1), dtype=np.int16).repeat(256, 0).repeat(256, 1)
    rgb = np.clip(rgb + shade[:BIG_SIDE, :BIG_SIDE], 0, 255).astype(np.uint8)
    Image.fromarray(rgb).save(png, compress_level=1)
    write_pyramidal_tiff(tiff, rgb, mpp=0.5)
    return rgb


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Server (token on, tiny model), images, compiled stand-ins; shared by both runtimes."""
    base = tmp_path_factory.mktemp("qupath")
    stubs = groovy_env.compile_stubs(base / "stub_classes")
    img = base / "images"
    img.mkdir()
    pixels = {
        "slide_a.png": _image(img / "slide_a.png", 1, 192, True),
        "tma_1.png": _image(img / "tma_1.png", 2, 256, True),
        "tma_2.png": _image(img / "tma_2.png", 3, 160, False),
        "train_m1.png": _image(img / "train_m1.png", 4, 96, True),
        "train_b1.png": _image(img / "train_b1.png", 5, 96, False),
        "train_m2.png": _image(img / "train_m2.png", 6, 96, True),
        "train_b2.png": _image(img / "train_b2.png", 7, 96, False),
    }
    slides = base / "slides"
    slides.mkdir()
    big = _big_image(img / "big.png", slides / "big.tif")
    with running_server(base / "server", token=TOKEN, slide_roots=(slides,)) as server:
        model = register_tiny_model(server)
        register_tiny_model(server, "small", width=4)  # cheaper per pixel: the big image
        # A threshold that splits slide_a roughly in half (the tiny model is untrained), from
        # the server's own heatmap of the whole image (what the scripts' regions are cut from).
        with MilsilClient(f"127.0.0.1:{server.port}", token=TOKEN) as py:
            hm = py.heatmap("models/tiny", pixels["slide_a.png"], stride=2, probabilities=True)
            crop = py.heatmap("models/small", big[:1024, :1024], stride=8, probabilities=True)
        prob = hm.probabilities[1]
        threshold = float(np.median(prob[50:80, 50:80]))
        big_threshold = float(np.median(crop.probabilities[1]))
        yield {
            "base": base,
            "stubs": stubs,
            "images": img,
            "pixels": pixels,
            "server": server,
            "model": model,
            "threshold": threshold,
            "prob": prob,
            "slides": slides,
            "big_threshold": big_threshold,
        }


def _spec_for(world, out: Path, train_job: bool = True, big: bool = True) -> dict:
    img = world["images"]
    port = world["server"].port
    free_port = _free_port()
    good = {
        "milsil.server": f"127.0.0.1:{port}",
        "milsil.token": TOKEN,
        "milsil.model": "tiny",
        "milsil.timeoutSeconds": "30",
    }
    down = dict(good, **{"milsil.server": f"127.0.0.1:{free_port}"})
    wrong = dict(good, **{"milsil.token": "not-the-token"})
    unknown = dict(good, **{"milsil.model": "models/no-such-model"})
    heat = dict(
        good,
        **{
            "milsil.stride": "2",
            "milsil.threshold": repr(world["threshold"]),
            "milsil.tileSize": "64",
            # Every outline as thresholded (the outline clean-up off: "< 0 = none").
            "milsil.minAreaMicrons": "-1",
            "milsil.simplify": "-1",
        },
    )
    tma = dict(
        heat, **{"milsil.csvPath": str(out / "tma_summary.csv"), "milsil.addHeatmap": "true"}
    )
    train = dict(
        good,
        **{
            "milsil.patchSize": "32",
            "milsil.width": "4",
            "milsil.epochs": "1",
            "milsil.batchSize": "4",
            "milsil.seed": "1",
            "milsil.noAugment": "true",
            "milsil.progressEverySeconds": "0",
            "milsil.stainNormalize": "reinhard",
        },
    )
    s = {
        name: str(SCRIPTS / f"{name}.groovy")
        for name in ("heatmap_to_annotations", "tma_batch", "export_labels", "train_from_project")
    }
    cores = [
        {"kind": "tma", "name": n, "coords": list(c[:4]), "missing": c[4], "class": c[5]}
        for n, c in CORES.items()
    ]
    images = [
        {
            "name": "slide_a.png",
            "objects": [
                {
                    "kind": "annotation",
                    "shape": "polygon",
                    "coords": ROI1,
                    "class": "Region*",
                    "name": "roi1",
                    "selected": True,
                },
                {
                    "kind": "annotation",
                    "shape": "rect",
                    "coords": ROI2,
                    "name": "roi2",
                    "selected": True,
                },
                {"kind": "detection", "shape": "rect", "coords": [5, 5, 10, 10], "name": "det1"},
            ],
        },
        {"name": "tma_1.png", "objects": cores},
        {
            "name": "tma_2.png",
            "objects": [
                {"kind": "tma", "name": "C-1", "coords": [10, 10, 110, 110], "missing": False},
                {"kind": "tma", "name": "C-2", "coords": [130, 130, 12, 12], "missing": False},
            ],
        },
        {"name": "train_m1.png", "metadata": {"milsil_label": "malignant"}},
        {"name": "train_b1.png", "metadata": {"milsil_label": "benign"}},
        {
            "name": "train_m2.png",
            "metadata": {"milsil_label": "malignant"},
            "objects": [
                # Two consecutive annotations with one name: still two bags (bag ids carry the
                # index; the server merges consecutive messages with the same bag_id).
                {
                    "kind": "annotation",
                    "shape": "rect",
                    "coords": [0, 0, 64, 64],
                    "class": "malignant",
                    "name": "tumour",
                },
                {
                    "kind": "annotation",
                    "shape": "rect",
                    "coords": [32, 32, 64, 64],
                    "class": "malignant",
                    "name": "tumour",
                },
            ],
        },
        {
            "name": "train_b2.png",
            "metadata": {"milsil_label": "benign"},
            "objects": [
                {"kind": "annotation", "shape": "rect", "coords": [0, 0, 64, 64], "class": "benign"}
            ],
        },
    ]
    if big:  # outside the project: "Run for project" runs do not see it
        images.append(
            {
                "name": "big.png",
                "slide": str(world["slides"] / "big.tif"),
                "standalone": True,
                "objects": [
                    {
                        "kind": "annotation",
                        "shape": "polygon",
                        "coords": BIG_ROI,
                        "class": "Tumor",
                        "name": "tissue",
                    }
                ],
            }
        )
    for i in images:
        i["path"] = str(img / i["name"])
    # An image with no file behind it (pasted, generated): its server path is a random id, its
    # name is in its metadata (issue 18: lines name it by that name). Before "big" (the last).
    images.insert(
        len(images) - 1 if big else len(images),
        {
            "name": NO_FILE_NAME,
            "server_name": NO_FILE_NAME,
            "no_file": True,
            "standalone": True,
            "path": str(img / "train_b1.png"),
        },
    )
    no_file = len(images) - 2 if big else len(images) - 1
    big_heat = dict(
        good,
        **{
            "milsil.model": "small",
            "milsil.stride": "8",
            "milsil.threshold": repr(world["big_threshold"]),
            "milsil.simplify": "-1",  # none
            # The untrained model's speckle: only larger regions (40,000 px² at the
            # stand-in's 0.5 µm/px).
            "milsil.minAreaMicrons": "10000",
            "milsil.annotationClass": "Tumor",
            "milsil.progressEverySeconds": "1",
        },
    )
    slide_heat = dict(
        big_heat,
        **{"milsil.serverSlides": "true", "milsil.slidePathMap": f"{world['slides']}="},
    )

    alone = out / "alone" / "heatmap_to_annotations.groovy"
    alone.parent.mkdir(parents=True, exist_ok=True)
    alone.write_text(Path(s["heatmap_to_annotations"]).read_text())

    def run(rid, script, props, image=0, **extra):
        return {"id": rid, "script": s[script], "properties": props, "image": image, **extra}

    runs = [
        # Failures first: each must print one line and change nothing.
        run("err_heat_down", "heatmap_to_annotations", down),
        run("err_heat_token", "heatmap_to_annotations", wrong),
        run("err_heat_model", "heatmap_to_annotations", unknown),
        run("err_heat_detection_only", "heatmap_to_annotations", heat, select=["det1"]),
        run(
            "err_heat_no_selection",
            "heatmap_to_annotations",
            dict(heat, **{"milsil.wholeImageIfNoSelection": "false"}),
            select=[],
        ),
        run("err_tma_model", "tma_batch", dict(tma, **{"milsil.model": "no-such-model"}), image=1),
        run(
            "err_tma_down",
            "tma_batch",
            dict(tma, **{"milsil.server": down["milsil.server"]}),
            image=1,
        ),
        run("err_tma_no_cores", "tma_batch", tma, image=0),
        run("err_train_token", "train_from_project", dict(train, **{"milsil.token": "nope"})),
        run("err_export_nothing", "export_labels", train, no_project=True),
        run(
            "err_export_down",
            "export_labels",
            dict(train, **{"milsil.server": down["milsil.server"]}),
        ),
        run("err_train_one_class", "train_from_project", train, image=5, no_project=True),
        # A script copied away from lib/: the bootstrap is not found, one SETUP line.
        dict(run("err_no_lib", "heatmap_to_annotations", heat), script=str(alone)),
        # The work.
        run("export", "export_labels", train),
        *([run("train", "train_from_project", train, mode="project")] if train_job else []),
        run("heatmap", "heatmap_to_annotations", heat, select=["roi1", "roi2"]),
        run(
            "heatmap_whole",
            "heatmap_to_annotations",
            dict(heat, **{"milsil.addTiles": "true", "milsil.tileStride": "16"}),
            image=4,
            select=[],
        ),
        run("tma", "tma_batch", tma, mode="project"),
        run(
            "heatmap_by_class",
            "heatmap_to_annotations",
            dict(heat, **{"milsil.annotationClass": "Region*"}),
            select=[],
        ),
        # The server cannot see slide_a (no slidePathMap entry): one line, then pixels.
        run(
            "slide_fallback",
            "heatmap_to_annotations",
            dict(heat, **{"milsil.serverSlides": "true", "milsil.slidePathMap": "/nowhere="}),
            select=["roi2"],
        ),
    ]
    if big:  # an annotation larger than the old limit, in both modes
        runs.append(run("big_slide", "heatmap_to_annotations", slide_heat, image=len(images) - 1))
        runs.append(run("big_stream", "heatmap_to_annotations", big_heat, image=len(images) - 1))
    runs += [
        run(
            "no_file_nothing",
            "heatmap_to_annotations",
            dict(heat, **{"milsil.wholeImageIfNoSelection": "false"}),
            image=no_file,
            select=[],
        ),
        run("no_file_whole", "heatmap_to_annotations", heat, image=no_file, select=[]),
    ]
    return {"out": str(out), "project_dir": str(out / "project"), "images": images, "runs": runs}


def _lib_elsewhere() -> bool:
    """Whether a script away from lib/ would still find it (MILSIL_HOME, ~/milsil/qupath_scripts)."""
    homes = [os.environ.get("MILSIL_HOME"), str(Path.home() / "milsil" / "qupath_scripts")]
    return any(h and (Path(h) / "lib" / "MilsilBootstrap.groovy").is_file() for h in homes)


@pytest.fixture(scope="module")
def launched(world):
    """Both runtimes' JVMs, started at once (they overlap the slow training job)."""
    procs = {}
    runtimes = {name: groovy_env.available(name) for name in RUNTIMES}
    # A training job costs a worker process start (~10 s) and jobs run one at a time, so only
    # one runtime trains: QuPath's Groovy 4 when it is there, else Debian's 2.4.
    trainer = "groovy4" if not isinstance(runtimes["groovy4"], str) else "groovy2.4"
    for name in RUNTIMES:
        runtime = runtimes[name]
        if isinstance(runtime, str):
            procs[name] = runtime  # why it is missing; the test of that runtime skips/fails
            continue
        out = world["base"] / f"out_{name}"
        out.mkdir()
        # The big annotation (two 34-MP heatmaps) runs under QuPath's Groovy 4 only, when
        # it is there: the other runtime covers the same script code on small regions.
        spec = _spec_for(world, out, train_job=name == trainer, big=name == trainer)
        procs[name] = (start_runner(runtime, spec, out, world["stubs"]), out, spec)
    yield procs
    stop_runners(procs)


@pytest.fixture(scope="module", params=RUNTIMES)
def ran(request, launched):
    """One runtime's results: what each script printed and every image's state after it."""
    entry = launched[request.param]
    if isinstance(entry, str):
        groovy_env.missing(entry)
    proc, out, spec = entry
    results = runner_results(proc, out, spec, timeout=400)
    return {**results, "out": out, "runtime": request.param, "spec": spec}


def test_failures_print_one_line_and_change_nothing(ran):
    logs, states = ran["logs"], ran["states"]
    expected = {
        "err_heat_down": "UNAVAILABLE",
        "err_heat_token": "UNAUTHENTICATED",
        "err_heat_model": "NOT_FOUND",
        "err_heat_detection_only": "NOTHING_SELECTED",
        "err_heat_no_selection": "NOTHING_SELECTED",
        "err_tma_model": "NOT_FOUND",
        "err_tma_down": "UNAVAILABLE",
        "err_tma_no_cores": "NOTHING_TO_DO",
        "err_train_token": "UNAUTHENTICATED",
        "err_export_nothing": "NOTHING_TO_DO",
        "err_export_down": "UNAVAILABLE",
        "err_train_one_class": "NOTHING_TO_DO",
    }
    if not _lib_elsewhere():
        expected["err_no_lib"] = "SETUP"
    initial = [{k: v for k, v in s.items()} for s in states["initial"]]
    for rid, code in expected.items():
        lines = logs[rid].strip().splitlines()
        assert len(lines) == 1 and ONE_LINE.match(lines[0]), (rid, logs[rid])
        assert lines[0].startswith(f"milsil: {code}: "), (rid, lines[0])
        # Nothing changed in any image: same objects, classes, measurements, no change events.
        assert states[rid] == initial, rid
    assert "no-such-model" in logs["err_heat_model"]
    if "err_no_lib" in expected:
        assert "cannot find lib/MilsilBootstrap.groovy" in logs["err_no_lib"]
    assert "cannot reach the milsil server" in logs["err_heat_down"]
    assert "Bearer" in logs["err_train_token"]


def test_export_and_train_from_project(ran, world):
    logs = ran["logs"]
    assert "UNCAUGHT" not in logs["export"] + logs.get("train", "")
    # Bags: user-classified TMA core A-2, 4 image-level labels, 3 classified annotations (two
    # of them consecutive with the same name: separate bags); Region*/unclassified
    # annotations, detections and unclassified cores are not labels.
    m = re.search(
        r"milsil: (?:uploaded|already on the server:) (datasets/\S+) \((\d+) bags, (\d+) patches, (\d+) images; "
        r"classes benign, malignant\)",
        logs["export"],
    )
    assert m, logs["export"]
    dataset, bags, patients = m.group(1), int(m.group(2)), int(m.group(4))
    assert (bags, patients) == (8, 5)
    if "train" not in logs:
        return  # the other runtime ran the training job (see `launched`)
    lines = logs["train"].strip().splitlines()
    # Run for project: the first six images only say they wait; the last does the work.
    assert sum("collected once" in ln for ln in lines) == 6
    assert f"milsil: already on the server: {dataset} (8 bags, 5 images" in logs["train"]
    assert re.search(r"milsil: jobs/\S+ RUNNING epoch 1/1 step \d+/\d+ loss", logs["train"])
    done = re.search(r"milsil: (jobs/\S+) SUCCEEDED: registered model (models/\S+)", lines[-1])
    assert done, logs["train"]
    model_id = done.group(2).split("/", 1)[1]
    row = world["server"].store.get_model(model_id)
    assert row and row["stain_normalization"] == "reinhard"  # the script's setting
    # Training never touches an image.
    assert ran["states"]["train"] == ran["states"]["initial"]


def test_heatmap_annotations_are_children_with_class_and_measurements(ran, world):
    log = ran["logs"]["heatmap"]
    assert re.search(
        r"^milsil: slide_a\.png: roi1: \d+ malignant region\(s\) from models/tiny$", log, re.M
    ), log
    assert re.search(
        r"^milsil: slide_a\.png: roi2: \d+ malignant region\(s\) from models/tiny$", log, re.M
    ), log
    slide = _image_state(ran["states"]["heatmap"], "slide_a.png")
    before = _image_state(ran["states"]["initial"], "slide_a.png")
    assert len(slide["objects"]) == len(before["objects"])  # nothing new at the top level
    roi1, roi2 = _find(slide["objects"], "roi1"), _find(slide["objects"], "roi2")
    assert roi1["children"] and roi2["children"]
    for parent, parent_geom in ((roi1, Polygon(ROI1)), (roi2, shapely.box(100, 100, 160, 160))):
        total = 0.0
        for child in parent["children"]:
            assert child["type"] == "annotation" and child["class"] == "malignant"
            assert child["color"] is not None
            # All five, also on outlines clipped to the polygon roi1 (QuPath's setROI clears
            # an object's measurements: the script puts them back after clipping).
            assert set(FIVE_MEASUREMENTS) <= set(child["measurements"]), child["measurements"]
            geom = _polygon(child)
            assert geom.is_valid and geom.area > 0
            # Clipped to the parent (QuPath's children lie inside their parent).
            assert geom.difference(parent_geom).area < 1e-6 * parent_geom.area
            if parent is roi1:  # `area` is the clipped outline's
                assert child["measurements"]["area"] == pytest.approx(child["area"])
            assert child["measurements"]["mean_probability"] >= world["threshold"] - 1e-6
            total += geom.area
        if parent is roi2:
            # The outlines cover the samples at or above the threshold (stride 2: 2x2 cells).
            frac = float((world["prob"][50:80, 50:80] >= world["threshold"]).mean())
            assert total / parent_geom.area == pytest.approx(frac, abs=0.12)
    # annotationClass (for "Run for project", where nothing is selected): that class only.
    lines = ran["logs"]["heatmap_by_class"].strip().splitlines()
    assert len(lines) == 2 and NO_STATISTICS.fullmatch(lines[0]), lines  # the tiny model's
    assert re.fullmatch(
        r"milsil: slide_a\.png: roi1: \d+ malignant region\(s\) from models/tiny", lines[1]
    )
    # The whole-image variant with probability tiles for measurement maps.
    log = ran["logs"]["heatmap_whole"]
    assert re.search(
        r"train_b1\.png: whole image: \d+ malignant region\(s\), 36 probability tile\(s\)", log
    ), log
    whole = _image_state(ran["states"]["heatmap_whole"], "train_b1.png")
    tiles = [o for o in whole["objects"] if o["type"] == "tile"]
    assert len(tiles) == 36
    for t in tiles:
        p = t["measurements"]
        assert p["milsil p(benign)"] + p["milsil p(malignant)"] == pytest.approx(1, abs=1e-5)
    # The tiles cover the region exactly: no gaps (union) and no overlaps (sum of areas).
    polys = [_polygon(t) for t in tiles]
    union = shapely.union_all(polys)
    assert union.area == pytest.approx(96 * 96, rel=1e-6)
    assert sum(p.area for p in polys) == pytest.approx(96 * 96, rel=1e-6)
    # Each tile is its sample's cell as milsil/wsi/geojson.py cell_edges draws it: sample j is
    # computed at region pixel j * 16, centre j * 16 + 0.5 (the header's origin_x + j * step);
    # the cell runs half a stride either side of it, clipped to the image (downsample 1).
    edges = [float(e) for e in cell_edges(6, 16, 96)]
    assert edges == [0.0, 8.5, 24.5, 40.5, 56.5, 72.5, 96.0]
    samples = [j * 16 + 0.5 for j in range(6)]
    cells = set()
    for poly in polys:
        x0, y0, x1, y1 = poly.bounds
        assert poly.area == pytest.approx((x1 - x0) * (y1 - y0))  # a rectangle
        col = min(range(6), key=lambda j: abs(edges[j] - x0))
        row = min(range(6), key=lambda i: abs(edges[i] - y0))
        assert (x0, x1) == pytest.approx((edges[col], edges[col + 1]))
        assert (y0, y1) == pytest.approx((edges[row], edges[row + 1]))
        assert x0 <= samples[col] < x1 and y0 <= samples[row] < y1
        if 0 < col < 5 and 0 < row < 5:  # unclipped: the tile's centre is the sample position
            assert ((x0 + x1) / 2, (y0 + y1) / 2) == pytest.approx((samples[col], samples[row]))
        cells.add((row, col))
    assert len(cells) == 36


def test_imported_geojson_follows_qupath_rules(ran):
    files = sorted((ran["out"] / "geojson").glob("*.json"))
    assert len(files) >= 3  # heatmap roi1 + roi2, whole image, TMA cores
    for f in files:
        doc = json.loads(f.read_text())
        assert doc["type"] == "FeatureCollection"
        for feat in doc["features"]:
            props = feat["properties"]
            assert props["objectType"] in {"annotation", "detection", "tile", "cell", "tmaCore"}
            cls = props["classification"]
            assert isinstance(cls["name"], str) and len(cls["color"]) == 3
            assert all(isinstance(c, int) and 0 <= c <= 255 for c in cls["color"])
            assert all(isinstance(v, float | int) for v in props["measurements"].values())
            assert feat["geometry"]["type"] in {"Polygon", "MultiPolygon"}
            geom = shape(feat["geometry"])
            assert geom.is_valid, (f.name, shapely.is_valid_reason(geom))
            # QuPath 0.6 snaps to 0.01 px on import; the polygon must stay valid after that.
            assert shapely.set_precision(geom, 0.01).is_valid
            assert re.fullmatch(r"[0-9a-f-]{36}", feat["id"])


def test_tma_batch_classifies_cores_and_appends_csv(ran, world):
    logs, state = ran["logs"], ran["states"]["tma"]
    log = logs["tma"]
    assert "UNCAUGHT" not in log
    assert re.search(r"tma_1\.png: 3 core\(s\) classified with models/tiny", log), log
    assert re.search(
        r"tma_2\.png: 1 core\(s\) classified with models/tiny .*too small.*C-2", log
    ), log
    # Images without cores say so, once each, and the project run goes on.
    assert log.count("NOTHING_TO_DO") == 5
    rows = list(csv.DictReader((ran["out"] / "tma_summary.csv").open()))
    assert [(r["image"], r["core"]) for r in rows] == [
        ("tma_1.png", "A-1"),
        ("tma_1.png", "A-2"),
        ("tma_1.png", "B-2"),
        ("tma_2.png", "C-1"),
    ]
    tma1 = _image_state(state, "tma_1.png")
    for row in rows[:3]:
        core = _find(tma1["objects"], row["core"])
        assert core["class"] == row["class"]
        p = [float(row["p(benign)"]), float(row["p(malignant)"])]
        assert sum(p) == pytest.approx(1, abs=1e-4)
        assert core["measurements"]["milsil p(benign)"] == pytest.approx(p[0], abs=1e-5)
        assert core["measurements"]["milsil patches"] == float(row["patches"])
        assert row["class"] == ("benign", "malignant")[int(np.argmax(p))]
        for child in core["children"]:  # addHeatmap: outlines inside the (elliptic) core
            x, y, w, h = CORES[row["core"]][:4]
            ellipse = shapely.affinity.scale(
                shapely.Point(x + w / 2, y + h / 2).buffer(1, 256), w / 2, h / 2
            )
            assert _polygon(child).difference(ellipse).area < 0.02 * ellipse.area
            assert set(FIVE_MEASUREMENTS) <= set(child["measurements"]), child["measurements"]
    assert (
        _find(tma1["objects"], "B-1")["missing"]
        and not _find(tma1["objects"], "B-1")["measurements"]
    )
    # A-1's probabilities equal the model's MIL output on the same 9 patches (32 px grid in the core).
    x0, y0, side = 20, 20, 32
    tiles = np.stack(
        [
            world["pixels"]["tma_1.png"][y : y + side, x : x + side]
            for y in range(y0, y0 + 96, side)
            for x in range(x0, x0 + 96, side)
        ]
    )
    assert float(rows[0]["patches"]) == 9
    model = world["model"]
    mean, std = (torch.tensor(v).view(1, 1, 3, 1, 1) for v in model.normalization)
    bag = (torch.from_numpy(tiles).permute(0, 3, 1, 2)[None].float() / 255 - mean) / std
    with torch.no_grad():
        expected = torch.softmax(model(bag).mil_logits, dim=1)[0].numpy()
    np.testing.assert_allclose(
        [float(rows[0]["p(benign)"]), float(rows[0]["p(malignant)"])], expected, atol=1e-4
    )


def test_server_slides_fall_back_to_streaming_pixels_with_one_line(ran):
    lines = ran["logs"]["slide_fallback"].strip().splitlines()
    assert len(lines) == 3 and NO_STATISTICS.fullmatch(lines.pop(1)), lines  # the tiny model's
    assert re.fullmatch(
        r"milsil: slide_a\.png: roi2: the server cannot read the slide \(no slidePathMap entry "
        r"matches \S+slide_a\.png\); streaming pixels instead",
        lines[0],
    )
    assert re.fullmatch(
        r"milsil: slide_a\.png: roi2: \d+ malignant region\(s\) from models/tiny", lines[1]
    )


def test_an_annotation_larger_than_the_old_limit_in_both_modes(ran):
    """A 5800 x 5800 annotation (33.6 MP, over the old 2^25 per-request limit) on a
    5832 x 5832 image: streamed in row order with progress lines, never more than one tile
    read at once; and read by the server itself through slidePathMap (no pixel read by the
    script). Both give the same outlines, clipped to the annotation."""
    logs = ran["logs"]
    if "big_stream" not in logs:
        pytest.skip("the big annotation runs under one runtime only (see `launched`)")
    progress = re.compile(
        r"^milsil: big\.png: tissue: \d{1,2}% \([\d,]+/[\d,]+ tiles\), eta \d+(\.\d)? (s|min|h)$",
        re.M,
    )
    done = re.compile(
        r"^milsil: big\.png: tissue: \d+ malignant region\(s\) from models/small$", re.M
    )
    for rid in ("big_slide", "big_stream"):
        assert "UNCAUGHT" not in logs[rid] and "streaming pixels instead" not in logs[rid], logs[
            rid
        ]
        assert progress.search(logs[rid]) and done.search(logs[rid]), logs[rid]
    reads = {
        rid: json.loads((ran["out"] / f"{rid}.reads.json").read_text())
        for rid in ("big_slide", "big_stream")
    }
    assert reads["big_slide"]["big.png"] == 0  # the server read the slide
    assert 0 < reads["big_stream"]["big.png"] <= 513 * 513  # one tile (plus overlap) at a time
    roi = Polygon(BIG_ROI)
    slide_children = _find(
        _image_state(ran["states"]["big_slide"], "big.png")["objects"], "tissue"
    )["children"]
    all_children = _find(_image_state(ran["states"]["big_stream"], "big.png")["objects"], "tissue")[
        "children"
    ]
    stream_children = all_children[len(slide_children) :]
    assert slide_children and stream_children
    x0, y0, x1, y1 = roi.bounds
    for c in slide_children + stream_children:  # clipped to the annotation (its bounds here)
        xs = [p[0] for ring in c["rings"] for p in ring]
        ys = [p[1] for ring in c["rings"] for p in ring]
        assert x0 - 0.01 <= min(xs) and max(xs) <= x1 + 0.01
        assert y0 - 0.01 <= min(ys) and max(ys) <= y1 + 0.01
        assert {"area", "mean_probability", "max_probability"} <= set(c["measurements"])
    # The outlines themselves (holes and all), as the scripts imported them: the server's,
    # clipped to the annotation by the server (slide) or, here as in the script, after.
    docs = [json.loads(f.read_text()) for f in sorted((ran["out"] / "geojson").glob("*.json"))]
    big = [d for d in docs if d["features"] and _within(d, x0, x1)]
    slide_doc = next(
        d for d in big if "mean_logit" not in d["features"][0]["properties"]["measurements"]
    )
    stream_doc = next(
        d for d in big if "mean_logit" in d["features"][0]["properties"]["measurements"]
    )
    unions = [
        shapely.union_all([shape(f["geometry"]) for f in d["features"]]).intersection(roi)
        for d in (slide_doc, stream_doc)
    ]
    # minAreaMicrons applies to the clipped outline there (the server clips) and to the whole one
    # here (the script clips): compare away from the annotation's border.
    inner = roi.buffer(-300)
    inside = [u.intersection(inner) for u in unions]
    assert inside[0].area > 0.05 * inner.area
    assert inside[0].symmetric_difference(inside[1]).area < 1e-3 * inside[0].area
    # The children are those outlines (areas as QuPath measures the clipped ROIs).
    assert sum(c["area"] for c in slide_children) == pytest.approx(unions[0].area, rel=1e-3)
    assert sum(c["area"] for c in stream_children) == pytest.approx(unions[1].area, rel=1e-3)


def _within(doc: dict, x0: float, x1: float) -> bool:
    """A document of outlines of the big image: some coordinate beyond the small images."""
    coords = shapely.get_coordinates(shape(doc["features"][0]["geometry"]))
    return (
        coords[:, 0].max() > 300 and coords[:, 0].min() >= x0 - 1 and coords[:, 0].max() <= x1 + 1
    )


def test_an_image_with_no_file_is_named_by_its_name(ran):
    """Every line names the image as users know it, not by its server path (a random id)."""
    logs = ran["logs"]
    assert logs["no_file_nothing"].strip().splitlines() == [
        f"milsil: NOTHING_SELECTED: {NO_FILE_NAME}: select one or more area annotations "
        "(or set wholeImageIfNoSelection = true); nothing was changed"
    ]
    whole = logs["no_file_whole"].strip().splitlines()
    assert whole and whole[-1].startswith(f"milsil: {NO_FILE_NAME}: whole image: "), whole
    assert "UNCAUGHT" not in logs["no_file_whole"]
