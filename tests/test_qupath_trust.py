"""The QuPath scripts say where the model cannot judge (issue 20): against the real server.

A model with a familiarity reference fitted the way training fits it
(``milsil.engine.familiarity.fit_familiarity``: windows of synthetic H&E images, the
threshold calibrated on held-out and training patients) is shown one image whose left half is synthetic
H&E (in distribution) and whose right half is the same kind of tissue in grayscale (out of
distribution). Each script (heatmap_to_annotations, tma_batch, classify_cells) runs on it
through the QuPath stand-ins (qupath_scripts/tests/stubs) and the real server, and must:

- print ``milsil: <image>: <region>: unlike the training data (score S, threshold T)`` for
  every region in the grayscale half (an unnamed annotation named by its class and short
  id), and no such line for the H&E half;
- put ``milsil OOD score`` on every object it creates or measures, below the threshold in
  the H&E half, above it in the grayscale half (the score of the line);
- give the outlines, cores and cells of the grayscale half the class ``milsil: unlike
  training`` instead of the confident class, and the H&E half its plain class;
- with ``markUnlikeTraining = false``, give the plain classes everywhere;
- with a model without training statistics: one line saying so per run, no measurement,
  the plain classes.

The server reading the slide itself (``serverSlides``, AnnotateSlide) is checked on a
larger image of the same two halves, one slide tile (1024 px, the server's default) each:
each outline carries its own slide tile's score.

Under Debian's Groovy 2.4 and QuPath 0.6's Groovy 4.0.26. Missing Groovy, jars or javac:
skip locally, FAIL when CI is set.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from qupath_support import (
    NO_STATISTICS,
    SCRIPTS,
    find,
    groovy_env,
    image_state,
    runner_fixtures,
)
from server_support import register_tiny_model, running_server, tiny_model

from milsil.data.bags import BagRecord
from milsil.data.synth import synth_image
from milsil.engine.familiarity import fit_familiarity
from milsil.inference.familiarity import distance_map, images_familiarity, region_score
from milsil.models import save_checkpoint
from milsil.models.familiarity import set_model_familiarity
from milsil.wsi.tiff import write_pyramidal_tiff

TOKEN = "trust-s3cret"
SIDE = 96  # each half of the image
PATCH = 32  # the model's training patch size (its provenance), the TMA bags' patches
STRIDE = 2
CONTEXT = 4  # BagNet-9's context pixels
FAMILIAR = [8, 8, 80, 80]  # x, y, w, h: inside the H&E half
UNLIKE = [104, 8, 80, 80]  # inside the grayscale half
UNNAMED = [120, 24, 48, 48]  # an unnamed "Tumor" annotation in the grayscale half
SLIDE_TILE = 1024  # the server's default slide tile (milsil.wsi.settings.DEFAULT_TILE)
SLIDE_FAMILIAR = [16, 16, 992, 992]  # in slide tile (0, 0): H&E
SLIDE_UNLIKE = [1040, 16, 992, 992]  # in slide tile (0, 1): grayscale
UNLIKE_CLASS = "milsil: unlike training"
MEASUREMENT = "milsil OOD score"
WARNING = re.compile(
    r"milsil: (?P<image>[^:]+): (?P<region>.+): unlike the training data "
    r"\(score (?P<score>\S+), threshold (?P<threshold>\S+)\)"
)


def _fitted_model(directory: Path):
    """The tiny BagNet-9 (width 16) with a reference fitted as training fits it: 10 synthetic
    H&E images of 10 patients (PNGs in ``directory``) fit the projection, 20 more patients
    calibrate the threshold."""
    model = tiny_model(width=16)
    records = []
    for i in range(30):
        rgb, _ = synth_image(np.random.default_rng(100 + i), SIDE, i % 2 == 1)
        path = directory / f"train_{i}.png"
        Image.fromarray(rgb).save(path)
        records.append(BagRecord(str(path), i % 2, f"patient{i}"))
    reference = fit_familiarity(model, records[:10], records[10:], PATCH)
    set_model_familiarity(model, reference)
    return model, reference


def _halves(side: int, seed: int) -> np.ndarray:
    """``side`` x ``2 side`` RGB: synthetic H&E on the left, another synthetic H&E image
    in grayscale on the right."""
    familiar, _ = synth_image(np.random.default_rng(seed), side, True)
    tissue, _ = synth_image(np.random.default_rng(seed + 1), side, True)
    gray = np.repeat(tissue.mean(axis=2, keepdims=True), 3, axis=2).round().astype(np.uint8)
    return np.concatenate([familiar, gray], axis=1)


def _cells() -> list[dict]:
    """Square cells with square nuclei on a 16 px grid, in both halves (none on the seam)."""
    objects = []
    for row in range(5):
        for col in [*range(5), *range(7, 11)]:
            x, y = 10 + 16 * col, 10 + 16 * row
            cell = [[x, y], [x + 12, y], [x + 12, y + 12], [x, y + 12]]
            nucleus = [[x + 3, y + 3], [x + 9, y + 3], [x + 9, y + 9], [x + 3, y + 9]]
            objects.append(
                {"kind": "cell", "coords": cell, "nucleus": nucleus, "name": f"c{row}-{col}"}
            )
    return objects


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The server with the fitted model ("known") and one without statistics ("tiny"), the
    half-H&E half-grayscale image, the expected scores from the library."""
    base = tmp_path_factory.mktemp("trust")
    stubs = groovy_env.compile_stubs(base / "stub_classes")
    model, reference = _fitted_model(base)
    rgb = _halves(SIDE, 1)
    Image.fromarray(rgb).save(base / "trust.png")
    slides = base / "slides"
    slides.mkdir()
    big = _halves(SLIDE_TILE, 3)
    Image.fromarray(big).save(base / "slide.png")
    write_pyramidal_tiff(slides / "slide.tif", big, mpp=0.5)

    def score(box):  # the library's score of a region (streamed with its context), with
        x, y, w, h = box  # the region's own pixels for the appearance part
        d = distance_map(
            model, rgb[y - CONTEXT : y + h + CONTEXT, x - CONTEXT : x + w + CONTEXT],
            stride=STRIDE, margin=CONTEXT,
        )  # fmt: skip
        return region_score(model, d, pixels=rgb[y : y + h, x : x + w]).score

    def bag(box):  # the library's score of a TMA core's bag (tma_batch's patch grid)
        x, y, _, _ = box
        corners = [(x + i, y + j) for j in (0, PATCH) for i in (0, PATCH)]
        patches = [rgb[py : py + PATCH, px : px + PATCH] for px, py in corners]
        return images_familiarity(model, patches)[1].score

    expected = {"familiar": score(FAMILIAR), "unlike": score(UNLIKE), "unnamed": score(UNNAMED)}
    expected.update({"F-1": bag(FAMILIAR), "U-1": bag(UNLIKE)})
    threshold = reference.threshold
    # The premise: the library calls the grayscale half unlike the training data, the H&E
    # half not (else this test would test nothing).
    for key, value in expected.items():
        assert (value > threshold) == (key not in ("familiar", "F-1")), (key, value, threshold)
    with running_server(base / "server", token=TOKEN, slide_roots=(slides,)) as server:
        path = server.store.root / "tmp" / "known.pt"
        save_checkpoint(model, path, provenance={"config": {"patch_size": PATCH}})
        server.store.register_model(path, "known", display_name="known", move=True)
        register_tiny_model(server, "tiny")  # no training statistics
        yield {
            "base": base,
            "stubs": stubs,
            "server": server,
            "image": base / "trust.png",
            "slide_png": base / "slide.png",
            "slides": slides,
            "expected": expected,
            "threshold": threshold,
        }


