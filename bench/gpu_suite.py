#!/usr/bin/env python
"""GPU suite: every figure of issue 16's table, in one run on whatever CUDA device it finds.

One command (``python bench/gpu_suite.py --out bench_out/gpu``, at most 5 minutes on one
H200) prints a table and writes ``OUT/gpu_suite.json``: the device, torch and CUDA
versions, each section's figures and wall time, and every throughput also as a ratio to
a same-run square matmul of the same arithmetic (bf16 vs bf16; fp32 with TF32 off vs
fp32 with TF32 off; TF32 vs TF32), so the figures say how busy the device was kept.

Sections (BagNet-9, width 64, untrained: weights do not change the cost):

* ``exactness``: stride-1 logits on the device in each mode (``exact``, the default;
  ``precision="tf32"``; ``bf16=True``) against the CPU's float32 result and against the
  naive reference (``naive_logit_heatmap``, every window cropped, on the device, exact);
* ``heatmap``: in-process ``logit_heatmap`` per pixel (stride 1) and at stride 8: MP/s,
  TFLOP/s (PyTorch's FLOP counter on the dense network) and the ratio to the matmul;
* ``slide``: ``annotate_slide`` on synthetic pyramidal TIFFs (``synthetic_slide``'s
  2048 x 1536 tissue ellipse on glass, and at stride 8 a 4 x 4 mosaic of it, 8192 x 6144),
  at stride 8 and 1, end to end and split by stage (tissue / read / compute / polygons /
  TIFF), and end to end over compute-only throughput;
* ``grpc``: ``milsil serve`` on the same device in its own process on loopback: streamed
  ``Heatmap`` / in-process, ``AnnotateSlide`` and ``SlideHeatmap`` (the server reads the
  slide) / in process;
* ``cells``: ``MeasureObjects`` of random nuclei (server and in process) / the same-run
  stride-1 heatmap of the same pixels;
* ``training``: ``train_model`` on a synthetic bag dataset at width 16 and 64, with and
  without AMP: bags/s and each epoch's time split (data / step / validation / checkpoint).

``--smoke`` runs the same code paths on the CPU with tiny sizes in seconds (the test suite
runs it, so the suite does not rot). Without CUDA the full run refuses unless
``--device cpu`` is given. ``--sections`` runs a subset.
"""

from __future__ import annotations

import argparse
import copy
import math
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
for extra in (ROOT, ROOT / "tests", ROOT / "bench"):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))

from cells_bench import throughput as cells_throughput  # noqa: E402
from grpc_bench import overhead_row  # noqa: E402
from heatmap_bench import best_time, cpu_name, dense_flops_per_pixel, matmul_flops  # noqa: E402
from region_bench import slide_like  # noqa: E402
from server_support import serve_process, stop_process  # noqa: E402
from slide_bench import bench_one  # noqa: E402

from milsil.atomic import write_json_atomic  # noqa: E402
from milsil.inference.heatmap import logit_heatmap  # noqa: E402
from milsil.inference.precision import fp32_precision  # noqa: E402
from milsil.inference.reference import naive_logit_heatmap  # noqa: E402
from milsil.models import create_model, save_checkpoint  # noqa: E402
from milsil.wsi.settings import DEFAULT_TILE  # noqa: E402

SECTIONS = ("exactness", "heatmap", "slide", "grpc", "cells", "training")

#: The float arithmetic of each mode, and the matmul it is measured against.
MODES = {
    "exact": {"bf16": False, "precision": "exact", "matmul": "fp32"},
    "tf32": {"bf16": False, "precision": "tf32", "matmul": "tf32"},
    "bf16": {"bf16": True, "precision": "exact", "matmul": "bf16"},
}

