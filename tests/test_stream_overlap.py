"""Streamed regions compute while they receive (issue 16), proved by the order of events.

A real server on loopback, real channels: Heatmap, Annotate and MeasureObjects stream a
region of seven tile rows (four bands of at most 143 rows: the first is handed out when
the fourth row arrives). Two orders are checked:

* *band 0 computes while later tiles are decoded*: the server's compute of band 0 waits
  until a tile has been decoded after band 0 was handed out. Receiving and computing on
  one thread cannot do that (the decode would wait for the compute, which waits for the
  decode): the wait would run out and the test fail (as it does on the previous server);
* *a band is computed before the last tile is sent*: the client holds back the last tile
  row until it has seen a band computed (Heatmap: a tile reply with samples on the
  channel; Annotate and MeasureObjects answer once, so the server's compute is watched).
"""

from __future__ import annotations

import json
import threading
import time

import grpc
import numpy as np
import pytest
from server_support import register_tiny_model, running_server

import milsil_server.region_stream as region_stream
from milsil.client import MilsilClient, encode_tile
from milsil.inference.tiling import BandCanvas
from milsil.v1 import common_pb2, inference_service_pb2

WIDTH, HEIGHT, TILE = 128, 448, 64  # 7 rows of 2 tiles; bands of 143 rows (width-8 BagNet-9)
STALL_SECONDS = 60.0  # how long a wait may take before the test calls it a deadlock


class Probe:
    """The server's bands handed out and computed and its tile decodes, in order; band 0's
    compute held until a tile has been decoded after band 0 was handed out."""

    def __init__(self) -> None:
        self.events: list[tuple[str, int]] = []
        self.cond = threading.Condition()
        self.decoded_during_band0 = 0  # decodes after band 0 was handed out, before it was done

    def note(self, kind: str, index: int) -> None:
        with self.cond:
            self.events.append((kind, index))
            handed0 = ("handed", 0) in self.events and ("computed", 0) not in self.events
            if kind == "decode" and handed0:
                self.decoded_during_band0 += 1
            self.cond.notify_all()

    def band_computed(self) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: ("computed", 0) in self.events, STALL_SECONDS)

    def install(self, monkeypatch) -> None:
        band_logits, decode_tile = region_stream.band_logits, region_stream.decode_tile
        take = BandCanvas._take

        def handing(canvas, end):
            band = take(canvas, end)
            self.note("handed", band.index)
            return band

        def computing(model, band, *args, **kwargs):
            if band.index == 0:
                # Held until the receiver decodes a tile after band 0 was handed out: one
                # thread that receives and computes never gets there.
                with self.cond:
                    self.cond.wait_for(lambda: self.decoded_during_band0 > 0, STALL_SECONDS)
            out = band_logits(model, band, *args, **kwargs)
            self.note("computed", band.index)
            return out

        def decoding(*args, **kwargs):
            pixels = decode_tile(*args, **kwargs)
            self.note("decode", int(args[4].removeprefix("tiles[").rstrip("]")))
            return pixels

        monkeypatch.setattr(BandCanvas, "_take", handing)
        monkeypatch.setattr(region_stream, "band_logits", computing)
        monkeypatch.setattr(region_stream, "decode_tile", decoding)


@pytest.fixture
def env(tmp_path, monkeypatch):
    probe = Probe()
    probe.install(monkeypatch)
    with running_server(tmp_path) as server:
        register_tiny_model(server)
        client = MilsilClient(f"127.0.0.1:{server.port}", timeout=300)
        try:
            yield client, probe, server
        finally:
            client.close()
        # Every call's receiver thread has ended with its call (none left reading).
        _wait_for(lambda: not [t for t in threading.enumerate() if t.name == "milsil-receiver"])


def _wait_for(condition, timeout: float = STALL_SECONDS) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def _rows() -> list[list[common_pb2.Tile]]:
    image = np.random.default_rng(0).integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    return [
        [encode_tile(image[y : y + TILE, x : x + TILE], "raw", x, y) for x in range(0, WIDTH, TILE)]
        for y in range(0, HEIGHT, TILE)
    ]


def _requests(request_cls, first: dict, release: threading.Event, sent: list[str]):
    """``first`` (config, objects), the tile rows but the last, then the last row once
    ``release`` is set (noting in ``sent`` what went out, and whether it had to wait)."""
    rows = _rows()
    yield request_cls(**first)
    for row in rows[:-1]:
        yield request_cls(tiles=row)
    sent.append("held")
    sent.append("released" if release.wait(STALL_SECONDS) else "timed out")
    yield request_cls(tiles=rows[-1])
    sent.append("last row")