def _spec(world, out: Path) -> dict:
    good = {
        "milsil.server": f"127.0.0.1:{world['server'].port}",
        "milsil.token": TOKEN,
        "milsil.model": "known",
        "milsil.timeoutSeconds": "30",
        "milsil.progressEverySeconds": "0",
    }
    heat = dict(
        good,
        **{
            "milsil.stride": str(STRIDE),
            "milsil.threshold": "0",  # every sample inside: each region is one outline
            "milsil.tileSize": "64",
            "milsil.minAreaMicrons": "-1",
            "milsil.simplify": "-1",
            "milsil.addTiles": "true",
            "milsil.tileStride": "16",
        },
    )
    tma = dict(heat, **{"milsil.csvPath": str(out / "tma.csv"), "milsil.addHeatmap": "true"})
    cells = dict(
        good,
        **{"milsil.classify": "true", "milsil.regionSize": str(SIDE), "milsil.tileSize": "48"},
    )
    plain = {"milsil.markUnlikeTraining": "false"}
    nostats = {"milsil.model": "tiny"}
    annotations = [
        {"kind": "annotation", "shape": "rect", "coords": FAMILIAR, "name": "familiar"},
        {"kind": "annotation", "shape": "rect", "coords": UNLIKE, "name": "unlike"},
        {"kind": "annotation", "shape": "rect", "coords": UNNAMED, "class": "Tumor"},
    ]
    cores = [
        {"kind": "tma", "name": "F-1", "coords": FAMILIAR, "missing": False},
        {"kind": "tma", "name": "U-1", "coords": UNLIKE, "missing": False},
    ]
    # One image per run (the same pixels): each run's objects stay apart.
    kinds = {
        "heat": annotations,
        "heat_plain": annotations,
        "heat_nostats": annotations,
        "tma": cores,
        "tma_plain": cores,
        "cells": _cells(),
        "cells_plain": _cells(),
        "cells_nostats": _cells(),
    }
    images = [
        {"name": f"{rid}.png", "path": str(world["image"]), "standalone": True, "objects": objects}
        for rid, objects in kinds.items()
    ]
    images.append(
        {
            "name": "slide.png",
            "path": str(world["slide_png"]),
            "slide": str(world["slides"] / "slide.tif"),
            "standalone": True,
            "objects": [
                {"kind": "annotation", "shape": "rect", "coords": box, "name": name}
                for name, box in (("familiar", SLIDE_FAMILIAR), ("unlike", SLIDE_UNLIKE))
            ],
        }
    )
    scripts = {"heat": "heatmap_to_annotations", "tma": "tma_batch", "cells": "classify_cells"}
    props = {"heat": heat, "tma": tma, "cells": cells}
    runs = []
    for index, rid in enumerate(kinds):
        kind, _, variant = rid.partition("_")
        settings = dict(props[kind], **{"plain": plain, "nostats": nostats}.get(variant, {}))
        if variant == "plain" and kind == "tma":
            settings["milsil.csvPath"] = str(out / "tma_plain.csv")
        run = {
            "id": rid,
            "script": str(SCRIPTS / f"{scripts[kind]}.groovy"),
            "properties": settings,
            "image": index,
        }
        if kind == "heat":
            run["select"] = ["familiar", "unlike", None]
        runs.append(run)
    slide = dict(
        heat,
        **{
            "milsil.stride": "8",
            "milsil.addTiles": "false",
            "milsil.serverSlides": "true",
            "milsil.slidePathMap": f"{world['slides']}=",
        },
    )
    runs.append(
        {
            "id": "heat_slide",
            "script": str(SCRIPTS / "heatmap_to_annotations.groovy"),
            "properties": slide,
            "image": len(images) - 1,
            "select": ["familiar", "unlike"],
        }
    )
    return {"out": str(out), "images": images, "runs": runs}


