"""The whole-slide pipeline: readers ahead of the compute and a writer behind it.

Overlap is proven by ordering, never by timing: an instrumented read (or store) waits
until a neighbouring tile's compute has begun, while that compute waits until the read
(or store) has begun. Both waits succeed only if the two run at the same time; a
sequential pipeline would deadlock, and the timeouts turn that into a failure, not a hang.
The pipeline's output equals the sequential one (``readers=0``) exactly.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import randomize_batchnorm

import milsil.inference.heatmap as inference_heatmap
import milsil.wsi.heatmap as wsi_heatmap
from milsil.cli.slides import add_slide_arguments, slide_settings
from milsil.errors import MilsilError
from milsil.models import create_model
from milsil.wsi.annotate import annotate_slide
from milsil.wsi.heatmap import slide_heatmap
from milsil.wsi.pipeline import OrderedWriter, read_ahead
from milsil.wsi.reader import open_slide
from milsil.wsi.settings import SlideSettings
from milsil.wsi.synthetic import synthetic_slide
from milsil.wsi.tissue import tile_grid, tissue_mask

WAIT = 30.0  # seconds an ordering wait may take before it counts as a deadlock


def tiny_model(seed: int = 0):
    torch.manual_seed(seed)
    model = create_model("bagnet9", 2, width=8, class_names=["benign", "malignant"])
    return randomize_batchnorm(model, seed)


@pytest.fixture(scope="module")
def slide_path(tmp_path_factory) -> Path:
    """A 640x480 synthetic pyramidal TIFF: a tissue ellipse, many 128-pixel tissue tiles."""
    path = tmp_path_factory.mktemp("slide") / "synthetic.tif"
    return synthetic_slide(path, 640, 480, block=160, malignant_blocks=0.4, seed=3)[0]


def test_tissue_tiles_are_enough_for_the_ordering_tests(slide_path):
    with open_slide(slide_path) as s:
        assert len(tile_grid(s, 128, 1.0, tissue_mask(s))) >= 4


# ------------------------------------------------------------------ overlap, by ordering


def test_reading_and_storing_overlap_the_compute(slide_path, tmp_path, monkeypatch):
    """Read of tile 1 and compute of tile 0 wait for each other; so do the store of tile 0
    and the compute of tile 1. Sequentially, compute 0 would wait forever for read 1."""
    computing = [threading.Event() for _ in range(2)]
    reading1, storing0 = threading.Event(), threading.Event()
    failures: list[str] = []
    calls = {"read": 0, "compute": 0, "store": 0}
    real_heatmap, real_store = inference_heatmap.logit_heatmap, wsi_heatmap._store_tile

    def wait(event: threading.Event, what: str) -> None:
        if not event.wait(WAIT):
            failures.append(what)

    def compute(*args, **kwargs):
        k = calls["compute"]
        calls["compute"] += 1
        if k < 2:
            computing[k].set()
        if k == 0:
            wait(reading1, "compute of tile 0 never saw the read of tile 1 begin")
        if k == 1:
            wait(storing0, "compute of tile 1 never saw the store of tile 0 begin")
        return real_heatmap(*args, **kwargs)

    def store(*args, **kwargs):
        k = calls["store"]
        calls["store"] += 1
        if k == 0:
            storing0.set()
            wait(computing[1], "store of tile 0 never saw the compute of tile 1 begin")
        return real_store(*args, **kwargs)

    monkeypatch.setattr(inference_heatmap, "logit_heatmap", compute)
    monkeypatch.setattr(wsi_heatmap, "_store_tile", store)
    with open_slide(slide_path) as s:
        tissue = tissue_mask(s)  # before the read is instrumented: its reads are not tiles
        real_read = s.read

        def read(*args, **kwargs):
            k = calls["read"]  # one reader: reads happen in tile order
            calls["read"] += 1
            if k == 1:
                reading1.set()
                wait(computing[0], "read of tile 1 never saw the compute of tile 0 begin")
            return real_read(*args, **kwargs)

        s.read = read
        settings = SlideSettings(stride=8, tile=128, readers=1)
        heat, stopped = slide_heatmap(tiny_model(), s, tmp_path / "w", settings, tissue=tissue)
    assert failures == []
    assert not stopped
    assert calls["compute"] == calls["read"] == calls["store"] == len(heat.done) >= 4


# ------------------------------------------------------------------ same output


def test_pipeline_output_equals_the_sequential_output(slide_path, tmp_path):
    model = tiny_model(1)
    # Outline at the median malignant probability, so there is something to outline.
    with open_slide(slide_path) as s:
        heat, _ = slide_heatmap(model, s, tmp_path / "probe", SlideSettings(stride=8, tile=128))
        probability = heat.probability_block(1, 0, heat.rows, 0, heat.cols)
    threshold = float(np.nanmedian(probability))
    outputs = {}
    for readers in (0, 1, 3):
        settings = SlideSettings(stride=8, tile=128, readers=readers, threshold=threshold)
        out = tmp_path / f"r{readers}"
        res = annotate_slide(
            slide_path,
            model,
            out / "a.geojson",
            settings,
            tiff=out / "p.tif",
            keep_work=True,
        )
        work = out / "a.geojson.work"
        logits = np.fromfile(work / "logits.f32", dtype=np.float32)
        done = sorted((work / "tiles.done").read_text().splitlines())
        outputs[readers] = (
            logits,
            done,
            _without_ids((out / "a.geojson").read_text()),
            (out / "p.tif").read_bytes(),
            res.objects,
        )
    ref = outputs[0]
    assert len(ref[1]) >= 4 and ref[4] >= 1
    for readers in (1, 3):
        got = outputs[readers]
        assert np.array_equal(got[0], ref[0], equal_nan=True), readers
        assert got[1:] == ref[1:], readers


def _without_ids(geojson: str) -> list:
    """The features without their ids (a fresh UUID per object and run)."""
    return [{k: v for k, v in f.items() if k != "id"} for f in json.loads(geojson)["features"]]


def test_a_failed_read_keeps_the_tiles_before_it_and_a_rerun_finishes(slide_path, tmp_path):
    model = tiny_model(2)
    settings = SlideSettings(stride=8, tile=128, readers=2)
    with open_slide(slide_path) as s:
        tissue = tissue_mask(s)
        tiles = tile_grid(s, 128, 1.0, tissue)
        reference, _ = slide_heatmap(model, s, tmp_path / "ref", settings, tissue=tissue)
        real_read = s.read
        corner = _box_corner(model, tiles[3], s)

        def read(x, y, width, height, downsample=1.0):
            if (x, y) == corner:  # the region read for tile 3 (its corner less the halo)
                raise MilsilError("synthetic.tif: cannot read region: injected failure")
            return real_read(x, y, width, height, downsample)

        s.read = read
        with pytest.raises(MilsilError, match="injected failure"):
            slide_heatmap(model, s, tmp_path / "w", settings, tissue=tissue)
        done = (tmp_path / "w" / "tiles.done").read_text().split("\n")
        assert [line for line in done if line] == [f"{t.row} {t.col} ok" for t in tiles[:3]]
        s.read = real_read
        heat, _ = slide_heatmap(model, s, tmp_path / "w", settings, tissue=tissue)
        assert heat.done == reference.done
        assert np.array_equal(heat.to_array(), reference.to_array(), equal_nan=True)


def _box_corner(model, tile, slide) -> tuple[int, int]:
    """Level-0 corner of the region slide_heatmap reads for ``tile`` (downsample 1)."""
    from milsil.inference.tiling import context_box, context_pixels

    w, h = slide.region_size(1.0)
    box = context_box(tile.px, tile.py, tile.width, tile.height, context_pixels(model), w, h)
    return box.x0, box.y0


# ------------------------------------------------------------------ the stages alone


def test_read_ahead_keeps_the_order_when_later_reads_finish_first():
    second_done = threading.Event()

    def read(i: int) -> int:
        if i == 0 and not second_done.wait(WAIT):
            raise AssertionError("read 1 never finished while read 0 waited")
        if i == 1:
            second_done.set()
        return i * 10

    assert list(read_ahead(range(6), read, readers=2)) == [(i, i * 10) for i in range(6)]


def test_read_ahead_is_bounded_and_raises_a_failed_read_at_its_item():
    started: list[int] = []
    lock = threading.Lock()

    def read(i: int) -> int:
        with lock:
            started.append(i)
        if i == 4:
            raise MilsilError("tile 4 unreadable")
        return i

    got = []
    stream = read_ahead(range(100), read, readers=2, depth=3)
    with pytest.raises(MilsilError, match="tile 4 unreadable"):
        for i, value in stream:
            # when item i is handed over at most i + 1 + depth reads were ever submitted
            with lock:
                assert len(started) <= i + 1 + 3
            got.append(value)
    assert got == [0, 1, 2, 3]


def test_ordered_writer_stores_in_order_and_raises_the_first_failure():
    stored: list[int] = []

    def store(i: int) -> None:
        if i in (3, 5):
            raise OSError(f"disk full at {i}")
        stored.append(i)

    writer = OrderedWriter(depth=2)
    with pytest.raises(OSError, match="disk full at 3"):
        for i in range(8):
            writer.submit(store, i)
        writer.close()
    writer.close()  # idempotent after the failure: nothing left
    assert stored[:3] == [0, 1, 2] and stored == sorted(stored)


# ------------------------------------------------------------------ the setting


def test_readers_setting_default_validation_and_flag():
    assert SlideSettings().readers == max(1, min(8, os.cpu_count() or 1))
    assert SlideSettings(readers=0).readers == 0
    assert SlideSettings.from_dict({"readers": 3}).readers == 3
    for bad in (-1, 1.5, "x", True):
        with pytest.raises(MilsilError, match="readers must be"):
            SlideSettings(readers=bad)
    parser = argparse.ArgumentParser()
    add_slide_arguments(parser)
    args = parser.parse_args(["--model", "m.pt", "--readers", "0"])
    assert slide_settings(args).readers == 0
    args = parser.parse_args(["--model", "m.pt"])
    assert slide_settings(args).readers == SlideSettings().readers


def test_batch_skips_a_finished_slide_whatever_the_reader_count(tmp_path, monkeypatch, capsys):
    from milsil import cli
    from milsil.models import save_checkpoint

    monkeypatch.setattr(
        cli, "COMMAND_MODULES", tuple(dict.fromkeys(cli.COMMAND_MODULES + ("milsil.cli.slides",)))
    )
    slides = tmp_path / "slides"
    slides.mkdir()
    synthetic_slide(slides / "a.tif", 256, 192, block=128, seed=1)
    save_checkpoint(tiny_model(), tmp_path / "m.pt")
    argv = ["batch", str(slides), "--model", str(tmp_path / "m.pt"), "--out", str(tmp_path / "o")]
    assert cli.main([*argv, "--readers", "0"]) == 0
    assert "1 annotated" in capsys.readouterr().out
    assert cli.main([*argv, "--readers", "2"]) == 0
    assert "1 skipped" in capsys.readouterr().out
    assert cli.main([*argv, "--readers", "2", "--stride", "4"]) == 0  # a setting that counts
    assert "1 annotated" in capsys.readouterr().out
