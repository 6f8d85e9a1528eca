"""Regions of any size streamed to Heatmap/Annotate: band by band, memory bounded by width.

Over real channels: a region larger than the old 2^25-pixel limit streamed to a server in
its own process gives the map and the outlines of ``logit_heatmap`` on the whole image,
while the server's resident memory grows by less than the region's float canvas alone
would take; memory is reserved only with a compute slot and against ``--max-memory``;
context tiles far from the region are never decoded.
"""

from __future__ import annotations

import io
import threading
import time

import grpc
import numpy as np
import pytest
import torch
from PIL import Image
from server_support import (
    RAW_OUTLINES,
    register_tiny_model,
    reset_peak_rss,
    rss_bytes,
    running_server,
    serve_process,
    stop_process,
)
from shapely.geometry import shape

from milsil.client import MilsilClient, encode_tile
from milsil.inference.heatmap import logit_heatmap
from milsil.models import create_model, save_checkpoint
from milsil.v1 import common_pb2, inference_service_pb2
from milsil.wsi.geojson import heatmap_to_geojson

SIDE = 5793  # 5793^2 = 33,558,849 > 2^25 = 33,554,432 pixels (the old per-request limit)
STRIDE = 8
# The old server held the region as one float32 canvas: 3 x 4 bytes a pixel, 403 MB here
# before any copy. Streamed, the server's peak resident memory may grow by at most:
RSS_BOUND = 300 * 2**20


def _small_model():
    """A width-4 BagNet-9 whose logits are a few units (so 1e-4 is a meaningful tolerance)."""
    torch.manual_seed(0)
    model = create_model("bagnet9", num_classes=2, width=4, class_names=["benign", "malignant"])
    with torch.no_grad():  # logits of a few units that vary over the image
        model.fc.weight.mul_(1000.0)
    return model.eval()