# Both runtimes' JVMs, started at once (launched); one runtime's results (ran).
launched, ran = runner_fixtures(_spec)


def _warnings(log: str) -> dict[str, tuple[str, str]]:
    """region -> (score, threshold) of the run's warning lines (each region at most once)."""
    found = [WARNING.fullmatch(line) for line in log.splitlines()]
    regions = [m.group("region") for m in found if m]
    assert len(regions) == len(set(regions)), log
    return {m.group("region"): (m.group("score"), m.group("threshold")) for m in found if m}


def _objects(objects: list) -> list[dict]:
    """Every object below ``objects`` (depth first)."""
    out = []
    for o in objects:
        out.append(o)
        out.extend(_objects(o["children"]))
    return out


def _g(value: float) -> str:
    """A number as the lines write it (the CLI's format)."""
    return f"{value:.3g}"


def test_heatmap_outlines_unlike_the_training_data(ran, world):
    log, state = ran["logs"]["heat"], ran["states"]["heat"]
    assert "UNCAUGHT" not in log and not NO_STATISTICS.search(log), log
    objects = image_state(state, "heat.png")["objects"]
    unnamed = next(o for o in objects if o.get("name") is None and o.get("class") == "Tumor")
    unnamed_label = "Tumor " + unnamed["id"][:8]
    t = world["threshold"]
    exp = world["expected"]
    # The warning: the two grayscale regions, by name, or class and short id; not the H&E one.
    assert _warnings(log) == {
        "unlike": (_g(exp["unlike"]), _g(t)),
        unnamed_label: (_g(exp["unnamed"]), _g(t)),
    }, log
    parents = {"familiar": find(objects, "familiar"), "unlike": find(objects, "unlike")}
    for name, parent in [*parents.items(), ("unnamed", unnamed)]:
        outlines = [c for c in parent["children"] if c["type"] == "annotation"]
        tiles = [c for c in parent["children"] if c["type"] == "tile"]
        assert outlines and tiles, (name, parent["children"])
        for o in outlines + tiles:
            # Every object, tiles too, carries its region's score (the library's, as the line says).
            assert o["measurements"][MEASUREMENT] == pytest.approx(exp[name], rel=1e-3), name
        for o in outlines:
            if name == "familiar":
                assert o["classification"] == "malignant", o  # the confident class
            else:
                assert o["classification"] == UNLIKE_CLASS, o
        assert all("classification" not in tile for tile in tiles)  # tiles have no class
    # The result lines count them, naming regions as the warnings do.
    assert re.search(r"trust\.png: familiar: 1 malignant region\(s\), \d+ probability", log), log
    assert re.search(
        rf"trust\.png: unlike: 1 malignant region\(s\) \(1 unlike the training data: class "
        rf"{UNLIKE_CLASS}\), \d+ probability",
        log,
    ), log
    assert re.search(
        rf"trust\.png: {unnamed_label}: 1 malignant region\(s\) \(1 unlike the training data", log
    ), log