def _region() -> common_pb2.Region:
    return common_pb2.Region(width=WIDTH, height=HEIGHT, downsample=1)


def _assert_overlapped(probe: Probe, sent: list[str]) -> None:
    assert probe.decoded_during_band0 > 0, "no tile was decoded before band 0 was computed"
    assert sent == ["held", "released", "last row"]
    computed = [i for kind, i in probe.events if kind == "computed"]
    assert computed == [0, 1, 2, 3]  # 448 rows: bands of 143, 143, 143 and 19


def test_heatmap_computes_band_0_while_later_tiles_arrive(env):
    client, probe, _ = env
    release, sent = threading.Event(), []
    config = inference_service_pb2.HeatmapConfig(model="models/tiny", region=_region(), stride=1)
    requests = _requests(inference_service_pb2.HeatmapRequest, {"config": config}, release, sent)
    replies = []
    for response in client.inference.Heatmap(requests, timeout=300):
        if response.HasField("tile"):
            replies.append(response.tile)
            if response.tile.rows > 0:
                release.set()  # a band's samples: the last row may go now
    _assert_overlapped(probe, sent)
    assert sorted(t.tile_index for t in replies) == list(range(14))
    assert sum(t.rows * t.cols for t in replies) == HEIGHT * WIDTH


def test_annotate_computes_band_0_while_later_tiles_arrive(env):
    client, probe, _ = env
    release, sent = threading.Event(), []
    config = inference_service_pb2.AnnotateConfig(
        heatmap=inference_service_pb2.HeatmapConfig(
            model="models/tiny", region=_region(), stride=1
        ),
        class_name="malignant",
    )
    requests = _requests(inference_service_pb2.AnnotateRequest, {"config": config}, release, sent)
    watcher = threading.Thread(target=lambda: probe.band_computed() and release.set())
    watcher.start()
    response = client.inference.Annotate(requests, timeout=300)
    watcher.join()
    _assert_overlapped(probe, sent)
    assert json.loads(response.geojson)["type"] == "FeatureCollection"


def test_measure_objects_computes_band_0_while_later_tiles_arrive(env):
    client, probe, server = env
    release, sent = threading.Event(), []
    config = inference_service_pb2.MeasureObjectsConfig(model="models/tiny", region=_region())
    square = {"type": "Polygon", "coordinates": [[[10, 10], [20, 10], [20, 20], [10, 20]]]}
    low = {"type": "Polygon", "coordinates": [[[10, 400], [30, 400], [30, 420], [10, 420]]]}
    objects = [
        inference_service_pb2.MeasureObject(id=name, geometry=json.dumps(geometry))
        for name, geometry in (("top", square), ("bottom", low))
    ]
    first = {"config": config, "objects": objects}
    requests = _requests(inference_service_pb2.MeasureObjectsRequest, first, release, sent)
    watcher = threading.Thread(target=lambda: probe.band_computed() and release.set())
    watcher.start()
    responses = list(client.inference.MeasureObjects(requests, timeout=300))
    watcher.join()
    _assert_overlapped(probe, sent)
    measured = [m for r in responses if r.HasField("measurements") for m in r.measurements.objects]
    assert [m.id for m in measured] == ["top", "bottom"]
    assert [m.pixels for m in measured] == [100, 400]
    assert server.memory.in_use == 0


def test_a_bad_tile_received_while_a_band_computes_ends_the_call_as_before(env):
    client, probe, server = env
    rows = _rows()
    bad = rows[-1][1]
    bad.data = bad.data[:-3]  # one pixel short
    config = inference_service_pb2.HeatmapConfig(model="models/tiny", region=_region(), stride=1)
    Request = inference_service_pb2.HeatmapRequest
    requests = [Request(config=config)] + [Request(tiles=row) for row in rows]
    with pytest.raises(grpc.RpcError) as info:
        list(client.inference.Heatmap(iter(requests), timeout=300))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == (
        f"tiles[13].data has {TILE * TILE * 3 - 3} bytes; RAW_RGB8 {TILE}x{TILE} needs "
        f"width*height*3 = {TILE * TILE * 3}"
    )
    assert probe.decoded_during_band0 > 0
    assert [i for kind, i in probe.events if kind == "computed"] == [0, 1]  # before the error
    _wait_for(lambda: server.memory.in_use == 0)
