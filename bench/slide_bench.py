"""Whole-slide benchmark (not a test): tissue megapixels per second, split by stage.

Writes a synthetic pyramidal TIFF (:func:`milsil.wsi.synthetic.synthetic_slide`: H&E-like tissue
ellipse on glass), then runs :func:`milsil.wsi.annotate.annotate_slide` on it at each stride,
tissue tiles only, and reports for each:

* tissue megapixels (level-0 pixels of the tissue tiles computed),
* read time (OpenSlide reads, RGB conversion, normalisation, halo padding),
* compute time (the logit heatmap of every tile),
* polygon time (probability map -> QuPath GeoJSON) and TIFF time (pyramidal probability map),
* throughput: tissue MP/s end to end, and compute-only.

The model is an untrained BagNet-9 (weights do not change the cost). The full-width
(``--width 64``) network costs about 27 MFLOP per pixel at stride 1, so stride 1 on a
CPU is slow: use ``--stride1-size`` to run stride 1 on a smaller slide.

Usage: ``python bench/slide_bench.py [--size 2048x1536] [--width 64] [--threads N]``;
``--json OUT`` writes the figures.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from milsil.models import create_model
from milsil.wsi.annotate import annotate_slide
from milsil.wsi.settings import DEFAULT_TILE, SlideSettings
from milsil.wsi.synthetic import synthetic_slide


def parse_size(text: str) -> tuple[int, int]:
    w, h = text.lower().split("x")
    return int(w), int(h)


def bench_one(
    model, path: Path, stride: int, tile: int, bf16: bool, device: str, tiff: bool = True
) -> dict:
    """``annotate_slide`` on ``path`` at ``stride``: its stage timings and tissue MP/s
    (``tiff``: also write the probability TIFF, as the CLI does)."""
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        res = annotate_slide(
            path,
            model,
            Path(tmp) / "out.geojson",
            SlideSettings(stride=stride, tile=tile, bf16=bf16),
            tiff=Path(tmp) / "p.tif" if tiff else None,
            device=device,
        )
        total = time.perf_counter() - start
    t = res.timings
    mp = res.tissue_megapixels
    return {
        "stride": stride,
        "tissue_megapixels": mp,
        "tiles": res.tiles_computed,
        "objects": res.objects,
        "tissue_detection_s": t["tissue"],
        "read_s": t["read"],
        "compute_s": t["compute"],
        "polygons_s": t["polygons"],
        "tiff_s": t["tiff"],
        "total_s": total,
        "mp_per_s": mp / total,
        "compute_mp_per_s": mp / t["compute"] if t["compute"] else float("nan"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--size", default="2048x1536", help="slide WxH for stride 8 (default 2048x1536)"
    )
    parser.add_argument(
        "--stride1-size", default="768x512", help="slide WxH for stride 1 (default 768x512)"
    )
    parser.add_argument("--width", type=int, default=64, help="BagNet width (64 = published)")
    parser.add_argument("--tile", type=int, default=DEFAULT_TILE)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = create_model("bagnet9", 2, width=args.width, class_names=["benign", "malignant"]).eval()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for stride, size in ((8, args.size), (1, args.stride1_size)):
            w, h = parse_size(size)
            t0 = time.perf_counter()
            path, _ = synthetic_slide(Path(tmp) / f"slide_{w}x{h}.tif", w, h, seed=0)
            made = time.perf_counter() - t0
            row = bench_one(model, path, stride, args.tile, args.bf16, args.device)
            row["slide"] = f"{w}x{h}"
            row["slide_write_s"] = made
            rows.append(row)
            print(
                f"stride {stride} on {w}x{h}: {row['tissue_megapixels']:.2f} tissue MP in {row['total_s']:.1f}s "
                f"-> {row['mp_per_s']:.3f} MP/s (compute only {row['compute_mp_per_s']:.3f} MP/s); "
                f"read {row['read_s']:.2f}s, compute {row['compute_s']:.2f}s, polygons {row['polygons_s']:.2f}s "
                f"({row['objects']} objects), tiff {row['tiff_s']:.2f}s, tissue detection {row['tissue_detection_s']:.2f}s",
                flush=True,
            )
    info = {
        "width": args.width,
        "bf16": args.bf16,
        "device": args.device,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.platform(),
        "processor": platform.processor(),
        "results": rows,
    }
    if args.json:
        Path(args.json).write_text(json.dumps(info, indent=1))


if __name__ == "__main__":
    main()