def test_marking_off_keeps_the_confident_class(ran, world):
    log, state = ran["logs"]["heat_plain"], ran["states"]["heat_plain"]
    objects = image_state(state, "heat_plain.png")["objects"]
    # Still said and measured, only the class is the plain one.
    assert set(_warnings(log)) >= {"unlike"}, log
    outlines = [o for o in _objects(objects) if o["type"] == "annotation" and o["measurements"]]
    assert len(outlines) == 3, outlines
    assert {o["classification"] for o in outlines} == {"malignant"}
    assert all(MEASUREMENT in o["measurements"] for o in outlines)
    assert "class kept: markUnlikeTraining = false" in log, log


def test_a_model_without_statistics_says_so_once_and_changes_nothing_else(ran):
    logs, states = ran["logs"], ran["states"]
    for rid in ("heat_nostats", "cells_nostats"):
        log = logs[rid]
        assert "UNCAUGHT" not in log, log
        lines = log.strip().splitlines()
        # One line per run (three regions, two cell regions), no warning.
        assert sum(bool(NO_STATISTICS.fullmatch(line)) for line in lines) == 1, lines
        assert not _warnings(log), log
        assert "models/tiny carries no training statistics" in log
        objects = _objects(image_state(states[rid], f"{rid}.png")["objects"])
        assert all(MEASUREMENT not in o["measurements"] for o in objects)
        assert all(o.get("classification") != UNLIKE_CLASS for o in objects)
    outlines = [
        o
        for o in _objects(image_state(states["heat_nostats"], "heat_nostats.png")["objects"])
        if o["type"] == "annotation" and o["measurements"]
    ]
    assert len(outlines) == 3 and {o["classification"] for o in outlines} == {"malignant"}


