"""No client can stall or starve the others (issue 21), proved by the order of events.

A real server on loopback, real channels: a client that stops sending half-way holds its
memory and no compute slot, and is ended by the idle limit; a client's cancel mid-stream
is logged as CANCELLED, never as a server fault.
"""

from __future__ import annotations

import json
import logging
import threading
import time

import grpc
import numpy as np
import pytest
from server_support import register_tiny_model, running_server

from milsil.client import MilsilClient, encode_tile
from milsil.v1 import common_pb2, inference_service_pb2

IDLE_SECONDS = 5.0  # the test servers' --stream-idle-timeout


def _wait_for(condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def _assert_logged_as_cancelled(caplog, method: str) -> None:
    """``method``'s call is in the access log as CANCELLED, and nothing logged an error."""

    def lines() -> list[dict]:
        access = [r.getMessage() for r in caplog.records if r.name.endswith("access")]
        return [entry for entry in map(json.loads, access) if entry["method"].endswith(method)]

    _wait_for(lambda: lines())
    assert lines()[0]["code"] == "CANCELLED"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def _half_sent(stop: threading.Event, width: int = 512, height: int = 1024):
    """A Heatmap stream that sends its config and its first row of tiles, then nothing
    until ``stop`` is set (a client stuck half-way)."""
    config = inference_service_pb2.HeatmapConfig(
        model="models/tiny", region=common_pb2.Region(width=width, height=height), stride=4
    )
    tile = np.zeros((256, 256, 3), np.uint8)
    yield inference_service_pb2.HeatmapRequest(
        config=config, tiles=[encode_tile(tile, "raw", x, 0) for x in range(0, width, 256)]
    )
    stop.wait(120)


def test_a_stalled_heatmap_holds_no_slot_and_is_ended_by_the_idle_limit(tmp_path):
    with running_server(tmp_path, compute_slots=1, stream_idle_timeout=IDLE_SECONDS) as server:
        register_tiny_model(server)
        target = f"127.0.0.1:{server.port}"
        stalled_client = MilsilClient(target, timeout=120)
        other = MilsilClient(target, timeout=120)
        stop = threading.Event()
        try:
            call = stalled_client.inference.Heatmap(_half_sent(stop), timeout=120)
            assert next(call).HasField("header")  # admitted: its window is reserved
            assert server.memory.in_use > 0
            # Another client's small Heatmap is served while the stalled stream is open.
            image = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
            result = other.heatmap("models/tiny", image, stride=2)
            assert result.logits.shape[-2:] == (32, 32)
            assert call.is_active()  # the stalled call is still open, not yet ended
            # ...until the idle limit ends it, naming the limit, its memory returned.
            with pytest.raises(grpc.RpcError) as info:
                list(call)
            assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert "--stream-idle-timeout" in info.value.details()
            _wait_for(lambda: server.memory.in_use == 0)
            assert server.slots.in_use == 0 and server.slots.waiting == 0
        finally:
            stop.set()
            stalled_client.close()
            other.close()


def test_a_client_cancel_mid_stream_is_logged_as_cancelled(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="milsil.server")
    with running_server(tmp_path) as server:
        register_tiny_model(server)
        client = MilsilClient(f"127.0.0.1:{server.port}", timeout=120)
        stop = threading.Event()
        try:
            call = client.inference.Heatmap(_half_sent(stop), timeout=120)
            assert next(call).HasField("header")  # the server now waits for more tiles
            call.cancel()

            _assert_logged_as_cancelled(caplog, "/Heatmap")
            _wait_for(lambda: server.memory.in_use == 0)
        finally:
            stop.set()
            client.close()


def _tokens(tmp_path):
    path = tmp_path / "tokens"
    path.write_text("# name token\nalice token-a\nbob token-b\n")
    return path


def test_idle_streams_of_one_client_leave_calls_for_the_others(tmp_path):
    """16 streams that send nothing (the whole --max-workers bound) from one user: another
    user's ListModels, health and small Heatmap are still served (spare places for clients
    under their share), and the first user's next call is refused as busy."""
    tokens = _tokens(tmp_path)
    config = dict(max_workers=16, tokens_file=tokens, stream_idle_timeout=600)
    with running_server(tmp_path / "srv", **config) as server:
        register_tiny_model(server)
        target = f"127.0.0.1:{server.port}"
        alice = MilsilClient(target, timeout=120, token="token-a")
        bob = MilsilClient(target, timeout=120, token="token-b")
        stop = threading.Event()

        def silent():
            stop.wait(120)
            return
            yield  # a generator that sends nothing

        def open_idle():
            return alice.inference.Heatmap(silent(), metadata=alice.metadata, timeout=120)

        calls = [open_idle() for _ in range(16)]
        try:
            _wait_for(lambda: server.state.active["rpc"] == 16)
            assert [m.name for m in bob.list_models()] == ["models/tiny"]
            assert bob.health() == "SERVING"
            image = np.zeros((64, 64, 3), np.uint8)
            assert bob.heatmap("models/tiny", image, stride=4).logits.shape[-2:] == (16, 16)
            extra = open_idle()
            with pytest.raises(grpc.RpcError) as info:
                list(extra)
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "this client holds 16" in info.value.details()
            assert not any(c.done() for c in calls)  # alice's idle streams are still open
        finally:
            stop.set()
            alice.close()
            bob.close()


def test_a_user_with_many_connections_gets_one_turn(tmp_path):
    """Alice sends 8 Heatmaps over 8 connections of her own while the slot is taken; Bob
    sends one after them: Bob is served after at most one of Alice's (one user, one turn)."""
    tokens = _tokens(tmp_path)
    config = dict(
        compute_slots=1, max_waiting=16, max_workers=32, tokens_file=tokens, metrics_port=0
    )
    with running_server(tmp_path / "srv", **config) as server:
        register_tiny_model(server)
        target = f"127.0.0.1:{server.port}"
        alice = [MilsilClient(target, timeout=120, token="token-a") for _ in range(8)]
        bob = MilsilClient(target, timeout=120, token="token-b")
        finished, lock = [], threading.Lock()
        image = np.zeros((96, 96, 3), np.uint8)

        def request(client, who):
            client.heatmap("models/tiny", image, stride=1)
            with lock:
                finished.append(who)

        release = threading.Event()
        held = threading.Event()

        def hold():
            with server.slots.acquire(lambda: True, "test-holder"):
                held.set()
                release.wait(120)

        holder = threading.Thread(target=hold, daemon=True)
        holder.start()
        assert held.wait(10)
        threads = [threading.Thread(target=request, args=(c, "alice")) for c in alice]
        for t in threads:
            t.start()
        _wait_for(lambda: server.slots.waiting == 8)
        threads.append(threading.Thread(target=request, args=(bob, "bob")))
        threads[-1].start()
        _wait_for(lambda: server.slots.waiting == 9)
        release.set()
        for t in threads:
            t.join(120)
        assert sorted(finished) == ["alice"] * 8 + ["bob"]
        assert finished.index("bob") <= 1, finished
        # The metrics count by user, not by connection.
        sample = server.metrics.registry.get_sample_value
        assert sample("milsil_client_requests_total", {"client": "user:alice", "code": "OK"}) == 8
        assert sample("milsil_client_requests_total", {"client": "user:bob", "code": "OK"}) == 1
        for c in [*alice, bob]:
            c.close()


def test_far_away_numbers_get_short_messages_that_name_the_problem(tmp_path):
    with running_server(tmp_path) as server:
        register_tiny_model(server)
        client = MilsilClient(f"127.0.0.1:{server.port}", timeout=60)
        try:
            huge = inference_service_pb2.HeatmapConfig(
                model="models/tiny", region=common_pb2.Region(width=1e308, height=64)
            )
            with pytest.raises(grpc.RpcError) as info:
                list(
                    client.inference.Heatmap(
                        iter([inference_service_pb2.HeatmapRequest(config=huge)])
                    )
                )
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert len(info.value.details()) < 200 and "1e+308" in info.value.details()
            region = inference_service_pb2.HeatmapConfig(
                model="models/tiny", region=common_pb2.Region(width=64, height=64)
            )
            far = encode_tile(np.zeros((64, 64, 3), np.uint8), "raw", 1e308, 0)
            request = inference_service_pb2.HeatmapRequest(config=region, tiles=[far])
            with pytest.raises(grpc.RpcError) as info:
                list(client.inference.Heatmap(iter([request])))
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            details = info.value.details()
            assert "tiles[0]" in details and "1e+308" in details and "outside" in details
        finally:
            client.close()


def _crossing_roi(vertices: int) -> dict:
    """A polygon whose edges cross each other all over (random vertices in a square)."""
    points = np.random.default_rng(1).uniform(0, 256, (vertices, 2)).tolist()
    return {"type": "Polygon", "coordinates": [[*points, points[0]]]}


def test_a_self_crossing_roi_is_repaired_only_up_to_the_vertex_limit(tmp_path):
    from milsil.wsi.geojson import MAX_REPAIR_VERTICES
    from milsil.wsi.synthetic import synthetic_slide

    root = tmp_path / "slides"
    root.mkdir()
    synthetic_slide(root / "a.tif", 160, 128, block=64, malignant_blocks=0.5, seed=1)
    with running_server(tmp_path / "srv", slide_roots=(root,)) as server:
        register_tiny_model(server)
        client = MilsilClient(f"127.0.0.1:{server.port}", timeout=60)
        try:
            with pytest.raises(grpc.RpcError) as info:
                client.annotate_slide("models/tiny", "a.tif", roi=_crossing_roi(500))
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            details = info.value.details()
            assert "config.roi" in details and f"{MAX_REPAIR_VERTICES} vertices" in details
            # Under the limit a self-crossing ROI is repaired and the call runs.
            small = _crossing_roi(MAX_REPAIR_VERTICES - 1)
            collection, _ = client.annotate_slide(
                "models/tiny", "a.tif", stride=8, tile_size=64, tissue_only=False, roi=small
            )
            assert collection["type"] == "FeatureCollection"
        finally:
            client.close()


def test_sigterm_ends_a_busy_server_within_the_grace(tmp_path):
    """SIGTERM while a long Heatmap computes: the process is gone within --grace + 5 s."""
    from server_support import serve_process, stop_process, tiny_model

    from milsil.models import save_checkpoint

    grace = 1.0
    proc, target = serve_process(tmp_path / "srv", "--grace", str(grace))
    client = MilsilClient(target, timeout=120)
    stop = threading.Event()
    try:
        path = tmp_path / "tiny.pt"
        save_checkpoint(tiny_model(), path, provenance={"config": {"patch_size": 32}})
        client.import_model(path, "tiny")
        config = inference_service_pb2.HeatmapConfig(
            model="models/tiny", region=common_pb2.Region(width=4096, height=4096), stride=1
        )

        def endless():
            yield inference_service_pb2.HeatmapRequest(config=config)
            tile = np.zeros((512, 512, 3), np.uint8)
            for y in range(0, 4096, 512):
                for x in range(0, 4096, 512):
                    if stop.is_set():
                        return
                    yield inference_service_pb2.HeatmapRequest(
                        tiles=[encode_tile(tile, "raw", x, y)]
                    )

        call = client.inference.Heatmap(endless(), timeout=120)
        assert next(call).HasField("header")  # computing (or about to) when SIGTERM comes
        proc.terminate()
        proc.wait(grace + 5)  # raises TimeoutExpired if the server outlives its grace
    finally:
        stop.set()
        client.close()
        stop_process(proc)


def _held_upload(stop: threading.Event):
    """An UploadDataset stream that sends its first message, then nothing until ``stop``."""
    from milsil.v1 import training_service_pb2

    yield training_service_pb2.UploadDatasetRequest(display_name="held")
    stop.wait(120)


def test_an_upload_cancelled_mid_stream_is_logged_as_cancelled(tmp_path, caplog):
    """UploadDataset (not a region stream): the client cancels while the server waits for
    its next message; the access log says CANCELLED and nothing is logged as an error."""

    caplog.set_level(logging.INFO, logger="milsil.server")
    with running_server(tmp_path) as server:
        client = MilsilClient(f"127.0.0.1:{server.port}", timeout=120)
        stop = threading.Event()
        held = _held_upload(stop)

        try:
            call = client.training.UploadDataset.future(held, timeout=120)
            _wait_for(lambda: server.state.active["rpc"] == 1)
            call.cancel()

            _assert_logged_as_cancelled(caplog, "/UploadDataset")
        finally:
            stop.set()
            client.close()


def test_the_tokens_file_is_reread_when_it_changes(tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text("alice token-a\n")
    with running_server(tmp_path / "srv", tokens_file=tokens, token="single") as server:
        target = f"127.0.0.1:{server.port}"
        bob = MilsilClient(target, timeout=30, token="token-b")
        single = MilsilClient(target, timeout=30, token="single")
        try:
            with pytest.raises(grpc.RpcError) as info:
                bob.list_models()
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert single.list_models() == []  # the single --token still works
            tokens.write_text("alice token-a\nbob token-b  # added while serving\n")
            assert bob.list_models() == []
        finally:
            bob.close()
            single.close()


def test_a_turn_of_an_admitted_call_is_never_refused_nor_displaced():
    """A streamed call taking its compute turn again queues in its client's place even
    when the queue is full, and no newcomer can take that place."""
    from milsil_server.errors import Busy
    from milsil_server.slots import ComputeSlots

    slots = ComputeSlots(slots=1, max_waiting=1)
    active = lambda: True  # noqa: E731
    holder = slots._enqueue("H", active)  # noqa: SLF001 - drive the queue step by step
    turn = slots._enqueue("T", active, admitted=True)  # noqa: SLF001 - a band's turn
    assert not turn.granted and slots.waiting == 1  # queued although the queue is full
    with pytest.raises(Busy):
        slots._enqueue("N", active)  # noqa: SLF001 - would displace T's turn: refused
    assert not turn.displaced
    slots._leave(holder)  # noqa: SLF001
    assert turn.granted
    slots._leave(turn)  # noqa: SLF001
    assert slots.in_use == 0 and slots.waiting == 0


def test_an_upload_that_stops_sending_is_ended_by_the_idle_limit(tmp_path):
    """The idle limit holds for every client-streaming RPC, not only regions."""

    with running_server(tmp_path, stream_idle_timeout=IDLE_SECONDS) as server:
        client = MilsilClient(f"127.0.0.1:{server.port}", timeout=120)
        stop = threading.Event()
        held = _held_upload(stop)

        try:
            with pytest.raises(grpc.RpcError) as info:
                client.training.UploadDataset(held, timeout=120)
            assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert "--stream-idle-timeout" in info.value.details()
            assert server.state.active["rpc"] == 0
        finally:
            stop.set()
            client.close()


def test_too_many_objects_are_refused_as_they_arrive_and_their_memory_returned(tmp_path):
    """Objects are counted message by message: the message that would pass the limit is
    refused before its objects are built, and what earlier messages built is returned."""
    from milsil_server.resources import Limits

    with running_server(tmp_path, limits=Limits(max_objects=10)) as server:
        register_tiny_model(server)
        client = MilsilClient(f"127.0.0.1:{server.port}", timeout=60)
        square = json.dumps({"type": "Polygon", "coordinates": [[[0, 0], [4, 0], [4, 4], [0, 0]]]})

        def objects(first: int, count: int) -> list:
            return [
                inference_service_pb2.MeasureObject(id=str(k), geometry=square)
                for k in range(first, first + count)
            ]

        config = inference_service_pb2.MeasureObjectsConfig(
            model="models/tiny", region=common_pb2.Region(width=20, height=20)
        )
        Request = inference_service_pb2.MeasureObjectsRequest
        requests = [
            Request(config=config, objects=objects(0, 6)),
            Request(objects=objects(6, 1_000)),  # 1,006 in all: refused before it is read
        ]
        try:
            with pytest.raises(grpc.RpcError) as info:
                list(client.inference.MeasureObjects(iter(requests), timeout=30))
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            details = info.value.details()
            assert "at most 10 objects" in details and "would make 1006" in details
            _wait_for(lambda: server.memory.in_use == 0)
        finally:
            client.close()