def _slide_like(side: int, seed: int = 0) -> np.ndarray:
    """A large image quickly, with structure at the scale of bands: smooth blobs of colour
    (a random 1/128-scale image, enlarged) over fine noise."""
    rng = np.random.default_rng(seed)
    n = -(-side // 128) + 1
    coarse = torch.from_numpy(rng.uniform(40, 215, (1, 3, n, n)).astype(np.float32))
    smooth = torch.nn.functional.interpolate(coarse, scale_factor=128, mode="bilinear")
    smooth = smooth[0, :, :side, :side].permute(1, 2, 0).numpy()
    noise = rng.integers(-12, 13, (256, 256, 3)).astype(np.float32)
    reps = -(-side // 256)
    smooth += np.tile(noise, (reps, reps, 1))[:side, :side]
    return np.clip(smooth, 0, 255).astype(np.uint8)


def test_a_region_larger_than_the_old_limit_streams_with_bounded_memory(tmp_path):
    model = _small_model()
    save_checkpoint(model, tmp_path / "small.pt")
    proc, address = serve_process(tmp_path / "server")
    try:
        client = MilsilClient(address, timeout=900)
        client.import_model(tmp_path / "small.pt", model_id="small")
        image = _slide_like(SIDE)
        client.heatmap("models/small", image[:400, :400], stride=STRIDE)  # warm up
        base = rss_bytes(proc.pid)
        reset_peak_rss(proc.pid)
        result = client.heatmap("models/small", image, stride=STRIDE, tile_size=512)
        reference = logit_heatmap(model, image, stride=STRIDE)
        assert result.logits.shape == tuple(reference.shape)
        np.testing.assert_allclose(result.logits, reference.numpy(), atol=1e-4, rtol=0)
        prob = torch.softmax(reference, 0)[1].numpy()
        # A threshold about the 60th percentile, midway in the widest gap between nearby
        # sample values: no sample lies within float rounding of it.
        values = np.sort(prob.ravel())
        near = values[int(0.6 * values.size) : int(0.6 * values.size) + 2000]
        k = int(np.argmax(np.diff(near)))
        threshold = float(near[k] + near[k + 1]) / 2
        collection, response = client.annotate(
            "models/small",
            image,
            stride=STRIDE,
            threshold=threshold,
            tile_size=512,
            min_area=1000,
            outline=RAW_OUTLINES,  # the legacy level-0 min_area alone, as heatmap_to_geojson's
        )
        growth = rss_bytes(proc.pid, "VmHWM") - base
        print(f"server peak RSS growth: {growth / 2**20:.0f} MB (bound {RSS_BOUND / 2**20:.0f})")
        assert growth < RSS_BOUND, f"server RSS grew by {growth / 2**20:.0f} MB"
        expected, objects = heatmap_to_geojson(
            prob,
            threshold,
            stride=STRIDE,
            region_size=(SIDE, SIDE),
            min_area=1000,
            measurement_maps={"probability": prob, "logit": reference[1].numpy()},
        )
        assert len(collection["features"]) == len(expected["features"]) > 10
        spans = 0
        for got, want, measured, obj in zip(
            collection["features"], expected["features"], response.objects, objects, strict=True
        ):
            g, w = shape(got["geometry"]), shape(want["geometry"])
            assert g.symmetric_difference(w).area < 1e-6, "outlines differ"
            spans += g.bounds[3] - g.bounds[1] > 400  # taller than a band: crosses its borders
            for name in ("area", "mean_probability", "max_probability", "mean_logit"):
                assert getattr(measured, name) == pytest.approx(obj[name], abs=1e-4, rel=1e-6)
        assert spans, "no outline crossed a band border: the test would not show seams"
        client.close()
    finally:
        stop_process(proc)


def _png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def _stream(client, config, tiles, kind="Heatmap"):
    Request = getattr(inference_service_pb2, f"{kind}Request")
    messages = [Request(config=config, tiles=tiles[:1])] + [Request(tiles=[t]) for t in tiles[1:]]
    call = getattr(client.inference, kind)
    return call(iter(messages), timeout=60)


def test_context_tiles_far_from_the_region_are_not_decoded(tmp_path):
    """Twelve 8192^2 PNGs declared as context around a 64^2 region: their rectangles lie
    beyond the context the model needs, so they are ignored before decoding (corrupt
    bytes included), and the answer is the region's own."""
    with running_server(tmp_path) as server:
        model = register_tiny_model(server, "tiny")
        client = MilsilClient(f"127.0.0.1:{server.port}")
        region = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
        big = _png(np.zeros((8192, 8192, 3), dtype=np.uint8))  # ~200 KB, 200 MB decoded
        far = [
            common_pb2.Tile(encoding=2, data=big, width=8192, height=8192, x=x, y=y)
            for y in (0, 8300, 16600)
            for x in (0, 8300, 16600, 24900)
            if not (x == 8300 and y == 8300)
        ]
        far.append(common_pb2.Tile(encoding=2, data=b"\x89PNG junk", width=100, height=100))
        tile = encode_tile(region, "raw", 8300.0, 8300.0)
        config = inference_service_pb2.HeatmapConfig(
            model="models/tiny",
            region=common_pb2.Region(x=8300, y=8300, width=64, height=64),
            stride=4,
        )
        started = time.perf_counter()
        responses = list(_stream(client, config, far + [tile]))
        seconds = time.perf_counter() - started
        assert seconds < 5, f"{seconds:.1f} s: were the far tiles decoded?"
        assert len(responses) == 1 + len(far) + 1 + 1  # then the region's familiarity
        assert responses[-1].HasField("familiarity")
        logits = np.frombuffer(responses[-2].tile.logits, dtype="<f4").reshape(2, 16, 16)
        np.testing.assert_allclose(logits, logit_heatmap(model, region, stride=4), atol=1e-3)
        # A tile inside the region whose PNG header disagrees with its declared size is
        # refused before its pixels are decoded.
        bad = common_pb2.Tile(encoding=2, data=big, width=64, height=64, x=8300, y=8300)
        with pytest.raises(grpc.RpcError) as info:
            list(_stream(client, config, [bad]))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "declares 64x64" in info.value.details()
        client.close()


def test_memory_is_reserved_with_a_slot_and_returned_on_cancel(tmp_path):
    """Config-only streams naming huge regions hold no memory (the old server allocated
    each region's canvas on reading the config); a region too wide for --max-memory is
    refused as final; what a cancelled call reserved is returned."""
    with running_server(tmp_path, compute_slots=1, max_waiting=4, max_memory_mb=300) as server:
        register_tiny_model(server, "tiny")
        client = MilsilClient(f"127.0.0.1:{server.port}", retry_busy=False)
        huge = inference_service_pb2.HeatmapConfig(
            model="models/tiny",
            region=common_pb2.Region(width=200_000, height=200_000),  # 480 GB as floats
            stride=8,
        )
        gate = threading.Event()

        def config_only():
            yield inference_service_pb2.HeatmapRequest(config=huge)
            gate.wait(30)

        calls = [client.inference.Heatmap(config_only(), timeout=60) for _ in range(3)]
        time.sleep(1.0)
        assert server.memory.in_use == 0  # one holds the slot, waiting for its first tile
        gate.set()
        for call in calls:
            with pytest.raises(grpc.RpcError) as info:
                list(call)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # no tiles sent
        # 200,000 px wide with 512 px tiles: a 536-row window alone is 429 MB > 300 MB.
        tile = encode_tile(np.zeros((512, 512, 3), dtype=np.uint8))
        with pytest.raises(grpc.RpcError) as info:
            list(_stream(client, huge, [tile]))
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "--max-memory" in info.value.details()
        assert dict(info.value.trailing_metadata()).get("milsil-retry") == "never"
        # A region that fits, cancelled half-way: its reservation comes back.
        wide = inference_service_pb2.HeatmapConfig(
            model="models/tiny",
            region=common_pb2.Region(width=4096, height=4096),
            stride=4,
        )
        stop = threading.Event()

        def slow():
            yield inference_service_pb2.HeatmapRequest(config=wide)
            for y in range(0, 4096, 512):
                for x in range(0, 4096, 512):
                    if stop.is_set():
                        return
                    yield inference_service_pb2.HeatmapRequest(
                        tiles=[encode_tile(np.zeros((512, 512, 3), np.uint8), "raw", x, y)]
                    )
                    time.sleep(0.05)

        call = client.inference.Heatmap(slow(), timeout=60)
        assert next(call).HasField("header")
        assert server.memory.in_use > 0
        call.cancel()
        stop.set()
        deadline = time.monotonic() + 10
        while server.memory.in_use and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.memory.in_use == 0
        client.close()