def test_tma_cores_unlike_the_training_data(ran, world):
    t = world["threshold"]
    exp = world["expected"]
    for rid in ("tma", "tma_plain"):
        log, state = ran["logs"][rid], ran["states"][rid]
        assert "UNCAUGHT" not in log, log
        # One line per core (its bag), whether or not its outlines say the same.
        assert _warnings(log) == {"U-1": (_g(exp["U-1"]), _g(t))}, log
        cores = {o["name"]: o for o in image_state(state, f"{rid}.png")["objects"]}
        rows = {r["core"]: r for r in csv.DictReader((ran["out"] / f"{rid}.csv").open())}
        for name in ("F-1", "U-1"):
            core = cores[name]
            assert core["measurements"][MEASUREMENT] == pytest.approx(exp[name], rel=1e-3)
            assert float(rows[name]["ood_score"]) == pytest.approx(exp[name], rel=1e-3)
            assert rows[name]["unlike_training"] == ("true" if name == "U-1" else "false")
            predicted = rows[name]["class"]  # the model's class, whatever is drawn
            unlike = name == "U-1" and rid == "tma"
            assert core["classification"] == (UNLIKE_CLASS if unlike else predicted), core
            outlines = [c for c in core["children"] if c["type"] == "annotation"]
            assert outlines and all(MEASUREMENT in c["measurements"] for c in outlines)
            assert {c["classification"] for c in outlines} == {
                UNLIKE_CLASS if unlike else "malignant"
            }
        if rid == "tma":
            assert "(1 core(s) unlike the training data: class milsil: unlike training)" in log


def test_cells_unlike_the_training_data(ran, world):
    t = world["threshold"]
    for rid in ("cells", "cells_plain"):
        log, state = ran["logs"][rid], ran["states"][rid]
        assert "UNCAUGHT" not in log, log
        warned = _warnings(log)
        # The grayscale half's region (the second of the grid) only.
        assert list(warned) == [next(r for r in warned if r.startswith("cells in region 2/2 "))]
        score, threshold = next(iter(warned.values()))
        assert threshold == _g(t)
        cells = [o for o in image_state(state, f"{rid}.png")["objects"] if o["type"] == "cell"]
        assert len(cells) == 45
        for cell in cells:
            m = cell["measurements"]
            right = cell["rings"][0][0][0] > SIDE
            ood = m[MEASUREMENT]
            assert (ood > t) == right, cell["name"]
            if right:
                assert _g(ood) == score  # cells carry the score the line names
            confident = "malignant" if m["milsil p(malignant)"] >= 0.5 else None
            unlike = right and rid == "cells"
            assert cell.get("classification") == (UNLIKE_CLASS if unlike else confident)
    assert (
        "(20 cell(s) unlike the training data: class milsil: unlike training)"
        in (ran["logs"]["cells"])
    )


def test_server_read_slides_judge_each_outline_by_its_slide_tile(ran, world):
    log, state = ran["logs"]["heat_slide"], ran["states"]["heat_slide"]
    assert "UNCAUGHT" not in log and "streaming pixels instead" not in log, log
    assert set(_warnings(log)) == {"unlike"}, log
    t = world["threshold"]
    objects = image_state(state, "slide.png")["objects"]
    for name in ("familiar", "unlike"):
        outlines = [c for c in find(objects, name)["children"] if c["type"] == "annotation"]
        assert outlines, (name, log)
        for o in outlines:
            score = o["measurements"][MEASUREMENT]  # its slide tile's, from the server
            assert (score > t) == (name == "unlike"), (name, score, t)
            assert o["classification"] == (UNLIKE_CLASS if name == "unlike" else "malignant")