#: Sizes of the GPU run (one H200: about 4 minutes in all) and of the CPU smoke run.
SIZES: dict[str, dict[str, Any]] = {
    "full": {
        "width": 64, "matmul_n": 8192, "exact_side": 256, "warm_up": 1024,
        "stride1": {"bf16": 4096, "exact": 2048, "tf32": 2048}, "stride8": 16384,
        "slide_base": (2048, 1536), "slide8_mosaic": 4, "slide1_mosaic": 1,
        "grpc1": 2048, "grpc8": 8192, "repeat": 1, "cells": 100_000,
        "train_bags": (13, 8), "train_size": 224, "train_patch": 64, "train_widths": (16, 64),
        "epochs": 2,
    },
    "smoke": {
        "width": 4, "matmul_n": 128, "exact_side": 16, "warm_up": 0,
        "stride1": {"bf16": 24, "exact": 24, "tf32": 24}, "stride8": 64,
        "slide_base": (192, 128), "slide8_mosaic": 2, "slide1_mosaic": 1,
        "grpc1": 32, "grpc8": 64, "repeat": 1, "cells": 20,
        "train_bags": (2, 2), "train_size": 64, "train_patch": 32, "train_widths": (4,),
        "epochs": 1,
    },
}  # fmt: skip

CLASSES = ["benign", "malignant"]
#: The largest |logit| the suite's model gives (its head is scaled to it): as a trained one.
LOGIT_RANGE = 2.0


