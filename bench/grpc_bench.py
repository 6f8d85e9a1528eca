#!/usr/bin/env python
"""gRPC serving benchmark: tile streaming, Heatmap overhead vs in-process, concurrent clients.

Starts ``milsil serve`` as a separate process on loopback (as in production: the client
and server do not share a GIL), registers BagNet-9 models, and measures:

1. streaming: tile intake, MB/s of RAW tiles client->server, received, checked, decoded
   and placed (:func:`intake_seconds`), and of checkpoint bytes server->client (ExportModel);
2. overhead: wall time of ``Heatmap`` over gRPC divided by the same
   ``milsil.inference.heatmap.logit_heatmap`` call in this process on the same region (goal <= 1.10);
3. concurrency: N clients issuing small Heatmap requests: requests/s, p50 and p99 latency.

Usage: ``python bench/grpc_bench.py [--quick] [--json out.json] [--server-python PY]``
(``--server-python``: the interpreter that runs the server, e.g. another checkout's
virtual environment, to measure its server with this client: a before/after pair).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

# The tiny test models live with the tests (tests/server_support.py), not in the wheel.
# Imported by name from that folder: a `tests` package of some installed dependency
# would shadow the repository's (a folder without __init__.py) as `tests.server_support`.
TESTS = Path(__file__).resolve().parent.parent / "tests"
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))


def start_server(data_dir: Path, python: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [
            python,
            "-m",
            "milsil.cli",
            "serve",
            "--port",
            "0",
            "--data-dir",
            str(data_dir),
            "--max-message-mb",
            "128",
            "--log-level",
            "WARNING",
            "--max-waiting",
            "64",
            "--max-workers",
            "32",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline()
    if "listening on" not in line:
        raise SystemExit(f"server did not start: {line}")
    return proc, line.split("listening on ")[1].split()[0]


def best_of(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def intake_seconds(
    client, model: str, strip: np.ndarray, tile: int = 512, per_message: int | None = None
) -> float:
    """Seconds for the server to take in ``strip`` (RAW tiles of ``tile`` px, ``per_message``
    a message (default: the client's), built before the clock starts): from the call's start to the reply to one more tile,
    context only, sent after them. The strip is one band high (512 rows at stride 64), so
    no band is computed before that reply (it comes once every earlier tile was received,
    checked, decoded and placed), and the pixels are all that is timed."""
    from milsil.client.messages import image_tiles
    from milsil.client.regions import region_requests
    from milsil.v1 import common_pb2, inference_service_pb2

    height, width = strip.shape[:2]
    config = inference_service_pb2.HeatmapConfig(
        model=model,
        region=common_pb2.Region(width=width, height=height, downsample=1),
        stride=64,
    )
    Request = inference_service_pb2.HeatmapRequest
    grouping = {} if per_message is None else {"tiles_per_message": per_message}
    requests = list(
        region_requests({"config": config}, strip, 0, 0, 1.0, 0, tile, "raw", Request, **grouping)
    )
    below = np.zeros((2, 64, 3), np.uint8)  # in the context below the strip: no samples
    requests.append(Request(tiles=list(image_tiles(below, 64, "raw", 0, height, 1.0))))
    last = sum(len(r.tiles) for r in requests) - 1
    started = time.perf_counter()
    call = client.inference.Heatmap(iter(requests))
    for response in call:
        if response.HasField("tile") and response.tile.tile_index == last:
            elapsed = time.perf_counter() - started
            call.cancel()
            return elapsed
    raise RuntimeError("the server never answered the last tile")


def overhead_row(
    client, name: str, model, region: np.ndarray, stride: int, repeat: int, device=None
) -> dict[str, object]:
    """Streamed ``Heatmap`` of ``region`` over gRPC (512 px RAW tiles) against the same
    ``logit_heatmap`` in this process (on ``device``; default the model's), best of
    ``repeat`` each, alternated so that background load hits both alike."""
    from milsil.inference.heatmap import logit_heatmap

    grpc_times, local_times = [], []
    for _ in range(repeat):
        grpc_times.append(
            best_of(lambda: client.heatmap(name, region, stride=stride, tile_size=512), 1)
        )
        local_times.append(
            best_of(lambda: logit_heatmap(model, region, stride=stride, device=device), 1)
        )
    grpc_s, local_s = min(grpc_times), min(local_times)
    size = f"{region.shape[1]}x{region.shape[0]}"
    return {
        "region": size,
        "stride": stride,
        "grpc_s": round(grpc_s, 3),
        "in_process_s": round(local_s, 3),
        "ratio": round(grpc_s / local_s, 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smaller regions and fewer repeats")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--only",
        default="streaming,overhead,concurrency",
        help="the parts to run, comma-separated (default: all three)",
    )
    parser.add_argument(
        "--tiles-per-message",
        type=int,
        default=None,
        help="RAW 512 px tiles per message in the intake probe (default: the client's)",
    )
    parser.add_argument(
        "--server-python",
        default=sys.executable,
        help="the Python that runs the server (another checkout's venv: its server, this client)",
    )
    args = parser.parse_args(argv)

    from server_support import tiny_model

    from milsil.client import MilsilClient
    from milsil.models import save_checkpoint

    results: dict[str, object] = {"torch_threads": torch.get_num_threads(), "device": "cpu"}
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        proc, target = start_server(tmp / "data", args.server_python)
        try:
            client = MilsilClient(target, max_message_mb=128)
            models = {}
            for width in (8, 16, 64):
                model = tiny_model(width=width)
                save_checkpoint(model, tmp / f"w{width}.pt")
                client.import_model(tmp / f"w{width}.pt", model_id=f"w{width}")
                models[width] = model

            parts = set(args.only.split(","))
            if "streaming" in parts:
                # 1. streaming: tile intake (a strip one band high, nothing computed meanwhile)
                width = 4096 if args.quick else 8192
                strip = rng.integers(0, 256, (512, width, 3), dtype=np.uint8)
                mb = strip.nbytes / 1e6
                client.heatmap("models/w8", strip[:256, :256], stride=64)  # warm-up
                intakes = sorted(
                    intake_seconds(client, "models/w8", strip, per_message=args.tiles_per_message)
                    for _ in range(2 * args.repeat + 1)
                )
                wall = statistics.median(intakes)
                export_bytes = client.get_model("models/w64").size_bytes
                export = best_of(
                    lambda: client.export_model("models/w64", tmp / "out.pt"), args.repeat
                )
                results["streaming"] = {
                    "tiles_mb": round(mb, 1),
                    "tile_intake_s": round(wall, 4),
                    "tile_intake_mb_per_s": round(mb / wall, 1),  # the median of the repeats
                    "tile_intake_mb_per_s_best": round(mb / intakes[0], 1),
                    "export_mb_per_s": round(export_bytes / 1e6 / export, 1),
                }
                print(json.dumps({"streaming": results["streaming"]}), flush=True)

            if "overhead" in parts:
                # 2. overhead vs in-process on the same region
                overhead = []
                cases = [(16, 256 if args.quick else 384, 1), (64, 1024 if args.quick else 2048, 8)]
                for width, size, stride in cases:
                    region = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                    client.heatmap(
                        f"models/w{width}", region[:64, :64], stride=stride
                    )  # warm the model cache
                    row = {
                        "model": f"bagnet9 width {width}",
                        **overhead_row(
                            client, f"models/w{width}", models[width], region, stride, args.repeat
                        ),
                    }
                    overhead.append(row)
                    print(json.dumps({"overhead": row}), flush=True)
                results["overhead"] = overhead

            if "concurrency" in parts:
                # 3. concurrent clients
                small = rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)
                per_client = 5 if args.quick else 10
                concurrency = []
                for n in (1, 2, 4, 8):
                    latencies: list[float] = []
                    lock = threading.Lock()
                    clients = [MilsilClient(target) for _ in range(n)]

                    def work(c: MilsilClient, lock=lock, latencies=latencies) -> None:
                        for _ in range(per_client):
                            t = time.perf_counter()
                            c.heatmap("models/w16", small, stride=4)
                            with lock:
                                latencies.append(time.perf_counter() - t)

                    threads = [threading.Thread(target=work, args=(c,)) for c in clients]
                    t0 = time.perf_counter()
                    for t in threads:
                        t.start()
                    for t in threads:
                        t.join()
                    total = time.perf_counter() - t0
                    for c in clients:
                        c.close()
                    latencies.sort()
                    row = {
                        "clients": n,
                        "requests": len(latencies),
                        "requests_per_s": round(len(latencies) / total, 2),
                        "p50_ms": round(1000 * statistics.median(latencies), 1),
                        "p99_ms": round(
                            1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))], 1
                        ),
                    }
                    concurrency.append(row)
                    print(json.dumps({"concurrency": row}), flush=True)
                results["concurrency"] = concurrency
            client.close()
        finally:
            proc.terminate()
            proc.wait(30)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
