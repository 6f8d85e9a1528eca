"""Familiarity (issue 20) on every inference answer, through a real server and channel.

A width-8 BagNet is trained once on synthetic H&E (the training run fits its familiarity
reference); the server answers ClassifyBag, Heatmap, Annotate, MeasureObjects (streamed
pixels) and AnnotateSlide / SlideHeatmap (a real pyramidal TIFF under --slide-root).
For each: the model with a reference says ``available``, the checkpoint's threshold,
``unlike_training`` for a grayscale input and not for an image of its training data, and
a score equal to the library's ``region_score`` of the same pixels (computed here with
``milsil.inference.familiarity``, never through the server's code); the same weights
saved without the reference (an old checkpoint) answer ``available = false`` and
otherwise exactly as before. The ``milsil client`` commands print the warning line for
the grayscale image only, and the server logs one line per unlike answer.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from PIL import Image
from server_support import RAW_OUTLINES, running_server

from milsil.cli import main
from milsil.client import Familiarity, MilsilClient
from milsil.data import BagRecord, image_to_bag
from milsil.data.appearance import appearance_sums
from milsil.data.synth import patient_style, synth_image
from milsil.engine.config import TrainConfig
from milsil.engine.loop import train_model
from milsil.inference.familiarity import distance_map, images_familiarity, region_score
from milsil.models import (
    FAMILIARITY_KEY,
    atomic_torch_save,
    load_checkpoint,
    model_familiarity,
    read_checkpoint,
)
from milsil.wsi.geojson import qupath_problems
from milsil.wsi.tiff import write_pyramidal_tiff

CLASSES = ["benign", "malignant"]
PATCH = 16
SIZE = 48  # training images: 3x3 patches
TILE = 64  # slide tiles (level-0 pixels at downsample 1)
STRIDE = 8  # slide map stride: 8x8 samples per slide tile
OOD = "milsil OOD score"


def _grayscale(image: np.ndarray) -> np.ndarray:
    """The same tissue without its stain: the strong shift every test sends."""
    gray = image.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    return np.repeat(gray.round().astype(np.uint8)[..., None], 3, axis=2)


def _dataset(root, patients: int = 8, per_patient: int = 4, seed: int = 0):
    """Synthetic H&E images of a few patients (malignant ones hold malignant nuclei)."""
    root.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    records, images = [], []
    for p in range(patients):
        style = patient_style(rng)
        for i in range(per_patient):
            label = (p + i) % 2
            rgb, _ = synth_image(rng, SIZE, bool(label), style=style)
            path = root / f"p{p}_{i}.png"
            Image.fromarray(rgb).save(path)
            records.append(BagRecord(str(path), label, f"p{p}"))
            images.append(rgb)
    return records, images


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    base = tmp_path_factory.mktemp("familiarity")
    records, images = _dataset(base / "images")
    config = TrainConfig(
        width=8, epochs=2, batch_size=4, patch_size=PATCH, seed=0, device="cpu", lr=1e-3
    )
    run = train_model(config, records, [], CLASSES, base / "run")
    model = load_checkpoint(run.best_checkpoint)
    reference = model_familiarity(model)
    assert reference is not None  # the training run fitted it
    # The same weights as a checkpoint written before the reference existed.
    payload = read_checkpoint(run.best_checkpoint)
    del payload[FAMILIARITY_KEY]
    atomic_torch_save(payload, base / "old.pt")

    familiar = np.concatenate([images[4], images[5]], axis=1)  # 96x48: two training images
    shifted = _grayscale(familiar)
    # A slide: its left half H&E of the training data, its right half the same grayscale.
    tissue = np.concatenate([np.concatenate(images[k : k + 3], axis=1) for k in (4, 7, 10)])
    left = tissue[:128, :128]  # 144x144 of training images, cut to 2x2 slide tiles
    slide_pixels = np.concatenate([left, _grayscale(left)], axis=1)  # 128x256
    root = base / "slides"
    root.mkdir()
    write_pyramidal_tiff(root / "half.tif", slide_pixels, mpp=0.5)

    with running_server(base / "server", slide_roots=(root,)) as server:
        server.store.register_model(run.best_checkpoint, "fam", display_name="fam")
        server.store.register_model(base / "old.pt", "old", display_name="old", move=True)
        client = MilsilClient(f"127.0.0.1:{server.port}", timeout=120)
        yield {
            "server": server,
            "client": client,
            "model": model,
            "threshold": reference.threshold,
            "familiar": familiar,
            "shifted": shifted,
            "slide": slide_pixels,
            "base": base,
        }
        client.close()


def _library_score(model, image: np.ndarray, stride: int = 1) -> float:
    """The library's region score of a whole image (its distance map, mirrored borders,
    and its pixels' appearance)."""
    score = region_score(model, distance_map(model, image, stride=stride), pixels=image)
    assert score is not None
    return score.score


