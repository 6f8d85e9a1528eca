#!/usr/bin/env python
"""Soak: many concurrent Heatmap/Annotate streams plus a training job, for a bounded time.

Starts ``milsil serve`` in its own process on loopback (defaults: one compute slot, a queue
of 8, 16 concurrent calls), imports a width-16 BagNet-9, uploads a small dataset and keeps
a training job running, then runs ``--streams`` clients (each its own connection, like
QuPath users) that alternate Heatmap and Annotate calls on 128x128 regions until
``--seconds`` have passed. A health probe runs every half second on a separate connection,
and the server's RSS and its compute-queue metrics are sampled every second.

Reported (one JSON document, also ``--json FILE``): the final status code of every call
by RPC, the busy answers the clients waited through (they retry with jittered backoff, as
the shipped clients do), queue-position messages, p50/p99 latency of the calls (waiting
included), calls per second, server RSS over time, health answers, the training jobs'
states, and the largest queue length and slots in use the metrics showed.

Exits non-zero when any call, probe or job ends UNKNOWN or INTERNAL, when a health probe
is not SERVING, when the server logs an unexpected failure, or when the server's RSS grows
without bound (the median of the last third of the run is over the median of the middle
third by more than ``--rss-growth-mb`` and 20%, or any sample is over ``--max-rss-mb``).

Loopback only; every loop is bounded by time and by ``--max-calls`` per stream.

With ``--adversaries stalled,idle,connections,roi`` (or ``all``; see
``bench/adversaries.py``) the server gets per-user tokens, a victim's small Heatmap is
timed alone first, then next to each adversary in turn (each for ``--adversary-seconds``,
alongside the honest load), and the report gives the victim's median latency under each
against its median alone (``adversaries``).

Usage: ``python bench/soak.py [--seconds 90] [--streams 32] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path

import numpy as np

# The tiny test models live with the tests (tests/server_support.py), not in the wheel.
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

BAD_CODES = {"UNKNOWN", "INTERNAL"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(data_dir: Path, metrics_port: int, extra: list[str], log: Path):
    cmd = [
        sys.executable,
        "-m",
        "milsil.cli",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--data-dir",
        str(data_dir),
        "--metrics-port",
        str(metrics_port),
        "--device",
        "cpu",
        "--log-level",
        "WARNING",
        *extra,
    ]
    handle = log.open("w")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=handle, text=True)
    line = proc.stdout.readline()
    if "listening on" not in line:
        proc.kill()
        raise SystemExit(f"server did not start: {line!r}; see {log}")
    return proc, line.split("listening on ")[1].split()[0]


def rss_mb(pid: int) -> float | None:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    match = re.search(r"VmRSS:\s+(\d+) kB", text)
    return int(match.group(1)) / 1024 if match else None


def scrape(port: int) -> dict[str, float]:
    """The gauges and counters of the server's /metrics this bench looks at."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(("milsil_compute_", "milsil_rejected_total", "milsil_jobs_")):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=90.0, help="how long (default 90)")
    parser.add_argument("--streams", type=int, default=32, help="concurrent clients (32)")
    parser.add_argument("--size", type=int, default=128, help="region side in pixels (128)")
    parser.add_argument("--stride", type=int, default=4, help="heatmap stride (4)")
    parser.add_argument("--width", type=int, default=16, help="BagNet-9 width (16)")
    parser.add_argument("--max-calls", type=int, default=10_000, help="per stream, at most")
    parser.add_argument("--call-timeout", type=float, default=120.0, help="deadline of a call")
    parser.add_argument("--rss-growth-mb", type=float, default=150.0)
    parser.add_argument("--max-rss-mb", type=float, default=4096.0)
    parser.add_argument("--no-training", action="store_true", help="inference only")
    parser.add_argument(
        "--serve-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra `milsil serve` argument (repeatable, e.g. --serve-arg=--compute-slots=2)",
    )
    parser.add_argument("--json", type=Path, help="write the report here too")
    parser.add_argument(
        "--adversaries",
        default="",
        help="comma-separated: stalled, idle, connections, roi, or all (default none)",
    )
    parser.add_argument(
        "--adversary-seconds", type=float, default=20.0, help="each adversary's turn (20)"
    )
    args = parser.parse_args(argv)
    from bench import adversaries as adv

    kinds = (
        adv.ADVERSARIES
        if args.adversaries == "all"
        else tuple(k for k in args.adversaries.split(",") if k)
    )
    for kind in kinds:
        if kind not in adv.ADVERSARIES:
            parser.error(f"--adversaries: unknown {kind!r}; allowed: {', '.join(adv.ADVERSARIES)}")
    token = adv.TOKENS["honest"] if kinds else None

    import grpc

    from milsil.client import MilsilClient
    from milsil.models import save_checkpoint
    from tests.server_support import tiny_bags, tiny_model

    report: dict[str, object] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
        "settings": {k: v for k, v in vars(args).items() if k not in ("json",) and not callable(v)},
    }
    failures: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        metrics_port = free_port()
        server_log = tmp / "server.log"
        serve_args = list(args.serve_arg)
        if kinds:
            (tmp / "tokens").write_text(adv.tokens_file_text())
            serve_args += ["--tokens-file", str(tmp / "tokens")]
        if "roi" in kinds:
            from milsil.wsi.synthetic import synthetic_slide

            (tmp / "slides").mkdir()
            synthetic_slide(tmp / "slides" / "soak.tif", 256, 256, block=64, seed=1)
            serve_args += ["--slide-root", str(tmp / "slides")]
        proc, target = start_server(tmp / "data", metrics_port, serve_args, server_log)
        try:
            setup = MilsilClient(target, timeout=120, token=token)
            save_checkpoint(tiny_model(width=args.width), tmp / "model.pt")
            model = setup.import_model(tmp / "model.pt", model_id="soak").name
            dataset = setup.upload_dataset(tiny_bags(patients=6, size=32), "soak").name
            train_config = {
                "arch": "bagnet9",
                "width": 4,
                "epochs": 10_000,  # cancelled when the soak ends
                "batch_size": 4,
                "seed": 1,
                "no_augment": True,
            }
            jobs = [] if args.no_training else [setup.start_training(dataset, train_config).name]

            rng = np.random.default_rng(0)
            images = [
                rng.integers(0, 256, (args.size, args.size, 3), dtype=np.uint8) for _ in range(4)
            ]
            setup.heatmap(model, images[0], stride=args.stride)  # load the model once
            victim_image = images[1][:64, :64]
            alone: list[float] = []
            if kinds:  # the victim alone: no other load at all
                t_alone = time.monotonic() + 5.0
                alone = adv.victim_latencies(
                    target, model, victim_image, args.stride, lambda: time.monotonic() > t_alone
                )
            under: dict[str, list[float]] = {}

            def adversary_phases() -> None:
                for kind in kinds:
                    stop_kind = threading.Event()
                    threads = adv.start(kind, target, model, stop_kind)
                    until = time.monotonic() + args.adversary_seconds
                    under[kind] = adv.victim_latencies(
                        target,
                        model,
                        victim_image,
                        args.stride,
                        lambda u=until: time.monotonic() > u,
                    )
                    stop_kind.set()
                    for t in threads:
                        t.join(30)

            lock = threading.Lock()
            codes: dict[str, Counter] = {"Heatmap": Counter(), "Annotate": Counter()}
            latencies: list[float] = []
            waits = Counter()
            start = time.monotonic()
            end = start + args.seconds

            def stream(k: int) -> None:
                def on_wait(line: str) -> None:
                    kind = "busy" if "server busy" in line else "queued"
                    with lock:
                        waits[kind] += 1

                client = MilsilClient(target, on_wait=on_wait, token=token)
                try:
                    for n in range(args.max_calls):
                        now = time.monotonic()
                        if now >= end:
                            break
                        kind = "Heatmap" if (n + k) % 2 == 0 else "Annotate"
                        image = images[(n + k) % len(images)]
                        t0 = time.perf_counter()
                        try:
                            if kind == "Heatmap":
                                client.heatmap(
                                    model, image, stride=args.stride, timeout=args.call_timeout
                                )
                            else:
                                client.annotate(
                                    model, image, stride=args.stride, timeout=args.call_timeout
                                )
                            code = "OK"
                        except grpc.RpcError as exc:
                            code = exc.code().name
                        except Exception as exc:  # noqa: BLE001 - counted, the soak goes on
                            code = f"client error {type(exc).__name__}"
                        with lock:
                            codes[kind][code] += 1
                            if code == "OK":
                                latencies.append(time.perf_counter() - t0)
                finally:
                    client.close()

            health = Counter()
            samples: list[dict[str, float]] = []
            stop = threading.Event()

            def probe() -> None:
                prober = MilsilClient(target)
                while not stop.wait(0.5):
                    t0 = time.perf_counter()
                    try:
                        answer = prober.health(timeout=2.0)
                    except grpc.RpcError as exc:
                        answer = exc.code().name
                    with lock:
                        health[answer] += 1
                        health["_max_ms"] = max(
                            health["_max_ms"], round(1000 * (time.perf_counter() - t0))
                        )
                prober.close()

            def sample() -> None:
                while not stop.wait(1.0):
                    row = {"t": round(time.monotonic() - start, 1), "rss_mb": rss_mb(proc.pid)}
                    try:
                        m = scrape(metrics_port)
                        row["queue"] = m.get("milsil_compute_queue_length", 0.0)
                        row["in_use"] = m.get("milsil_compute_slots_in_use", 0.0)
                    except OSError:
                        pass
                    samples.append(row)

            helpers = [threading.Thread(target=probe), threading.Thread(target=sample)]
            workers = [threading.Thread(target=stream, args=(k,)) for k in range(args.streams)]
            workers.append(threading.Thread(target=adversary_phases))
            for t in helpers + workers:
                t.start()
            job_states: list[str] = []
            while any(t.is_alive() for t in workers):
                time.sleep(1.0)
                for name in list(jobs):
                    job = setup.get_job(name)
                    state = training_state(job)
                    if state in ("SUCCEEDED", "FAILED", "CANCELLED", "INTERRUPTED"):
                        job_states.append(state)
                        if job.error:
                            job_states.append(f"error: {job.error[:200]}")
                        jobs.remove(name)
                        if time.monotonic() < end and len(job_states) < 20:
                            jobs.append(setup.start_training(dataset, train_config).name)
            wall = time.monotonic() - start
            for name in jobs:
                job = setup.get_job(name)
                job_states.append(
                    f"{training_state(job)} at the end, epoch {job.progress.epoch}, "
                    f"step {job.progress.step}"
                )
                setup.cancel_job(name)
                job_states.append(training_state(setup.wait_job(name, timeout=60)))
            stop.set()
            for t in helpers:
                t.join(10)
            final_metrics = scrape(metrics_port)
            setup.close()
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
        log_text = server_log.read_text()

    latencies.sort()
    calls = sum(sum(c.values()) for c in codes.values())
    rss = [s["rss_mb"] for s in samples if s.get("rss_mb") is not None]
    third = max(1, len(rss) // 3)
    middle = statistics.median(rss[third : 2 * third] or rss) if rss else 0.0
    last = statistics.median(rss[-third:]) if rss else 0.0
    report.update(
        {
            "wall_s": round(wall, 1),
            "calls": calls,
            "calls_per_s": round(calls / wall, 2),
            "codes": {kind: dict(c) for kind, c in codes.items()},
            "busy_answers_waited_through": waits["busy"],
            "queue_position_messages": waits["queued"],
            "latency_ms": {
                "p50": round(1000 * percentile(latencies, 0.5)),
                "p99": round(1000 * percentile(latencies, 0.99)),
                "max": round(1000 * (latencies[-1] if latencies else float("nan"))),
            },
            "health": dict(health),
            "training_jobs": job_states,
            "rss_mb": {
                "first": round(rss[0], 1) if rss else None,
                "middle_third_median": round(middle, 1),
                "last_third_median": round(last, 1),
                "peak": round(max(rss), 1) if rss else None,
                "every_10s": [round(r, 1) for r in rss[::10]],
            },
            "max_queue_length": max((s.get("queue", 0) for s in samples), default=0),
            "max_slots_in_use": max((s.get("in_use", 0) for s in samples), default=0),
            "rejected_by_reason": {
                k.split('"')[1]: v
                for k, v in final_metrics.items()
                if k.startswith("milsil_rejected_total{")
            },
            "server_exit_code": proc.returncode,
        }
    )
    if kinds:
        report["adversaries"] = {kind: adv.summary(alone, under.get(kind, [])) for kind in kinds}
    for kind, counter in codes.items():
        for code in counter:
            if code in BAD_CODES or code.startswith("client error"):
                failures.append(f"{kind}: {counter[code]} x {code}")
    not_serving = {k: v for k, v in health.items() if k not in ("SERVING", "_max_ms")}
    if not_serving or not health.get("SERVING"):
        failures.append(f"health not SERVING throughout: {dict(health)}")
    if any("error:" in s and ("INTERNAL" in s or "internal error" in s) for s in job_states):
        failures.append(f"a training job failed internally: {job_states}")
    if "failed unexpectedly" in log_text or "Traceback" in log_text:
        failures.append("the server logged an unexpected failure (see its log)")
    if rss and last > middle + max(args.rss_growth_mb, 0.2 * middle):
        failures.append(f"server RSS grows: {middle:.0f} MB -> {last:.0f} MB")
    if rss and max(rss) > args.max_rss_mb:
        failures.append(f"server RSS {max(rss):.0f} MB over --max-rss-mb {args.max_rss_mb:.0f}")
    report["failures"] = failures
    report["verdict"] = "FAIL" if failures else "PASS"
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text)
    if failures:
        print("\n".join(["soak FAILED:", *failures]), file=sys.stderr)
        if "failed unexpectedly" in log_text or "Traceback" in log_text:
            print(log_text[-4000:], file=sys.stderr)
        return 1
    return 0


def training_state(job) -> str:
    from milsil.v1 import training_service_pb2

    return training_service_pb2.Job.State.Name(job.state)


if __name__ == "__main__":
    sys.exit(main())