class Suite:
    """One run's device, sizes, model and same-run matmul baselines; each section a method
    that returns its figures (a JSON-able dict) and appends its table rows."""

    def __init__(self, device: torch.device, sizes: dict[str, Any], work: Path) -> None:
        self.device, self.sizes, self.work = device, sizes, work
        self.cuda = device.type == "cuda"
        self.rows: list[tuple[str, str, str, float | None]] = []
        torch.manual_seed(0)
        self.model = create_model("bagnet9", 2, width=sizes["width"], class_names=CLASSES).eval()
        # Logits of a trained model's size (the reached 1.8): an untrained head's
        # are tiny, and a deviation of 1e-4 means nothing against logits of 0.01.
        probe = logit_heatmap(copy.deepcopy(self.model), slide_like(32, seed=2))
        with torch.no_grad():
            for p in self.model.fc.parameters():
                p.mul_(LOGIT_RANGE / float(probe.abs().max()))
        self.cpu_model = copy.deepcopy(self.model)
        self.model.to(device)
        self.slides = work / "slides"
        self.slides.mkdir(parents=True, exist_ok=True)
        self.matmul = self._matmuls()
        self._server: tuple[Any, str] | None = None
        # FLOPs per image pixel of the dense network (PyTorch's counter) on a 512² region:
        # context and tile overlap make a larger region's slightly lower.
        self.flops_per_pixel = {
            s: dense_flops_per_pixel(self.model, s, min(512, sizes["stride8"])) for s in (1, 8)
        }

    def server(self) -> tuple[Any, str]:
        """``milsil serve`` on this device in a process of its own (loopback), started once
        and shared by the gRPC and cells sections; :meth:`close` stops it."""
        if self._server is None:
            self._server = serve_process(
                self.work / "server", "--device", str(self.device),
                "--slide-root", str(self.slides), "--max-message-mb", "128",
            )  # fmt: skip
        return self._server

    def close(self) -> None:
        if self._server is not None:
            stop_process(self._server[0])
            self._server = None

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def _matmuls(self) -> dict[str, float]:
        """FLOP/s of an n x n matmul in each arithmetic, best of 3 (the baselines)."""
        n, out = self.sizes["matmul_n"], {}
        for name, dtype, precision in (
            ("bf16", torch.bfloat16, "exact"),
            ("fp32", torch.float32, "exact"),
            ("tf32", torch.float32, "tf32"),
        ):
            with fp32_precision(precision):
                out[name] = matmul_flops(dtype, self.device, n, 3, self.sync)
        return out

    def ratio(self, flops_per_s: float, matmul: str) -> float:
        return flops_per_s / self.matmul[matmul]

    def pixel_ratio(self, mp_per_s: float, stride: int, matmul: str = "fp32") -> float:
        """Heatmap MP/s as achieved FLOP/s over the same-run matmul's (image pixels / s
        times the dense network's FLOPs per image pixel at that stride)."""
        return self.ratio(mp_per_s * 1e6 * self.flops_per_pixel[stride], matmul)

    def row(self, section: str, what: str, value: str, figures: dict | None = None) -> None:
        """A table row; its last column is ``figures["ratio_to_matmul"]`` when given."""
        ratio = None if figures is None else figures["ratio_to_matmul"]
        self.rows.append((section, what, value, ratio))

    # ------------------------------------------------------------------ sections

    def exactness(self) -> dict[str, Any]:
        side = self.sizes["exact_side"]
        image = slide_like(side, seed=2)
        cpu = logit_heatmap(self.cpu_model, image, stride=1)
        with fp32_precision("exact"):  # the literal definition, exact on the device too
            naive = naive_logit_heatmap(self.model, image)
        out: dict[str, Any] = {
            "region": side,
            "logit_range": float(cpu.abs().max()),
            "naive_vs_cpu": float((naive - cpu).abs().max()),
        }
        for mode, m in MODES.items():
            heat = logit_heatmap(self.model, image, bf16=m["bf16"], precision=m["precision"])
            vs_cpu = float((heat - cpu).abs().max())
            vs_naive = float((heat - naive).abs().max())
            out[mode] = {
                "precision": m["precision"],
                "bf16": m["bf16"],
                "max_diff_vs_cpu": vs_cpu,
                "max_diff_vs_naive": vs_naive,
                "within_1e-4": vs_cpu <= 1e-4,
            }
            self.row(
                "exactness", f"{mode}: max |logit - CPU fp32|, |logit - naive|",
                f"{vs_cpu:.1e}, {vs_naive:.1e} (|logit| <= {out['logit_range']:.2f})",
            )  # fmt: skip
        return out

    def _timed_heatmap(self, image: np.ndarray, stride: int, mode: str) -> dict[str, Any]:
        m = MODES[mode]

        def run(region: np.ndarray) -> None:
            logit_heatmap(
                self.model, region, stride=stride, bf16=m["bf16"], precision=m["precision"]
            )

        warm = min(self.sizes["warm_up"], len(image))
        if warm:  # cuDNN picks its algorithms for the shapes of the first pass
            run(image[:warm, :warm])
        seconds = best_time(lambda: run(image), 1, self.sync)
        mp_s = image.shape[0] * image.shape[1] / 1e6 / seconds
        flops = mp_s * 1e6 * self.flops_per_pixel[stride]
        out = {
            "region": image.shape[0], "stride": stride, "mode": mode,
            "precision": m["precision"], "bf16": m["bf16"], "seconds": seconds,
            "mp_per_s": mp_s, "tflops": flops / 1e12,
            "ratio_to_matmul": self.ratio(flops, m["matmul"]),
        }  # fmt: skip
        self.row(
            "heatmap",
            f"stride {stride} {mode}, {image.shape[0]}² in process",
            f"{mp_s:.2f} MP/s, {flops / 1e12:.2f} TFLOP/s",
            out,
        )
        return out

    def heatmap(self) -> dict[str, Any]:
        big = self.sizes["stride8"]
        tile = slide_like(min(1024, big), seed=3)
        reps = -(-big // len(tile))
        image = np.tile(tile, (reps, reps, 1))[:big, :big]
        out: dict[str, Any] = {
            "flops_per_pixel": self.flops_per_pixel,
            "stride1": {},
            "stride8": {},
        }
        for mode, side in self.sizes["stride1"].items():
            out["stride1"][mode] = self._timed_heatmap(image[:side, :side], 1, mode)
        for mode in MODES:
            out["stride8"][mode] = self._timed_heatmap(image, 8, mode)
        return out

    def _slide(self, stride: int) -> Path:
        """The slide of a stride: :func:`~milsil.wsi.synthetic.synthetic_slide` (tissue
        ellipse on glass), or a mosaic of k x k copies of it (writing the synthetic H&E
        costs seconds per megapixel on one core; the copies cost only the TIFF)."""
        import tifffile

        from milsil.wsi.synthetic import synthetic_slide
        from milsil.wsi.tiff import write_pyramidal_tiff

        base = self.slides / "base.tif"
        if not base.exists():
            synthetic_slide(base, *self.sizes["slide_base"], seed=0)
        k = self.sizes[f"slide{stride}_mosaic"]
        path = self.slides / f"mosaic{k}.tif" if k > 1 else base
        if not path.exists():
            with tifffile.TiffFile(base) as tif:
                pixels = tif.pages[0].asarray()
            write_pyramidal_tiff(path, np.tile(pixels, (k, k, 1)), mpp=0.5)
        return path

    def slide(self) -> dict[str, Any]:
        out = {}
        for stride in (8, 1):
            t0 = time.perf_counter()
            path = self._slide(stride)
            written = time.perf_counter() - t0
            r = bench_one(self.model, path, stride, DEFAULT_TILE, False, str(self.device))
            k = self.sizes[f"slide{stride}_mosaic"]
            r.update(
                slide="x".join(str(k * n) for n in self.sizes["slide_base"]),
                slide_write_s=written,
                end_to_end_over_compute=r["mp_per_s"] / r["compute_mp_per_s"],
                ratio_to_matmul=self.pixel_ratio(r["mp_per_s"], stride),
                compute_ratio_to_matmul=self.pixel_ratio(r["compute_mp_per_s"], stride),
            )
            out[f"stride{stride}"] = r
            self.row(
                "slide",
                f"annotate_slide stride {stride}, {r['slide']} ({r['tissue_megapixels']:.1f} tissue MP)",
                f"{r['mp_per_s']:.2f} MP/s end to end = {r['end_to_end_over_compute']:.2f} x compute "
                f"({r['compute_mp_per_s']:.2f} MP/s); read {r['read_s']:.2f} s, compute "
                f"{r['compute_s']:.2f} s, polygons {r['polygons_s']:.2f} s, TIFF {r['tiff_s']:.2f} s",
                r,
            )
        return out

    def grpc(self) -> dict[str, Any]:
        from milsil.client import MilsilClient

        save_checkpoint(self.cpu_model, self.work / "model.pt")
        slide8 = self._slide(8)
        _, address = self.server()
        out: dict[str, Any] = {"heatmap": []}
        with MilsilClient(address, timeout=3600, max_message_mb=128) as client:
            name = client.import_model(self.work / "model.pt", model_id="suite").name
            for stride, side in ((1, self.sizes["grpc1"]), (8, self.sizes["grpc8"])):
                region = slide_like(side, seed=4)
                client.heatmap(name, region[:256, :256], stride=stride)  # load + warm the server
                logit_heatmap(self.model, region[:256, :256], stride=stride)
                r = overhead_row(client, name, self.model, region, stride, self.sizes["repeat"])
                mp = side * side / 1e6
                r.update(
                    grpc_mp_per_s=mp / r["grpc_s"],
                    in_process_mp_per_s=mp / r["in_process_s"],
                    ratio_to_matmul=self.pixel_ratio(mp / r["grpc_s"], stride),
                )
                out["heatmap"].append(r)
                self.row(
                    "grpc",
                    f"Heatmap streamed / in process, stride {stride}, {side}²",
                    f"{r['ratio']:.2f} ({r['grpc_mp_per_s']:.2f} vs {r['in_process_mp_per_s']:.2f} MP/s)",
                    r,
                )
            local = bench_one(
                self.model, slide8, 8, DEFAULT_TILE, False, str(self.device), tiff=False
            )
            t0 = time.perf_counter()
            _, result = client.annotate_slide(name, slide8.name, stride=8)
            annotate_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            _, summary = client.slide_heatmap(name, slide8.name, stride=8)
            heat_s = time.perf_counter() - t0
            local_heat_s = local["tissue_detection_s"] + local["read_s"] + local["compute_s"]
            mp = local["tissue_megapixels"]
            out["annotate_slide"] = {
                "seconds": annotate_s, "in_process_s": local["total_s"],
                "ratio": annotate_s / local["total_s"], "mp_per_s": mp / annotate_s,
                "server_timings": dict(result.summary.timings),
                "ratio_to_matmul": self.pixel_ratio(mp / annotate_s, 8),
            }  # fmt: skip
            out["slide_heatmap"] = {
                "seconds": heat_s, "in_process_s": local_heat_s, "ratio": heat_s / local_heat_s,
                "mp_per_s": mp / heat_s, "ratio_to_matmul": self.pixel_ratio(mp / heat_s, 8),
                "server_timings": dict(summary.timings),
            }  # fmt: skip
            for rpc, what in (
                ("annotate_slide", "AnnotateSlide"),
                ("slide_heatmap", "SlideHeatmap"),
            ):
                r = out[rpc]
                value = f"{r['ratio']:.2f} ({r['mp_per_s']:.2f} MP/s, {r['seconds']:.2f} s)"
                self.row(
                    "grpc", f"{what} (server reads the slide) / in process, stride 8", value, r
                )
        return out

    def cells(self) -> dict[str, Any]:
        def log(line: str) -> None:
            print(f"  cells: {line}", flush=True)

        count, width = self.sizes["cells"], self.sizes["width"]
        r = cells_throughput([count], width, log, str(self.device), server=self.server())[0]
        r["ratio_to_matmul"] = self.pixel_ratio(r["server_mp_per_s"], 1)
        self.row(
            "cells",
            f"MeasureObjects, {r['cells']:,} cells on {r['side']}²",
            f"{r['server_cells_per_s']:,.0f} cells/s, {r['server_ratio_to_heatmap']:.2f} x "
            f"Heatmap; in process {r['library_ratio_to_heatmap']:.2f} x logit_heatmap",
            r,
        )
        return r

    def _flops_per_bag(self, width: int) -> float:
        """Forward FLOPs of one training bag (PyTorch's counter); a step is about 3x."""
        from torch.utils.flop_counter import FlopCounterMode

        patches = (self.sizes["train_size"] // self.sizes["train_patch"]) ** 2
        side = self.sizes["train_patch"]
        model = create_model("bagnet9", 2, width=width, class_names=CLASSES).to(self.device)
        x = torch.zeros(1, patches, 3, side, side, device=self.device)
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(x)
        return float(counter.get_total_flops())

    def training(self) -> dict[str, Any]:
        from milsil.data import load_dataset
        from milsil.data.synth import synthesize_dataset
        from milsil.engine.config import TrainConfig
        from milsil.engine.loop import train_model

        patients, per_patient = self.sizes["train_bags"]
        manifest = synthesize_dataset(
            self.work / "bags", patients=patients, images_per_patient=per_patient,
            size=self.sizes["train_size"], seed=0,
        )  # fmt: skip
        records, classes = load_dataset(manifest)
        out: dict[str, Any] = {"bags": len(records), "image": self.sizes["train_size"], "runs": []}
        for width in self.sizes["train_widths"]:
            step_flops = 3 * self._flops_per_bag(width)
            for amp in (True, False):
                config = TrainConfig(
                    arch="bagnet9", width=width, epochs=self.sizes["epochs"], amp=amp,
                    patch_size=self.sizes["train_patch"], device=str(self.device), seed=0,
                )  # fmt: skip
                t0 = time.perf_counter()
                result = train_model(
                    config, records, [], classes, self.work / f"run-w{width}-amp{int(amp)}"
                )
                wall = time.perf_counter() - t0
                epochs = [row["timing"] for row in result.history]
                last = epochs[-1]  # the steady state: the first epoch also warms up
                # AMP trains in float16 (the same tensor-core rate as bf16); without it cuDNN
                # convolutions run in TF32, PyTorch's default for training.
                matmul = "bf16" if amp and self.cuda else ("tf32" if self.cuda else "fp32")
                r = {
                    "width": width, "amp": amp, "wall_s": wall, "epochs": epochs,
                    "bags_per_second": last["bags_per_second"],
                    "step_flops_per_bag": step_flops,
                    "ratio_to_matmul": self.ratio(last["bags_per_second"] * step_flops, matmul),
                }  # fmt: skip
                out["runs"].append(r)
                split = ", ".join(f"{k} {v:.2f} s" for k, v in last["seconds"].items())
                self.row(
                    "training",
                    f"width {width}, AMP {'on' if amp else 'off'}, {len(records)} bags",
                    f"{last['bags_per_second']:.1f} bags/s (last epoch: {split})",
                    r,
                )
        return out


def check_finite(obj: Any, where: str = "") -> list[str]:
    """Paths of every number in ``obj`` that is not finite (the smoke test's check too)."""
    if isinstance(obj, dict):
        return [p for k, v in obj.items() for p in check_finite(v, f"{where}.{k}")]
    if isinstance(obj, list | tuple):
        return [p for i, v in enumerate(obj) for p in check_finite(v, f"{where}[{i}]")]
    if isinstance(obj, float) and not math.isfinite(obj):
        return [where]
    return []


def choose_device(requested: str, smoke: bool) -> torch.device:
    """``auto``: CUDA when present; the full run refuses a machine without it unless
    ``--device cpu`` is asked for (its sizes take hours on a CPU); ``--smoke`` defaults to
    the CPU."""
    if requested == "auto":
        if smoke:
            return torch.device("cpu")
        if not torch.cuda.is_available():
            raise SystemExit(
                "gpu_suite: no CUDA device here; run it on a GPU, or use --smoke (tiny sizes) "
                "or --device cpu (full sizes on the CPU: hours)"
            )
        return torch.device("cuda")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"gpu_suite: --device {requested} asked for, but CUDA is not available")
    if device.type not in ("cuda", "cpu"):
        raise SystemExit(
            f"gpu_suite: --device must be auto, cpu, cuda or cuda:N; got {requested!r}"
        )
    return device


def environment(device: torch.device) -> dict[str, Any]:
    cuda = device.type == "cuda"
    return {
        "device": torch.cuda.get_device_name(device) if cuda else cpu_name(),
        "device_type": device.type,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "cpu": cpu_name(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        # slide, gRPC and cells run the default: exact float32 (TF32 off), no bf16
        "precision_default": "exact",
    }


def print_table(report: dict[str, Any], rows: list[tuple[str, str, str, float | None]]) -> None:
    env = report["environment"]
    print(f"\n# gpu_suite on {env['device']}: torch {env['torch']}, CUDA {env['cuda']}")
    mm = report["matmul_tflops"]
    print(
        f"# same-run {report['sizes']['matmul_n']}² matmul: bf16 {mm['bf16']:.2f}, "
        f"fp32 (TF32 off) {mm['fp32']:.2f}, TF32 {mm['tf32']:.2f} TFLOP/s\n"
    )
    print("| section | what | measured | x same-run matmul |")
    print("| --- | --- | --- | --- |")
    for section, what, value, ratio in rows:
        shown = "" if ratio is None else f"{ratio:.3f}"
        print(f"| {section} | {what} | {value} | {shown} |")
    walls = ", ".join(f"{k} {v['wall_s']:.1f} s" for k, v in report["sections"].items())
    print(f"\nwall time per section: {walls}; total {report['total_s']:.1f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Writes OUT/gpu_suite.json; see the README, 'GPU suite'.",
    )
    parser.add_argument("--out", type=Path, default=Path("bench_out/gpu"), help="output folder")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU, in seconds")
    parser.add_argument("--device", default="auto", help="auto (CUDA), cpu, cuda or cuda:N")
    parser.add_argument(
        "--sections",
        default=",".join(SECTIONS),
        help=f"comma-separated subset of {','.join(SECTIONS)}",
    )
    args = parser.parse_args(argv)
    sections = [s for s in args.sections.split(",") if s]
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; allowed: {', '.join(SECTIONS)}")
    device = choose_device(args.device, args.smoke)
    sizes = SIZES["smoke" if args.smoke else "full"]
    started = time.perf_counter()
    report: dict[str, Any] = {"environment": environment(device), "smoke": args.smoke}
    with tempfile.TemporaryDirectory(prefix="gpu-suite-") as tmp:
        suite = Suite(device, sizes, Path(tmp))
        report.update(
            sizes={k: list(v) if isinstance(v, tuple) else v for k, v in sizes.items()},
            matmul_tflops={k: v / 1e12 for k, v in suite.matmul.items()},
            sections={},
        )
        print(f"gpu_suite: {report['environment']['device']} ({device})", flush=True)
        try:
            for name in sections:
                t0 = time.perf_counter()
                figures: dict[str, Any] = getattr(suite, name)()
                figures["wall_s"] = time.perf_counter() - t0
                report["sections"][name] = figures
                print(
                    f"[{time.perf_counter() - started:6.1f}s] {name}: {figures['wall_s']:.1f} s",
                    flush=True,
                )
        finally:
            suite.close()
    report["total_s"] = time.perf_counter() - started
    report["rows"] = [
        {"section": s, "what": w, "measured": v, "ratio_to_matmul": r} for s, w, v, r in suite.rows
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out / "gpu_suite.json", report)
    print_table(report, suite.rows)
    bad = check_finite(report)
    if bad:
        print(f"gpu_suite: figures not finite: {', '.join(bad)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