def _assert_judged(message, env, unlike: bool, score: float | None = None) -> None:
    f = Familiarity.from_message(message)
    assert f.available
    assert f.threshold == pytest.approx(env["threshold"], rel=1e-12)
    assert f.unlike_training is unlike
    assert f.unlike_training == (f.score > f.threshold)
    if score is not None:
        assert f.score == pytest.approx(score, rel=1e-5)


def _assert_unavailable(message) -> None:
    assert Familiarity.from_message(message) == Familiarity()


# ------------------------------------------------------------------------ the model's metadata


def test_model_info_names_the_method_and_threshold(env):
    client = env["client"]
    fam, old = client.get_model("models/fam"), client.get_model("models/old")
    reference = model_familiarity(env["model"])
    assert fam.familiarity_method == reference.method and fam.familiarity_method
    assert fam.familiarity_threshold == pytest.approx(reference.threshold, rel=1e-12)
    assert (old.familiarity_method, old.familiarity_threshold) == ("", 0.0)
    assert fam.stain_normalization == old.stain_normalization == ""


# ------------------------------------------------------------------------ ClassifyBag


def test_classify_bag_judges_each_tile_and_the_bag(env):
    client, model = env["client"], env["model"]
    for image, unlike in ((env["familiar"], False), (env["shifted"], True)):
        tiles = list(image_to_bag(image, PATCH))
        expected_tiles, expected_bag = images_familiarity(model, tiles)
        response = client.classify_bag("models/fam", tiles)
        _assert_judged(response.familiarity, env, unlike, expected_bag.score)
        assert len(response.tiles) == len(tiles)
        for tile, expected in zip(response.tiles, expected_tiles, strict=True):
            _assert_judged(tile.familiarity, env, expected.unlike_training, expected.score)
        old = client.classify_bag("models/old", tiles)
        _assert_unavailable(old.familiarity)
        assert all(not t.HasField("familiarity") or not t.familiarity.available for t in old.tiles)
        assert list(old.bag_probabilities) == list(response.bag_probabilities)
        assert [list(t.logits) for t in old.tiles] == [list(t.logits) for t in response.tiles]


# ------------------------------------------------------------------------ Heatmap


def test_heatmap_judges_each_tile_then_the_region_last(env):
    client, model = env["client"], env["model"]
    for image, unlike in ((env["familiar"], False), (env["shifted"], True)):
        distance = distance_map(model, image).numpy()
        # The raw stream: the region's familiarity comes last, alone.
        responses = _raw(client, client.inference.Heatmap, _heatmap_requests(image))
        kinds = [r.ListFields()[0][0].name for r in responses]  # the one field each sets
        assert kinds[-1] == "familiarity" and kinds.count("familiarity") == 1
        assert kinds.index("header") < kinds.index("tile") < len(kinds) - 1
        _assert_judged(responses[-1].familiarity, env, unlike, _library_score(model, image))
        for r in responses:
            if r.HasField("tile"):
                t = r.tile
                box = np.s_[t.row : t.row + t.rows, t.col : t.col + t.cols]  # stride 1
                expected = region_score(model, distance[box], pixels=image[box])
                _assert_judged(t.familiarity, env, expected.unlike_training, expected.score)
        # The typed client: the same, and the old model's map unchanged, unjudged.
        heat = client.heatmap("models/fam", image, tile_size=32)
        assert heat.familiarity == Familiarity.from_message(responses[-1].familiarity)
        old = client.heatmap("models/old", image, tile_size=32)
        assert old.familiarity == Familiarity()
        assert all(f == Familiarity() for _, f in old.tile_familiarity)
        np.testing.assert_array_equal(old.logits, heat.logits)


def _raw(client, method, requests) -> list:
    """A streamed call's answers as they came (queue places left out)."""
    answers = method(requests, metadata=client.metadata, timeout=120)
    return [r for r in answers if not r.HasField("queue")]


