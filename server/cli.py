"""``milsil serve``: run the gRPC server until SIGTERM/SIGINT, then drain."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
from pathlib import Path

from milsil.errors import MilsilError


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    from milsil.inference.precision import EXPECTED_MAX_LOGIT_DEVIATION
    from milsil_server.app import default_data_dir

    p = subparsers.add_parser(
        "serve",
        help="run the gRPC server (QuPath backend)",
        description=(
            "Serve models, heatmaps, QuPath annotations and training jobs over gRPC "
            "(milsil.v1; health and reflection included). Listens on loopback by default. "
            "SIGTERM drains: health NOT_SERVING, new calls UNAVAILABLE, running jobs checkpoint."
        ),
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1: this machine only)",
    )
    p.add_argument(
        "--port", type=int, default=50051, help="port (0 = any free port; default 50051)"
    )
    p.add_argument(
        "--data-dir",
        type=Path,
        default=default_data_dir(),
        help=f"datasets, models, jobs and the SQLite store (default {default_data_dir()})",
    )
    p.add_argument(
        "--slide-root",
        dest="slide_roots",
        type=Path,
        action="append",
        default=[],
        metavar="DIR",
        help="folder of slides the server may read itself (AnnotateSlide, SlideHeatmap); "
        "repeatable; paths outside every slide root are refused (default: none, RPCs off)",
    )
    p.add_argument(
        "--output-root",
        type=Path,
        default=None,
        metavar="DIR",
        help="where AnnotateSlide/SlideHeatmap write probability TIFFs (default DATA_DIR/outputs)",
    )
    p.add_argument(
        "--token",
        default=None,
        help="require 'authorization: Bearer TOKEN' (default: $MILSIL_TOKEN if set; health is exempt)",
    )
    p.add_argument(
        "--tokens-file",
        type=Path,
        default=None,
        metavar="FILE",
        help="per-user tokens: one 'NAME TOKEN' per line ('#' comments), re-read when it "
        "changes; a user's calls share one turn in the compute queue",
    )
    p.add_argument(
        "--max-calls-per-client",
        type=int,
        default=None,
        metavar="N",
        help="once --max-workers calls are open, a client (user, or host without tokens) "
        "holding fewer than N still gets one of N spare places, so one client's idle "
        "streams never shut the others out (default: half of --max-workers)",
    )
    p.add_argument("--tls-cert", help="PEM certificate chain: enables TLS")
    p.add_argument("--tls-key", help="PEM private key of --tls-cert")
    p.add_argument(
        "--tls-client-ca",
        help="PEM CA bundle: require client certificates signed by it (mutual TLS)",
    )
    p.add_argument(
        "--max-message-mb",
        type=int,
        default=64,
        help="largest message in either direction (MiB; default 64)",
    )
    p.add_argument(
        "--max-workers",
        type=int,
        default=16,
        help="most concurrent calls (health not counted: it always answers); more get "
        "RESOURCE_EXHAUSTED, busy (default 16)",
    )
    p.add_argument(
        "--compute-slots",
        type=int,
        default=1,
        help="inference computations at once on each device (default 1)",
    )
    p.add_argument(
        "--max-waiting",
        type=int,
        default=8,
        help="requests that may wait for a compute slot; more get RESOURCE_EXHAUSTED (default 8)",
    )
    p.add_argument(
        "--max-region-pixels",
        type=int,
        default=1 << 36,
        help="largest image a Heatmap/Annotate region may span (width x height pixels at its "
        "downsample; default 2^36). Regions are streamed in bands: this bounds the image, "
        "memory is bounded by --max-memory",
    )
    p.add_argument(
        "--max-memory",
        type=int,
        default=None,
        metavar="MB",
        help="memory all Heatmap/Annotate calls may hold at once, in MB (default: a quarter "
        "of the machine's memory). A call holds about (tile height + 2 x band) x region "
        "width x 4 bytes (band: 512 rows on a CPU) plus one chunk of the network; beyond "
        "the budget: RESOURCE_EXHAUSTED",
    )
    p.add_argument(
        "--metrics-port", type=int, default=None, help="serve Prometheus metrics on this HTTP port"
    )
    p.add_argument(
        "--grace",
        type=float,
        default=10.0,
        help="seconds in-flight requests get on shutdown (default 10)",
    )
    p.add_argument(
        "--stream-idle-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="end a streamed call whose client sends nothing for this long (DEADLINE_EXCEEDED, "
        "its memory returned; default 30; 0 = no limit)",
    )
    p.add_argument(
        "--devices",
        "--device",
        dest="devices",
        default=None,
        metavar="LIST",
        help="devices that compute, comma-separated, e.g. cuda:0,cuda:1: one compute slot "
        "each, all fed by the one fair queue (default: every visible GPU, else cpu; cpu may "
        "repeat: cpu,cpu is two CPU slots)",
    )
    p.add_argument(
        "--tf32",
        action="store_true",
        help="fast mode on CUDA: TF32 convolutions and matmuls (logits within about "
        f"{EXPECTED_MAX_LOGIT_DEVIATION['tf32']:g} of exact, measured on an H200; the heatmap "
        "header says so). Default: exact (TF32 off). No effect on a CPU",
    )
    p.add_argument(
        "--bf16",
        action="store_true",
        help="fast mode: the heatmap network in bfloat16 (heatmaps, Annotate, AnnotateSlide, "
        "SlideHeatmap and MeasureObjects; ClassifyBag stays float32): logits within about "
        f"{EXPECTED_MAX_LOGIT_DEVIATION['bf16']:g} of exact, measured on an H200, and the "
        "heatmap header says so; fastest on GPUs and on CPUs with bfloat16 units (AMX, "
        "AVX-512 BF16). Default: exact",
    )
    p.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from milsil.inference.precision import fast_mode
    from milsil_server.app import ServerConfig, build_server
    from milsil_server.resources import Limits

    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    if args.max_memory is not None and args.max_memory < 1:
        raise MilsilError(f"--max-memory must be >= 1 (MB), got {args.max_memory}")
    for name in ("max_message_mb", "max_workers", "compute_slots", "max_region_pixels"):
        if getattr(args, name) < 1:
            raise MilsilError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.max_calls_per_client is not None and args.max_calls_per_client < 1:
        raise MilsilError(f"--max-calls-per-client must be >= 1, got {args.max_calls_per_client}")
    if args.stream_idle_timeout < 0:
        raise MilsilError(
            f"--stream-idle-timeout must be >= 0 (seconds; 0 = no limit), got {args.stream_idle_timeout}"
        )
    if not 0 <= args.port <= 65535:
        raise MilsilError(f"--port must be 0-65535, got {args.port}")
    config = ServerConfig(
        host=args.host,
        port=args.port,
        data_dir=args.data_dir,
        token=args.token or os.environ.get("MILSIL_TOKEN") or None,
        tokens_file=args.tokens_file,
        max_calls_per_client=args.max_calls_per_client,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_client_ca=args.tls_client_ca,
        max_message_mb=args.max_message_mb,
        max_workers=args.max_workers,
        compute_slots=args.compute_slots,
        max_waiting=args.max_waiting,
        metrics_port=args.metrics_port,
        grace=args.grace,
        stream_idle_timeout=args.stream_idle_timeout,
        device=args.devices,
        precision=fast_mode(args.tf32, args.bf16),
        limits=Limits(max_region_pixels=args.max_region_pixels),
        max_memory_mb=args.max_memory,
        slide_roots=tuple(args.slide_roots),
        output_root=args.output_root,
    )
    # Everything this process writes is owner-only (the data dir holds patient ids and
    # labels; slide maps and TIFFs are patient data too), whatever the caller's umask.
    # Share an output root with a default ACL (setfacl -d), which the umask does not mask.
    os.umask(0o077)
    server = build_server(config)
    print(
        f"milsil serve: listening on {args.host}:{server.port} (data dir {server.store.root})",
        flush=True,
    )
    stop = threading.Event()

    def on_signal(signum, frame) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    while not stop.wait(0.5):
        pass
    print("milsil serve: draining", flush=True)
    server.drain()
    print("milsil serve: stopped", flush=True)
    # Work still running after the grace (a computation that does not check its call) is
    # abandoned: the process ends now instead of joining the RPC threads at exit.
    logging.shutdown()
    os._exit(0)
