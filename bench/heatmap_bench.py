"""Logit-heatmap benchmark (not a test): full-width BagNet-9, dense vs naive, fp32 vs bf16.

Everything is reported as a ratio against a baseline run in the same process on the same
device, so the figures survive a busy or different machine:

* FLOPs per pixel, counted by PyTorch's FlopCounterMode on the real dense network.
* Per-pixel (stride 1) and stride-8 heatmap throughput, in image pixels per second.
* Achieved FLOP/s divided by a same-run large matmul's FLOP/s (goal: >= 0.8 in fp32).
* Speedup over the naive reference (crop every window, batches of 1000, default layout)
  at equal output (goal: >= 3x), with the max difference between the two.
* The same under bfloat16 where the CPU (AVX-512 BF16 / AMX) or the GPU supports it, with
  the max logit deviation from fp32.

Timings are the best of ``--repeats`` runs, interleaved with the matmul baseline so that a
noisy neighbour slows both alike. Usage: ``python bench/heatmap_bench.py [--size 192]``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

import milsil.inference.heatmap as heatmap_module
from milsil.inference.heatmap import DenseLogitNet, logit_heatmap
from milsil.inference.reference import naive_logit_heatmap
from milsil.models import create_model


def best_time(fn, repeats: int, sync) -> float:
    best = float("inf")
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - start)
    return best


def matmul_flops(dtype: torch.dtype, device: torch.device, n: int, repeats: int, sync) -> float:
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    torch.mm(a, b)
    return 2 * n**3 / best_time(lambda: torch.mm(a, b), repeats, sync)


def dense_flops_per_pixel(model, stride: int, size: int) -> float:
    base = 8 if stride % 8 == 0 else stride
    net = DenseLogitNet(model, base)
    rf = model.receptive_field
    side = (size - 1) // stride * stride + rf  # the padded input one tile of this region needs
    # FlopCounterMode sees aten convolutions only, so count on the unfused path.
    fused, heatmap_module._POINTWISE = heatmap_module._POINTWISE, None
    try:
        with FlopCounterMode(display=False) as counter:
            net(torch.zeros(1, 3, side, side, device=next(model.parameters()).device))
    finally:
        heatmap_module._POINTWISE = fused
    return counter.get_total_flops() / (size * size)


def bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return "avx512_bf16" in flags or "amx_bf16" in flags


def cpu_name() -> str:
    for line in (
        Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    ):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=192, help="side of the square region (pixels)")
    parser.add_argument(
        "--naive-size", type=int, default=64, help="region side for the naive comparison"
    )
    parser.add_argument("--width", type=int, default=64, help="BagNet width (64 = full size)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    device = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else ("cpu" if args.device == "auto" else args.device)
    )
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    torch.manual_seed(0)
    model = create_model("bagnet9", 2, width=args.width).to(device).eval()
    image = torch.randn(3, args.size, args.size)
    matmul_n = 4096 if device.type == "cpu" else 8192
    res: dict[str, object] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "width": args.width,
        "region": args.size,
    }
    print(f"device: {res['device']} ({res['threads']} threads), torch {torch.__version__}")

    for dtype_name, bf16 in (("fp32", False), ("bf16", True)):
        if bf16 and not bf16_supported(device):
            print("bf16: not supported on this device, skipped")
            continue
        dtype = torch.bfloat16 if bf16 else torch.float32
        for stride in (1, 8):
            flops_px = dense_flops_per_pixel(model, stride, args.size)
            logit_heatmap(model, image, stride=stride, bf16=bf16)  # warm-up: same shapes
            t_heat = t_mm = float("inf")
            for _ in range(args.repeats):  # interleave with the baseline
                t_heat = min(
                    t_heat,
                    best_time(
                        lambda s=stride, b=bf16: logit_heatmap(model, image, stride=s, bf16=b),
                        1,
                        sync,
                    ),
                )
                t_mm = min(t_mm, 2 * matmul_n**3 / matmul_flops(dtype, device, matmul_n, 1, sync))
            px_s = args.size**2 / t_heat
            achieved = flops_px * args.size**2 / t_heat
            mm_flops = 2 * matmul_n**3 / t_mm
            key = f"{dtype_name}_stride{stride}"
            res[key] = {
                "pixels_per_s": px_s,
                "flops_per_pixel": flops_px,
                "achieved_gflops": achieved / 1e9,
                "matmul_gflops": mm_flops / 1e9,
                "ratio_to_matmul": achieved / mm_flops,
            }
            print(
                f"{dtype_name} stride {stride}: {px_s:,.0f} px/s, {flops_px / 1e6:.2f} MFLOP/px, "
                f"{achieved / 1e9:.0f} GFLOP/s = {achieved / mm_flops:.2f} x same-run {matmul_n}^2 matmul "
                f"({mm_flops / 1e9:.0f} GFLOP/s)"
            )
        if bf16:
            ref = logit_heatmap(model, image, stride=1)
            dev = (logit_heatmap(model, image, stride=1, bf16=True) - ref).abs().max().item()
            res["bf16_max_logit_deviation"] = dev
            res["bf16_logit_range"] = ref.abs().max().item()
            res["bf16_speedup_stride1"] = (
                res["bf16_stride1"]["pixels_per_s"] / res["fp32_stride1"]["pixels_per_s"]
            )
            print(
                f"bf16: {res['bf16_speedup_stride1']:.2f}x fp32 per-pixel; max |logit - fp32| = {dev:.4f} (|logit| up to {ref.abs().max().item():.3f})"
            )

    # Naive reference at equal output: every window cropped and run as an image.
    small = torch.randn(3, args.naive_size, args.naive_size)
    logit_heatmap(model, small)
    t_dense = best_time(lambda: logit_heatmap(model, small), args.repeats, sync)
    naive_logit_heatmap(model, small[:, :12, :12])
    t_naive = best_time(lambda: naive_logit_heatmap(model, small), 1, sync)
    diff = (logit_heatmap(model, small) - naive_logit_heatmap(model, small)).abs().max().item()
    res["naive"] = {
        "region": args.naive_size,
        "naive_pixels_per_s": args.naive_size**2 / t_naive,
        "dense_pixels_per_s": args.naive_size**2 / t_dense,
        "speedup": t_naive / t_dense,
        "max_abs_difference": diff,
    }
    print(
        f"naive reference ({args.naive_size}x{args.naive_size}, batches of 1000): "
        f"{args.naive_size**2 / t_naive:,.0f} px/s; dense {args.naive_size**2 / t_dense:,.0f} px/s "
        f"= {t_naive / t_dense:.1f}x faster, max |difference| {diff:.2e}"
    )
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