def _heatmap_requests(image: np.ndarray):
    from milsil.client.regions import interior_region, region_requests
    from milsil.v1 import inference_service_pb2

    config = inference_service_pb2.HeatmapConfig(
        model="models/fam", region=interior_region(image, 0, 0, 1.0, 0), stride=1
    )
    return region_requests(
        {"config": config}, image, 0, 0, 1.0, 0, 32, "raw", inference_service_pb2.HeatmapRequest
    )


# ------------------------------------------------------------------------ Annotate


def test_annotate_marks_the_region_and_every_object(env):
    client, model = env["client"], env["model"]
    for image, unlike in ((env["familiar"], False), (env["shifted"], True)):
        kwargs = {"threshold_on": "logit", "threshold": -1e9, "outline": RAW_OUTLINES}
        collection, response = client.annotate("models/fam", image, **kwargs)
        expected = _library_score(model, image)
        _assert_judged(response.familiarity, env, unlike, expected)
        assert collection["features"] and len(response.objects) == len(collection["features"])
        for obj in response.objects:
            assert obj.familiarity == response.familiarity
        for feature in collection["features"]:
            assert feature["properties"]["measurements"][OOD] == pytest.approx(expected, rel=1e-5)
        assert qupath_problems(collection) == []
        old_collection, old = client.annotate("models/old", image, **kwargs)
        _assert_unavailable(old.familiarity)
        assert all(not o.familiarity.available for o in old.objects)
        for a, b in zip(old_collection["features"], collection["features"], strict=True):
            assert OOD not in a["properties"]["measurements"]
            b["properties"]["measurements"].pop(OOD)
            assert (a["geometry"], a["properties"]) == (b["geometry"], b["properties"])


# ------------------------------------------------------------------------ MeasureObjects


def test_measure_objects_carry_the_region_familiarity(env):
    client, model = env["client"], env["model"]
    cells = [
        ("a", {"type": "Polygon", "coordinates": [[[4, 4], [20, 4], [20, 20], [4, 20], [4, 4]]]}),
        ("b", {"type": "Polygon", "coordinates": [[[50, 8], [70, 8], [60, 30], [50, 8]]]}),
    ]
    for image, unlike in ((env["familiar"], False), (env["shifted"], True)):
        result = client.measure_objects("models/fam", cells, image)
        expected = _library_score(model, image)
        assert result.familiarity.available and result.familiarity.unlike_training is unlike
        assert result.familiarity.score == pytest.approx(expected, rel=1e-5)
        assert result.familiarity.threshold == pytest.approx(env["threshold"], rel=1e-12)
        rows = result.measurements()
        assert all(row[OOD] == result.familiarity.score for row in rows)
        raw = _raw(client, client.inference.MeasureObjects, _measure_requests(cells, image))
        header = next(r.header for r in raw if r.HasField("header"))
        _assert_judged(header.familiarity, env, unlike, expected)
        measured = [m for r in raw if r.HasField("measurements") for m in r.measurements.objects]
        assert [m.familiarity for m in measured] == [header.familiarity] * len(cells)
        old = client.measure_objects("models/old", cells, image)
        assert old.familiarity == Familiarity()
        assert all(OOD not in row for row in old.measurements())
        np.testing.assert_array_equal(old.mean_logits, result.mean_logits)


def _measure_requests(cells, image):
    from milsil.client.objects import object_messages
    from milsil.client.regions import interior_region, region_requests
    from milsil.v1 import inference_service_pb2

    Request = inference_service_pb2.MeasureObjectsRequest
    config = inference_service_pb2.MeasureObjectsConfig(
        model="models/fam", region=interior_region(image, 0, 0, 1.0, 0)
    )
    yield Request(config=config)
    for batch in object_messages(cells, 10):
        yield Request(objects=batch)
    yield from region_requests({}, image, 0, 0, 1.0, 0, 64, "raw", Request)


# ------------------------------------------------------------------------ slides


SLIDE = {"stride": STRIDE, "tile_size": TILE, "tissue_only": False}


