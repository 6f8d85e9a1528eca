"""Every device of the machine (issue 16, item 5): ``milsil serve --devices`` gives each
device one compute slot, and the one fair queue feeds them all.

A machine without GPUs may name the CPU twice (``cpu,cpu``: two CPU slots), so the
scheduling is tested here over real servers and real channels: with two devices two
clients' calls are inside the dense network at the same time (a pass waits at a barrier
that only a second, simultaneous pass opens); with one device they never are, even when
the second call is already waiting. Order is proven by events, never by the clock. The
fast modes (``--tf32``) are said in the heatmap header (item 2).
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from dense_support import watch_dense_passes
from server_support import register_tiny_model, serve_process, stop_process, tiny_model

import milsil.inference.heatmap as heatmap
from milsil.cli import main as cli_main
from milsil.client import MilsilClient
from milsil.errors import MilsilError
from milsil.inference.precision import (
    EXPECTED_MAX_LOGIT_DEVIATION,
    fp32_precision,
)
from milsil.models import save_checkpoint
from milsil_server.app import ServerConfig, build_server
from milsil_server.resources import ModelCache, parse_devices
from milsil_server.slots import ComputeSlots

WAIT = 60.0  # seconds a test waits for an event before it fails (never for a result)


def _wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not reached in {WAIT:g} s"
        time.sleep(0.01)


@contextmanager
def _server(tmp_path, **config):
    server = build_server(ServerConfig(port=0, data_dir=tmp_path / "srv", **config))
    try:
        register_tiny_model(server)
        yield server
    finally:
        server.stop(0)


class Passes:
    """The dense network, watched: how many passes run at once (``most``), and the first
    passes held (``hold``) until a condition, e.g. a barrier only a second pass opens."""

    def __init__(self, monkeypatch, hold) -> None:
        self.lock = threading.Lock()
        self.inside = self.most = self.entered = 0
        self.hold = hold
        self.seen: list[str] = []  # the device of every pass

        def around(x, run):
            with self.lock:
                self.inside += 1
                self.most = max(self.most, self.inside)
                n, self.entered = self.entered, self.entered + 1
                self.seen.append(str(x.device))
            try:
                self.hold(n)
                return run()
            finally:
                with self.lock:
                    self.inside -= 1

        watch_dense_passes(monkeypatch, around)


def _image(seed: int, side: int = 64) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)


def _in_parallel(*calls) -> list:
    """Run the calls in threads; their results in order (an exception is re-raised)."""
    results: list = [None] * len(calls)

    def run(i, call):
        try:
            results[i] = call()
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(3 * WAIT)
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return results


# --------------------------------------------------------------------------- scheduling


def test_two_devices_compute_two_clients_calls_at_once(tmp_path, monkeypatch):
    barrier = threading.Barrier(2, timeout=WAIT)
    in_use = []

    def hold(n):
        if n < 2:  # the first pass of each call: through only when both are inside
            barrier.wait()
            in_use.append(server.slots.in_use)

    passes = Passes(monkeypatch, hold)
    with _server(tmp_path, device="cpu,cpu") as server:
        assert server.slots.slots == 2 and server.slots.devices == [torch.device("cpu")] * 2
        target = f"127.0.0.1:{server.port}"
        a, b = MilsilClient(target, timeout=3 * WAIT), MilsilClient(target, timeout=3 * WAIT)
        images = _image(1), _image(2)
        maps = _in_parallel(
            lambda: a.heatmap("models/tiny", images[0]),
            lambda: b.heatmap("models/tiny", images[1]),
        )
        a.close()
        b.close()
    assert passes.most == 2 and in_use == [2, 2]  # both inside a band, each in a slot
    model = tiny_model()
    for image, result in zip(images, maps, strict=True):  # and each got its own map
        np.testing.assert_allclose(
            result.logits, heatmap.logit_heatmap(model, image).numpy(), atol=1e-4
        )


def test_one_device_never_computes_two_calls_at_once(tmp_path, monkeypatch):
    def hold(n):
        if n == 0:  # the first pass waits until the other call waits for the slot
            _wait_for(lambda: server.slots.waiting >= 1, "the second call queued")

    passes = Passes(monkeypatch, hold)
    with _server(tmp_path, device="cpu") as server:
        target = f"127.0.0.1:{server.port}"
        a, b = MilsilClient(target, timeout=3 * WAIT), MilsilClient(target, timeout=3 * WAIT)
        _in_parallel(
            lambda: a.heatmap("models/tiny", _image(1)),
            lambda: b.heatmap("models/tiny", _image(2)),
        )
        a.close()
        b.close()
    assert passes.entered >= 2 and passes.most == 1


SQUARE = {"type": "Polygon", "coordinates": [[[8, 8], [40, 8], [40, 40], [8, 40], [8, 8]]]}


@pytest.mark.parametrize("kind", ["AnnotateSlide", "MeasureObjects"])
def test_slide_jobs_and_objects_share_the_devices(tmp_path, monkeypatch, kind):
    """AnnotateSlide (holding a slot for its whole job) and MeasureObjects compute on one
    device while a Heatmap computes on the other (each first pass waits for the other's)."""
    from milsil.wsi.synthetic import synthetic_slide

    root = tmp_path / "slides"
    root.mkdir()
    synthetic_slide(root / "a.tif", 160, 128, block=64, malignant_blocks=0.5, seed=1)
    barrier = threading.Barrier(2, timeout=WAIT)
    passes = Passes(monkeypatch, lambda n: barrier.wait() if n < 2 else None)
    with _server(tmp_path, device="cpu,cpu", slide_roots=(root,)) as server:
        target = f"127.0.0.1:{server.port}"
        a, b = MilsilClient(target, timeout=3 * WAIT), MilsilClient(target, timeout=3 * WAIT)
        if kind == "AnnotateSlide":
            job = lambda: a.annotate_slide("models/tiny", "a.tif", stride=8, tile_size=64)[0]  # noqa: E731
        else:
            job = lambda: a.measure_objects("models/tiny", [("c", SQUARE)], _image(4))  # noqa: E731
        answer, heat = _in_parallel(job, lambda: b.heatmap("models/tiny", _image(3)))
        a.close()
        b.close()
    assert passes.most == 2 and heat.logits.shape[1:] == (64, 64)
    if kind == "AnnotateSlide":
        assert answer["type"] == "FeatureCollection"
    else:
        assert answer.ids == ["c"] and answer.pixels[0] > 0


def test_the_fair_order_holds_across_devices():
    """One queue feeds both devices round-robin: client A's flood waits behind B's single
    request for the next free slot, whichever device frees it; a ticket computes on the
    device of the slot it got, and a streamed call's next turn gets its previous device
    when that one is free."""
    slots = ComputeSlots(max_waiting=8, devices=["gpu0", "gpu1"])
    active = lambda: True  # noqa: E731
    holders = [slots._enqueue("H", active) for _ in range(2)]  # noqa: SLF001
    assert [h.device for h in holders] == ["gpu0", "gpu1"]
    a = [slots._enqueue("A", active) for _ in range(3)]  # noqa: SLF001
    b = slots._enqueue("B", active)  # noqa: SLF001
    assert not any(t.granted for t in (*a, b))
    slots._leave(holders[1])  # noqa: SLF001 - gpu1 frees first: A's first
    assert a[0].granted and a[0].device == "gpu1" and not b.granted
    slots._leave(holders[0])  # noqa: SLF001 - then gpu0: B, not A's second
    assert b.granted and b.device == "gpu0" and not a[1].granted
    slots._leave(b)  # noqa: SLF001
    assert a[1].granted and a[1].device == "gpu0"
    for t in (a[0], a[1], a[2]):
        slots._leave(t)  # noqa: SLF001
    assert slots.in_use == 0 and slots.waiting == 0

    with slots.turns(active, "C") as turn:
        list(turn.waiting())
        other = slots._enqueue("D", active)  # noqa: SLF001 - takes gpu1
        assert turn.device == "gpu0" and other.device == "gpu1"
        turn.release()
        assert turn.device is None
        slots._leave(other)  # noqa: SLF001 - both free: the turn's own device again
        turn.hold()
        assert turn.device == "gpu0"
        turn.release()
        holder = slots._enqueue("H", active)  # noqa: SLF001 - gpu0 taken: gpu1 will do
        turn.hold()
        assert holder.device == "gpu0" and turn.device == "gpu1"
        slots._leave(holder)  # noqa: SLF001


def test_the_model_cache_keeps_one_copy_per_device(tmp_path):
    """A model is loaded once per device it is used on (the meta device stands in for a
    second GPU here) and evicted from all of them at once."""
    path = tmp_path / "tiny.pt"
    save_checkpoint(tiny_model(), path, provenance={})
    loads = []
    cache = ModelCache(lambda ident: loads.append(ident) or path, device=torch.device("cpu"))
    first = cache.get("tiny")
    assert cache.on(first, torch.device("cpu")) is first and cache.on(first, None) is first
    other = cache.on(first, torch.device("meta"))
    assert next(other.parameters()).device.type == "meta"
    assert next(first.parameters()).device.type == "cpu"  # copied, never moved
    assert cache.on(first, torch.device("meta")) is other and loads == ["tiny", "tiny"]
    cache.evict("tiny")
    assert cache.get("tiny") is not first and loads == ["tiny"] * 3


# --------------------------------------------------------------------------- --devices


def test_devices_are_parsed_and_bad_names_refused():
    cpu, gpu = torch.device("cpu"), torch.device
    assert parse_devices(None, gpus=0) == [cpu]
    assert parse_devices("", gpus=2) == [gpu("cuda:0"), gpu("cuda:1")]
    assert parse_devices("cpu, CPU", gpus=0) == [cpu, cpu]
    assert parse_devices("cuda:1,cuda", gpus=2) == [gpu("cuda:1"), gpu("cuda:0")]
    refused = {
        "cuda:0": r"'cuda:0' is not a device here \(no GPU visible\); allowed, comma-separated: cpu$",
        "tpu": r"'tpu' is not a device here",
        "cpu,,cpu": r"'' is not a device here",
        "cuda:2": r"\(2 GPU\(s\) visible\); allowed, comma-separated: cpu, cuda:0, cuda:1$",
        "cuda:0,cuda:0": r"cuda:0 is named twice; a GPU has one compute slot",
        "cpu,cuda:0": r"mixes the CPU and GPUs",
    }
    for text, message in refused.items():
        with pytest.raises(MilsilError, match=message):
            parse_devices(text, gpus=0 if text in ("cuda:0", "tpu", "cpu,,cpu") else 2)


def test_serve_refuses_a_bad_device_in_one_line(tmp_path, capsys):
    code = cli_main(["serve", "--port", "0", "--data-dir", str(tmp_path), "--devices", "tpu:0"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err
    assert err.startswith("milsil serve: error: --devices 'tpu:0': 'tpu:0' is not a device")
    assert "allowed, comma-separated: cpu" in err


def test_the_default_is_every_gpu_else_the_cpu(tmp_path):
    gpus = torch.cuda.device_count()
    expected = [torch.device(f"cuda:{i}") for i in range(gpus)] or [torch.device("cpu")]
    server = build_server(ServerConfig(port=0, data_dir=tmp_path, compute_slots=2))
    try:
        assert server.devices == expected
        assert server.slots.devices == [d for d in expected for _ in range(2)]
    finally:
        server.stop(0)


# --------------------------------------------------------------------------- fast modes


def test_the_heatmap_header_says_the_mode_and_tf32_changes_nothing_on_a_cpu(tmp_path):
    """A CPU has no TF32: a ``--tf32`` server's logits are the exact server's, bit for bit;
    the header says which mode computed them and what the mode may cost."""
    image = _image(4)
    headers, logits = {}, {}
    for mode in ("exact", "tf32"):
        with _server(tmp_path / mode, device="cpu", precision=mode) as server:
            client = MilsilClient(f"127.0.0.1:{server.port}", timeout=3 * WAIT)
            result = client.heatmap("models/tiny", image)
            headers[mode], logits[mode] = result.header, result.logits
            client.close()
    assert headers["exact"].precision == "exact"
    assert headers["exact"].expected_max_logit_deviation == 1e-4  # the README's promise
    assert headers["tf32"].precision == "tf32"
    assert headers["tf32"].expected_max_logit_deviation == 1.7e-3  # the H200 run, issue 16
    np.testing.assert_array_equal(logits["exact"], logits["tf32"])


def test_a_bf16_server_computes_regions_and_slides_in_bfloat16(tmp_path):
    """``--bf16``: the header says so and what it may cost; the logits are not the exact
    server's (another arithmetic ran) and lie within that cost of them, for a streamed
    region and for a slide the server reads; a bf16 slide's work folder is its own."""
    from milsil.wsi.settings import SlideSettings
    from milsil.wsi.tiff import write_pyramidal_tiff
    from milsil_server.slides import work_dir

    image = _image(4)
    slides = tmp_path / "slides"
    slides.mkdir()
    write_pyramidal_tiff(slides / "s.tif", _image(6, side=128), mpp=0.5)
    heat, slide = {}, {}
    for mode in ("exact", "bf16"):
        with _server(
            tmp_path / mode, device="cpu", precision=mode, slide_roots=(slides,)
        ) as server:
            client = MilsilClient(f"127.0.0.1:{server.port}", timeout=3 * WAIT)
            model = client.get_model("models/tiny")  # every client learns the mode up front
            assert model.heatmap_precision == mode
            assert model.expected_max_logit_deviation == EXPECTED_MAX_LOGIT_DEVIATION[mode]
            heat[mode] = client.heatmap("models/tiny", image)
            slide[mode], _ = client.slide_heatmap("models/tiny", "s.tif", tissue_only=False)
            client.close()
    cost = EXPECTED_MAX_LOGIT_DEVIATION["bf16"]
    for result in (heat, slide):
        assert result["exact"].header.precision == "exact"
        assert result["bf16"].header.precision == "bf16"
        assert result["bf16"].header.expected_max_logit_deviation == cost
        exact, fast = result["exact"].logits, result["bf16"].logits
        assert np.isfinite(exact).all() and exact.shape == fast.shape
        assert 0 < np.abs(fast - exact).max() <= cost
    folders = {
        work_dir(tmp_path, slides / "s.tif", "m", "sha", SlideSettings(bf16=bf16))
        for bf16 in (False, True)
    }
    assert len(folders) == 2
    with pytest.raises(MilsilError, match="must be one of exact, tf32, bf16; got 'fp8'"):
        build_server(ServerConfig(port=0, data_dir=tmp_path / "x", precision="fp8"))


def test_classify_bag_runs_in_the_servers_float32_mode(tmp_path, monkeypatch):
    """ClassifyBag is float32 in every mode: TF32 on a --tf32 server, exact otherwise (a
    --bf16 server's bags too: bfloat16 is for heatmaps)."""
    from milsil.models.mil import MilSilNet

    seen: list[str] = []
    original = MilSilNet.feature_map

    def feature_map(self, x):
        seen.append(torch.backends.cudnn.conv.fp32_precision)
        return original(self, x)

    monkeypatch.setattr(MilSilNet, "feature_map", feature_map)
    tiles = [_image(7, side=32)] * 2
    for mode, inside in (("exact", "ieee"), ("tf32", "tf32"), ("bf16", "ieee")):
        seen.clear()
        with _server(tmp_path / mode, device="cpu", precision=mode) as server:
            client = MilsilClient(f"127.0.0.1:{server.port}", timeout=3 * WAIT)
            assert len(client.classify_bag("models/tiny", tiles).tiles) == 2
            client.close()
        assert seen and set(seen) == {inside}, (mode, seen)


def test_serve_refuses_two_fast_modes(tmp_path, capsys):
    args = ["serve", "--tf32", "--bf16", "--port", "0", "--data-dir", str(tmp_path / "d")]
    assert cli_main(args) != 0
    assert (
        "--tf32 and --bf16 are two fast modes; choose one (neither: exact)"
        in capsys.readouterr().err
    )


def test_serve_tf32_is_accepted_and_the_client_cli_says_the_mode(tmp_path, capsys):
    from PIL import Image

    path, image, out = tmp_path / "tiny.pt", tmp_path / "region.png", tmp_path / "map.npy"
    save_checkpoint(tiny_model(), path, provenance={"config": {"patch_size": 32}})
    Image.fromarray(_image(5)).save(image)
    proc, target = serve_process(tmp_path / "data", "--tf32", "--devices", "cpu,cpu")
    try:
        client = ["client", "--server", target]
        assert cli_main([*client, "models", "--import", str(path), "--id", "t"]) == 0
        capsys.readouterr()
        assert cli_main([*client, "heatmap", "models/t", str(image), "--out", str(out)]) == 0
        err = capsys.readouterr().err
    finally:
        stop_process(proc)
    assert "fast mode tf32: logits within about 1.7e-03 of exact" in err
    assert np.load(out).shape == (2, 64, 64)


def test_overlapping_passes_of_one_mode_keep_it_until_the_last_ends():
    """Two devices' passes overlap in one process: the first pass out must not restore the
    caller's TF32 setting under the other (the flags are process-wide)."""
    flags = (torch.backends.cudnn.conv, torch.backends.cuda.matmul)
    saved = [f.fp32_precision for f in flags]
    try:
        for f in flags:
            f.fp32_precision = "tf32"
        first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()
        seen = []

        def first():
            with fp32_precision("exact"):
                first_in.set()
                assert second_in.wait(WAIT)
            first_out.set()

        thread = threading.Thread(target=first)
        thread.start()
        assert first_in.wait(WAIT)
        with fp32_precision("exact"):
            second_in.set()
            assert first_out.wait(WAIT)
            seen.append([f.fp32_precision for f in flags])  # the first pass has ended
            with pytest.raises(MilsilError, match="a tf32 pass cannot overlap"):
                with fp32_precision("tf32"):
                    pass
        thread.join(WAIT)
        assert seen == [["ieee", "ieee"]]
        assert [f.fp32_precision for f in flags] == ["tf32", "tf32"]  # the caller's, back
    finally:
        for f, old in zip(flags, saved, strict=True):
            f.fp32_precision = old


def test_the_library_clis_take_tf32_say_it_and_refuse_two_fast_modes(tmp_path, capsys):
    """``milsil heatmap --tf32`` on a CPU: the exact logits, the mode said on stderr and
    recorded; ``--tf32 --bf16`` refused in one line; ``annotate-slide --tf32`` settings."""
    import argparse
    import json

    from PIL import Image

    from milsil.cli.slides import add_slide_arguments, slide_settings

    model, image = tmp_path / "tiny.pt", tmp_path / "a.png"
    save_checkpoint(tiny_model(), model, provenance={})
    Image.fromarray(_image(6)).save(image)
    argv = ["heatmap", str(image), "--model", str(model), "--device", "cpu"]
    assert cli_main([*argv, "--out", str(tmp_path / "exact")]) == 0
    capsys.readouterr()
    assert cli_main([*argv, "--out", str(tmp_path / "tf32"), "--tf32"]) == 0
    assert "fast mode tf32: logits within about 1.7e-03 of exact" in capsys.readouterr().err
    run = json.loads((tmp_path / "tf32" / "heatmap_run.json").read_text())
    assert run["precision"] == "tf32"
    np.testing.assert_array_equal(
        np.load(tmp_path / "exact" / "a.logits.npy"), np.load(tmp_path / "tf32" / "a.logits.npy")
    )
    assert cli_main([*argv, "--out", str(tmp_path / "both"), "--tf32", "--bf16"]) == 2
    assert capsys.readouterr().err.strip() == (
        "milsil heatmap: error: --tf32 and --bf16 are two fast modes; choose one (neither: exact)"
    )
    parser = argparse.ArgumentParser()
    add_slide_arguments(parser)
    settings = slide_settings(parser.parse_args(["--model", "m.pt", "--tf32"]))
    assert settings.precision == "tf32" and not settings.bf16
    assert slide_settings(parser.parse_args(["--model", "m.pt"])).precision == "exact"
