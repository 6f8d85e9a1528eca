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

``--compute none`` measures reading alone: the tissue tiles of the ``--size`` slide read
exactly as the heatmap's readers read them (:class:`milsil.wsi.heatmap.TileReader`: region
read, RGB conversion, normalisation, mirrored halo) through the same prefetching pool
(:func:`milsil.wsi.pipeline.read_ahead`), with each count of ``--readers`` (default
1,2,4), reported as tissue MP/s. ``--backend openslide,cucim`` also times cuCIM's
``CuImage`` on the same file (level 0 only; cuCIM must be importable).
"""

from __future__ import annotations

import argparse
import json
import os
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
        "wait_for_tiles_s": t["wait"],
        "write_s": t["write"],
        "total_s": total,
        "mp_per_s": mp / total,
        "compute_mp_per_s": mp / t["compute"] if t["compute"] else float("nan"),
    }


class CuCIMSlide:
    """Level-0 reads of a TIFF through cuCIM, with :class:`~milsil.wsi.reader.Slide`'s
    ``read``/``region_size`` (the benchmark's comparison only: not a milsil reader)."""

    def __init__(self, path: Path) -> None:
        from cucim import CuImage

        self._image = CuImage(str(path))
        self.dimensions = tuple(self._image.resolutions["level_dimensions"][0])

    def region_size(self, downsample: float = 1.0) -> tuple[int, int]:
        return self.dimensions

    def read(self, x: int, y: int, width: int, height: int, downsample: float = 1.0):
        import numpy as np

        region = self._image.read_region(location=(x, y), size=(width, height), level=0)
        return np.ascontiguousarray(np.asarray(region)[..., :3])

    def close(self) -> None:
        self._image.close()


def bench_read(
    path: Path, tile: int, readers: list[int], backends: list[str], halo: int, repeat: int
) -> list:
    """Tissue MP/s of reading alone, per backend and reader count (one warm-up pass first,
    then the best of ``repeat`` passes)."""
    from milsil.wsi.heatmap import TileReader
    from milsil.wsi.pipeline import read_ahead
    from milsil.wsi.reader import open_slide
    from milsil.wsi.tissue import tile_grid, tissue_mask

    with open_slide(path) as s:
        tiles = tile_grid(s, tile, 1.0, tissue_mask(s))
    megapixels = sum(t.width * t.height * t.tissue for t in tiles) / 1e6
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    rows = []
    reference = None
    for backend in backends:
        slide = open_slide(path) if backend == "openslide" else CuCIMSlide(path)
        try:
            read = TileReader(slide, halo, 1.0, mean, std)
            # A reader only counts if it reads the same pixels (first tissue tile, halo too).
            first = read(tiles[0])[0]
            reference = first if reference is None else reference
            same = bool((first == reference).all()) if first.shape == reference.shape else False
            for _ in read_ahead(tiles, read, 1):  # warm the page cache and the decoder
                pass
            for n in readers:
                seconds = float("inf")
                for _ in range(repeat):  # the best of `repeat`: the machine is shared
                    t0 = time.perf_counter()
                    for _ in read_ahead(tiles, read, n):
                        pass
                    seconds = min(seconds, time.perf_counter() - t0)
                rows.append(
                    {
                        "backend": backend,
                        "readers": n,
                        "tiles": len(tiles),
                        "tissue_megapixels": megapixels,
                        "seconds": seconds,
                        "mp_per_s": megapixels / seconds,
                        "same_pixels_as_first_backend": same,
                    }
                )
                print(
                    f"{backend:9s} readers {n}: {len(tiles)} tiles, {megapixels:.1f} tissue MP "
                    f"in {seconds:.2f}s -> {megapixels / seconds:.1f} MP/s"
                    f"{'' if same else ' (PIXELS DIFFER from ' + backends[0] + ')'}",
                    flush=True,
                )
        finally:
            slide.close()
    return rows


def _report(path: str | None, info: dict, rows: list) -> None:
    """Write ``info`` with the machine's description and the ``rows`` to ``path`` (if any)."""
    if path:
        machine = {
            "torch": torch.__version__,
            "cpus": os.cpu_count(),
            "machine": platform.platform(),
            "processor": platform.processor(),
        }
        Path(path).write_text(json.dumps({**info, **machine, "results": rows}, indent=1))


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
    parser.add_argument(
        "--compute",
        choices=("model", "none"),
        default="model",
        help="none: time reading alone (tissue MP/s per reader count)",
    )
    parser.add_argument(
        "--readers", default="1,2,4", help="reader counts for --compute none (default 1,2,4)"
    )
    parser.add_argument(
        "--backend", default="openslide", help="--compute none: openslide and/or cucim"
    )
    parser.add_argument("--repeat", type=int, default=3, help="--compute none: best of N")
    parser.add_argument(
        "--compression", default="zlib", help="--compute none: the slide's tiles (zlib, none)"
    )
    args = parser.parse_args()
    if args.compute == "none":
        w, h = parse_size(args.size)
        with tempfile.TemporaryDirectory() as tmp:
            compression = None if args.compression == "none" else args.compression
            path, _ = synthetic_slide(
                Path(tmp) / f"slide_{w}x{h}.tif", w, h, seed=0, compression=compression
            )
            # BagNet-9's context (its receptive field's half), the halo the heatmap reads.
            model = create_model("bagnet9", 2, width=8)
            from milsil.inference.tiling import context_pixels

            rows = bench_read(
                path,
                args.tile,
                [int(n) for n in args.readers.split(",")],
                args.backend.split(","),
                context_pixels(model),
                args.repeat,
            )
        info = {"compute": "none", "slide": f"{w}x{h}", "tile": args.tile}
        _report(args.json, {**info, "compression": args.compression}, rows)
        return
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
                f"read {row['read_s']:.2f}s (compute waited {row['wait_for_tiles_s']:.2f}s), compute {row['compute_s']:.2f}s, polygons {row['polygons_s']:.2f}s "
                f"({row['objects']} objects), tiff {row['tiff_s']:.2f}s, tissue detection {row['tissue_detection_s']:.2f}s",
                flush=True,
            )
    info = {"width": args.width, "bf16": args.bf16, "device": args.device}
    _report(args.json, {**info, "threads": torch.get_num_threads()}, rows)


if __name__ == "__main__":
    main()