def test_annotate_slide_features_carry_their_slide_tile(env):
    client, model = env["client"], env["model"]
    blocks = _tile_blocks(env)
    looks = _tile_appearance(env)
    tiles = {k: region_score(model, b, appearance=looks[k]).score for k, b in blocks.items()}
    threshold = env["threshold"]
    # One ROI per half (inset from the tile edges): the features of each half lie in its tiles.
    for x0, unlike in ((4, False), (132, True)):
        roi = {
            "type": "Polygon",
            "coordinates": [[[x0, 4], [x0 + 120, 4], [x0 + 120, 124], [x0, 124], [x0, 4]]],
        }
        collection, result = client.annotate_slide(
            "models/fam", "half.tif", threshold=0.0, roi=roi, outline=RAW_OUTLINES, **SLIDE
        )
        assert collection["features"] and qupath_problems(collection) == []
        half = [s for (r, c), s in tiles.items() if (c >= 2) == (x0 > 128)]
        for feature in collection["features"]:
            judged = feature["properties"]["milsil_familiarity"]
            assert judged["score"] == pytest.approx(max(half), rel=1e-5)
            assert judged["threshold"] == pytest.approx(threshold, rel=1e-12)
            assert judged["unlike_training"] is unlike
            assert feature["properties"]["measurements"][OOD] == judged["score"]
        # The whole slide: the computed tiles (those the ROI touches) as one region.
        touched = [k for k in blocks if k[1] * TILE < x0 + 120 and (k[1] + 1) * TILE > x0]
        computed = np.concatenate([blocks[k] for k in touched])
        expected = region_score(model, computed, appearance=sum(looks[k] for k in touched))
        _assert_judged(result.summary.familiarity, env, expected.unlike_training, expected.score)
        old_collection, old = client.annotate_slide(
            "models/old", "half.tif", threshold=0.0, roi=roi, outline=RAW_OUTLINES, **SLIDE
        )
        _assert_unavailable(old.summary.familiarity)
        for a, b in zip(old_collection["features"], collection["features"], strict=True):
            assert "milsil_familiarity" not in a["properties"]
            assert OOD not in a["properties"]["measurements"]
            assert a["geometry"] == b["geometry"]


def _tile_appearance(env) -> dict[tuple[int, int], np.ndarray]:
    """The library's appearance sums of each slide tile's own pixels."""
    rows, cols = env["slide"].shape[0] // TILE, env["slide"].shape[1] // TILE
    return {
        (r, c): appearance_sums(env["slide"][r * TILE : (r + 1) * TILE, c * TILE : (c + 1) * TILE])
        for r in range(rows)
        for c in range(cols)
    }


def _tile_blocks(env) -> dict[tuple[int, int], np.ndarray]:
    """The library's distance map of the whole slide image, cut into its slide tiles."""
    distance = distance_map(env["model"], env["slide"], stride=STRIDE).numpy()
    t = TILE // STRIDE
    rows, cols = env["slide"].shape[0] // TILE, env["slide"].shape[1] // TILE
    return {
        (r, c): distance[r * t : (r + 1) * t, c * t : (c + 1) * t]
        for r in range(rows)
        for c in range(cols)
    }


