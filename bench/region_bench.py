#!/usr/bin/env python
"""Regions of any size: a large region streamed from a client, and the server reading it.

Starts ``milsil serve`` in a process of its own (loopback, CPU) with a small BagNet-9 and
measures, for regions of growing side (default 4,000 -> 8,000 -> 16,000 pixels):

1. the server's peak resident memory (``VmHWM`` of its process, reset before each call)
   while a client streams the region to ``Heatmap`` in row order (it must stay flat: the
   server holds a band of the region's width, not the region);
2. the streamed throughput (megapixels/s) against ``logit_heatmap`` run in this process on
   the same pixels (the largest region; skip with ``--no-reference``);
3. on the largest region: ``Annotate`` (outlines), and the server-reads-the-slide mode:
   ``AnnotateSlide`` on the same pixels written as a pyramidal TIFF under ``--slide-root``
   with the region as its ``roi``.

Usage: ``python bench/region_bench.py [--sizes 4000,8000,16000] [--stride 8] [--width 4]
[--json out.json]``. The default takes a few minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "tests") not in sys.path:
    sys.path.insert(0, str(ROOT / "tests"))

from server_support import (  # noqa: E402 - the test helpers live with the tests
    reset_peak_rss,
    rss_bytes,
    serve_process,
    stop_process,
)

MB = 2**20


def small_model(width: int):
    from milsil.models import create_model

    torch.manual_seed(0)
    model = create_model("bagnet9", num_classes=2, width=width, class_names=["benign", "malignant"])
    with torch.no_grad():  # logits of a few units that vary over the image
        model.fc.weight.mul_(1000.0)
    return model.eval()


def slide_like(side: int, seed: int = 0) -> np.ndarray:
    """Smooth blobs of colour over fine noise, built in strips (no float copy of it all)."""
    rng = np.random.default_rng(seed)
    n = -(-side // 128) + 1
    coarse = torch.from_numpy(rng.uniform(40, 215, (1, 3, n, n)).astype(np.float32))
    noise = rng.integers(-12, 13, (256, 256, 3)).astype(np.int16)
    out = np.empty((side, side, 3), dtype=np.uint8)
    for y in range(0, side, 1024):
        rows = min(1024, side - y)
        part = coarse[:, :, y // 128 : (y + rows) // 128 + 2]
        up = torch.nn.functional.interpolate(part, scale_factor=128, mode="bilinear")
        up = up[0, :, y % 128 : y % 128 + rows, :side].permute(1, 2, 0).numpy()
        reps = -(-side // 256)
        texture = np.tile(noise, (-(-rows // 256) + 1, reps, 1))[:rows, :side]
        out[y : y + rows] = np.clip(up + texture, 0, 255).astype(np.uint8)
    return out


def machine() -> str:
    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import os

    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {platform.platform()}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="4000,8000,16000", help="region sides, comma-separated")
    parser.add_argument("--stride", type=int, default=8)
    parser.add_argument("--width", type=int, default=4, help="BagNet-9 width (64 = full)")
    parser.add_argument("--tile", type=int, default=512, help="streamed tile side")
    parser.add_argument("--no-reference", action="store_true", help="skip in-process logit_heatmap")
    parser.add_argument("--no-slide", action="store_true", help="skip the server-reads-slide mode")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]

    from milsil.client import MilsilClient
    from milsil.inference.heatmap import chunk_side, logit_heatmap
    from milsil.models import save_checkpoint
    from milsil.wsi.tiff import write_pyramidal_tiff

    work = Path(tempfile.mkdtemp(prefix="region-bench-"))
    slides = work / "slides"
    slides.mkdir()
    model = small_model(args.width)
    save_checkpoint(model, work / "small.pt")
    proc, address = serve_process(work / "server", "--slide-root", str(slides))
    report: dict = {"machine": machine(), "stride": args.stride, "width": args.width, "rows": []}
    print(f"# region_bench: {report['machine']}")
    print(f"# BagNet-9 width {args.width}, stride {args.stride}, {args.tile} px RAW tiles\n")
    try:
        client = MilsilClient(address, timeout=3600)
        client.import_model(work / "small.pt", model_id="small")
        image = slide_like(max(sizes))
        client.heatmap("models/small", image[:512, :512], stride=args.stride)  # warm up
        idle = rss_bytes(proc.pid)
        report["server_idle_rss_mb"] = idle / MB
        print(
            "| region (px) | megapixels | Heatmap streamed: s | MP/s | server peak RSS | growth |"
        )
        print("| --- | --- | --- | --- | --- | --- |")
        shapes = [(side, side) for side in sizes]
        shapes.append((max(sizes), max(sizes) // 4))  # the widest, a quarter as high
        for width, height in shapes:
            region = image[:height, :width]
            base = rss_bytes(proc.pid)
            reset_peak_rss(proc.pid)
            t0 = time.perf_counter()
            client.heatmap("models/small", region, stride=args.stride, tile_size=args.tile)
            seconds = time.perf_counter() - t0
            peak = rss_bytes(proc.pid, "VmHWM")
            row = {
                "width": width,
                "height": height,
                "megapixels": width * height / 1e6,
                "seconds": seconds,
                "mp_per_s": width * height / 1e6 / seconds,
                "peak_rss_mb": peak / MB,
                "growth_mb": (peak - base) / MB,
            }
            report["rows"].append(row)
            print(
                f"| {width:,} x {height:,} | {row['megapixels']:.0f} | {seconds:.1f} | "
                f"{row['mp_per_s']:.2f} | {row['peak_rss_mb']:.0f} MB | +{row['growth_mb']:.0f} MB |"
            )
        side = max(sizes)
        region = image[:side, :side]
        mp = side * side / 1e6
        print()
        base = rss_bytes(proc.pid)
        reset_peak_rss(proc.pid)
        t0 = time.perf_counter()
        fc, _ = client.annotate(
            "models/small", region, stride=args.stride, tile_size=args.tile, min_area=1000
        )
        seconds = time.perf_counter() - t0
        growth = (rss_bytes(proc.pid, "VmHWM") - base) / MB
        report["annotate"] = {
            "seconds": seconds,
            "growth_mb": growth,
            "objects": len(fc["features"]),
        }
        print(
            f"Annotate streamed, {side:,}^2: {seconds:.1f} s ({mp / seconds:.2f} MP/s), "
            f"{len(fc['features'])} outlines, server peak RSS +{growth:.0f} MB"
        )
        if not args.no_slide:
            t0 = time.perf_counter()
            write_pyramidal_tiff(slides / "region.tif", region, mpp=0.5)
            written = time.perf_counter() - t0
            roi = {
                "type": "Polygon",
                "coordinates": [[[0, 0], [side, 0], [side, side], [0, side], [0, 0]]],
            }
            base = rss_bytes(proc.pid)
            reset_peak_rss(proc.pid)
            t0 = time.perf_counter()
            fc2, result = client.annotate_slide(
                "models/small",
                "region.tif",
                stride=args.stride,
                tissue_only=False,
                min_area=1000,
                threshold=0.5,
                roi=roi,
            )
            seconds = time.perf_counter() - t0
            growth = (rss_bytes(proc.pid, "VmHWM") - base) / MB
            report["annotate_slide"] = {
                "seconds": seconds,
                "growth_mb": growth,
                "objects": len(fc2["features"]),
                "tiff_seconds": written,
                "timings": dict(result.summary.timings),
            }
            print(
                f"AnnotateSlide (server reads the TIFF, roi = the region), {side:,}^2: "
                f"{seconds:.1f} s ({mp / seconds:.2f} MP/s), {len(fc2['features'])} outlines, "
                f"server peak RSS +{growth:.0f} MB (TIFF written in {written:.0f} s)"
            )
        if not args.no_reference:
            streamed = next(r for r in report["rows"] if r["height"] == side)["seconds"]
            tile = chunk_side(model, args.stride)
            for label, kwargs in (
                ("default tile", {}),
                (f"the server's {tile}-sample chunks", {"tile": tile}),
            ):
                t0 = time.perf_counter()
                logit_heatmap(model, region, stride=args.stride, **kwargs)
                seconds = time.perf_counter() - t0
                report.setdefault("in_process", []).append(
                    {"chunks": label, "seconds": seconds, "ratio_streamed": streamed / seconds}
                )
                print(
                    f"in-process logit_heatmap ({label}), same {side:,}^2 pixels: {seconds:.1f} s "
                    f"({mp / seconds:.2f} MP/s); streamed Heatmap / in-process = "
                    f"{streamed / seconds:.2f}"
                )
        client.close()
    finally:
        stop_process(proc)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
