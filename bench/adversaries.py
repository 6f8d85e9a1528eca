"""Adversaries for ``bench/soak.py --adversaries``: clients that try to stall or starve
the others, and a victim whose latency is measured alone and next to each of them.

Each adversary runs on threads of its own until its ``stop`` event is set:

* ``stalled`` sends a Heatmap config for a 2048x2048 region and half its tiles, then
  nothing (until the server's idle limit ends the call, then again);
* ``idle`` keeps 16 streams open that send nothing;
* ``connections`` is one user with 50 connections, each looping a small Heatmap;
* ``roi`` loops AnnotateSlide with a 500-vertex self-crossing ROI (needs a slide root).

Every adversary uses the ``mallory`` token, the victim ``victim``: the server counts them
as two users (its ``--tokens-file``).
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable

import numpy as np

TOKENS = {"honest": "token-honest", "victim": "token-victim", "mallory": "token-mallory"}
ADVERSARIES = ("stalled", "idle", "connections", "roi")


def tokens_file_text() -> str:
    return "".join(f"{name} {token}\n" for name, token in TOKENS.items())


def victim_latencies(
    target: str, model: str, image: np.ndarray, stride: int, until: Callable[[], bool]
) -> list[float]:
    """The victim's small Heatmap, called again and again until ``until()`` on a connection
    of its own (its first call, which sets the connection up, not timed); seconds each
    (waiting included; a failed call counts as its time to fail, marked negative)."""
    import grpc

    from milsil.client import MilsilClient

    client = MilsilClient(target, token=TOKENS["victim"], timeout=120, on_wait=lambda _l: None)
    seconds = []
    try:
        try:
            client.heatmap(model, image, stride=stride)  # the connection set up, not timed
        except grpc.RpcError:
            pass
        while not until():
            t0 = time.perf_counter()
            try:
                client.heatmap(model, image, stride=stride)
                seconds.append(time.perf_counter() - t0)
            except grpc.RpcError:
                seconds.append(-(time.perf_counter() - t0))
    finally:
        client.close()
    return seconds


def start(kind: str, target: str, model: str, stop: threading.Event) -> list[threading.Thread]:
    """Start adversary ``kind``; its threads end once ``stop`` is set."""
    from milsil.client import MilsilClient, encode_tile
    from milsil.v1 import common_pb2, inference_service_pb2

    token = TOKENS["mallory"]

    def forever(work: Callable[[MilsilClient], None]) -> None:
        client = MilsilClient(target, token=token, timeout=120, on_wait=lambda _l: None)
        try:
            while not stop.is_set():
                try:
                    work(client)
                except Exception:  # noqa: BLE001 - refused or ended: try again
                    stop.wait(0.2)
        finally:
            client.close()

    def stalled(client: MilsilClient) -> None:
        config = inference_service_pb2.HeatmapConfig(
            model=model, region=common_pb2.Region(width=2048, height=2048), stride=4
        )
        tile = np.zeros((256, 256, 3), np.uint8)

        def half():
            yield inference_service_pb2.HeatmapRequest(config=config)
            for y in range(0, 1024, 256):
                for x in range(0, 2048, 256):
                    yield inference_service_pb2.HeatmapRequest(
                        tiles=[encode_tile(tile, "raw", x, y)]
                    )
            stop.wait(600)  # then nothing

        for _ in client.inference.Heatmap(half(), metadata=client.metadata, timeout=600):
            pass

    def idle(client: MilsilClient) -> None:
        def silent():
            stop.wait(600)
            return
            yield

        for _ in client.inference.Heatmap(silent(), metadata=client.metadata, timeout=600):
            pass

    image = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)

    def small(client: MilsilClient) -> None:
        client.heatmap(model, image, stride=4)

    def roi(client: MilsilClient) -> None:
        points = np.random.default_rng(2).uniform(0, 256, (500, 2)).tolist()
        shape = {"type": "Polygon", "coordinates": [[*points, points[0]]]}
        client.annotate_slide(model, "soak.tif", roi=shape, timeout=10)

    work, count = {
        "stalled": (stalled, 1),
        "idle": (idle, 16),
        "connections": (small, 50),
        "roi": (roi, 3),
    }[kind]
    threads = [threading.Thread(target=forever, args=(work,), daemon=True) for _ in range(count)]
    for t in threads:
        t.start()
    return threads


def summary(alone: list[float], under: list[float]) -> dict[str, object]:
    """The victim's median latency under an adversary against its median alone."""
    ok_alone = [s for s in alone if s >= 0]
    ok_under = [s for s in under if s >= 0]
    base = statistics.median(ok_alone) if ok_alone else float("nan")
    median = statistics.median(ok_under) if ok_under else float("nan")
    return {
        "calls": len(under),
        "failed": sum(s < 0 for s in under),
        "median_ms": round(1000 * median, 1),
        "max_ms": round(1000 * max((abs(s) for s in under), default=float("nan")), 1),
        "alone_median_ms": round(1000 * base, 1),
        "ratio": round(median / base, 2) if ok_under and ok_alone else None,
    }