def test_slide_heatmap_judges_each_block_and_the_slide(env):
    client, model = env["client"], env["model"]
    blocks = _tile_blocks(env)
    heat, summary = client.slide_heatmap(
        "models/fam", "half.tif", block_size=TILE // STRIDE, **SLIDE
    )
    looks = sum(_tile_appearance(env).values())
    whole = region_score(model, np.concatenate(list(blocks.values())), appearance=looks)
    _assert_judged(summary.familiarity, env, whole.unlike_training, whole.score)
    assert heat.familiarity == Familiarity.from_message(summary.familiarity)
    assert len(heat.tile_familiarity) == len(blocks)
    t = TILE // STRIDE
    raw = _slide_blocks(client)
    tiles = _tile_appearance(env)
    for tile in raw:  # a block: its samples, its slide tile's appearance
        key = (tile.row // t, tile.col // t)
        expected = region_score(model, blocks[key], appearance=tiles[key])
        unlike = tile.col // t >= 2
        _assert_judged(tile.familiarity, env, unlike, expected.score)
    old, old_summary = client.slide_heatmap(
        "models/old", "half.tif", block_size=TILE // STRIDE, **SLIDE
    )
    _assert_unavailable(old_summary.familiarity)
    assert all(f == Familiarity() for _, f in old.tile_familiarity)
    np.testing.assert_array_equal(old.logits, heat.logits)


def _slide_blocks(client):
    from milsil.client.slides import slide_config
    from milsil.v1 import inference_service_pb2

    request = inference_service_pb2.SlideHeatmapRequest(
        config=slide_config(
            "models/fam", "half.tif", STRIDE, 1.0, False, TILE, "", False, "", None
        ),
        block_size=TILE // STRIDE,
    )
    answers = client.inference.SlideHeatmap(request, metadata=client.metadata, timeout=120)
    return [r.tile for r in answers if r.WhichOneof("response") == "tile"]


# ------------------------------------------------------------------------ the warning lines


def test_client_commands_warn_for_the_shifted_image_only(env, tmp_path, capsys, caplog):
    server = env["server"]
    base = ["client", "--server", f"127.0.0.1:{server.port}", "--timeout", "120"]
    cells = {
        "type": "FeatureCollection",
        "features": [
            {
                "type": "Feature",
                "geometry": {
                    "type": "Polygon",
                    "coordinates": [[[4, 4], [20, 4], [20, 20], [4, 20], [4, 4]]],
                },
                "properties": {"objectType": "detection"},
            }
        ],
    }
    (tmp_path / "cells.geojson").write_text(json.dumps(cells))
    for name, unlike in (("familiar", False), ("shifted", True)):
        image = tmp_path / f"{name}.png"
        Image.fromarray(env[name]).save(image)
        commands = {
            "classify": ["classify", "models/fam", str(image), "--patch-size", str(PATCH)],
            "heatmap": ["heatmap", "models/fam", str(image), "--out", str(tmp_path / "h.npy")],
            "annotate": [
                "annotate",
                "models/fam",
                str(image),
                "--out",
                str(tmp_path / "a.geojson"),
                "--on",
                "logit",
                "--threshold=-1e9",
            ],
            "measure-objects": [
                "measure-objects",
                "models/fam",
                str(image),
                "--objects",
                str(tmp_path / "cells.geojson"),
                "-o",
                str(tmp_path / "m.geojson"),
            ],
        }
        for command, argv in commands.items():
            caplog.clear()
            with caplog.at_level(logging.WARNING, logger="milsil.server"):
                assert main([*base, *argv]) == 0, command
            err = capsys.readouterr().err
            warning = f"milsil: {image}: unlike the training data (score "
            assert (warning in err) is unlike, (command, err)
            logged = [r.getMessage() for r in caplog.records if "unlike" in r.getMessage()]
            assert len(logged) == int(unlike), (command, logged)
            if unlike:
                assert f"threshold {env['threshold']:.3g})" in err
        measured = json.loads((tmp_path / "m.geojson").read_text())
        assert OOD in measured["features"][0]["properties"]["measurements"]
    # annotate-slide: the grayscale half's annotations are named in one line.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="milsil.server"):
        argv = [
            "annotate-slide",
            "half.tif",
            "--model",
            "models/fam",
            "-o",
            str(tmp_path / "s.geojson"),
            "--stride",
            str(STRIDE),
            "--tile-size",
            str(TILE),
            "--all-tiles",
            "--threshold",
            "0",
        ]
        assert main([*base, *argv]) == 0
    err = capsys.readouterr().err
    assert "milsil: half.tif: " in err and "unlike the training data" in err
    logged = [r.getMessage() for r in caplog.records if "unlike" in r.getMessage()]
    assert len(logged) == 1 and "half.tif" in logged[0]


def test_an_outline_across_familiar_and_unlike_tiles_is_as_doubtful_as_its_worst(env):
    """An ROI over both halves: an outline whose box touches familiar and unlike slide
    tiles carries the highest of their scores, so it is unlike the training data."""
    import shapely.geometry

    client, model = env["client"], env["model"]
    looks = _tile_appearance(env)
    tiles = {k: region_score(model, b, appearance=looks[k]) for k, b in _tile_blocks(env).items()}
    roi = {"type": "Polygon", "coordinates": [[[4, 4], [252, 4], [252, 124], [4, 124], [4, 4]]]}
    collection, _ = client.annotate_slide(
        "models/fam", "half.tif", threshold=0.0, roi=roi, outline=RAW_OUTLINES, **SLIDE
    )
    spanning = 0
    for feature in collection["features"]:
        x0, y0, x1, y1 = shapely.geometry.shape(feature["geometry"]).bounds
        touched = [
            s for (r, c), s in tiles.items()
            if c * TILE < x1 and (c + 1) * TILE > x0 and r * TILE < y1 and (r + 1) * TILE > y0
        ]  # fmt: skip
        judged = feature["properties"]["milsil_familiarity"]
        assert judged["score"] == pytest.approx(max(s.score for s in touched), rel=1e-5)
        if any(s.unlike_training for s in touched) and not all(s.unlike_training for s in touched):
            spanning += 1
            assert judged["unlike_training"] is True
    assert spanning >= 1, [f["geometry"]["type"] for f in collection["features"]]
