"""The GPU suite does not rot: ``bench/gpu_suite.py --smoke`` runs every section's code path
on the CPU (tiny sizes, a real server process on loopback, a real TIFF, real training) and
writes a JSON with every section and finite figures."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SUITE = ROOT / "bench" / "gpu_suite.py"


def numbers(obj, where=""):
    """Every number in ``obj`` with its path (bools are flags, not figures)."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            yield from numbers(value, f"{where}.{key}")
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            yield from numbers(value, f"{where}[{i}]")
    elif isinstance(obj, int | float) and not isinstance(obj, bool):
        yield where, obj


def test_smoke_writes_every_section_with_finite_figures(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(SUITE), "--smoke", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_suite.json").read_text())
    env = report["environment"]
    assert env["device_type"] == "cpu" and env["torch"] and env["precision_default"] == "exact"
    sections = report["sections"]
    assert set(sections) == {"exactness", "heatmap", "slide", "grpc", "cells", "training"}
    assert set(report["matmul_tflops"]) == {"bf16", "fp32", "tf32"}
    bad = [path for path, value in numbers(report) if not math.isfinite(value)]
    assert not bad, bad

    exact = sections["exactness"]
    for mode in ("exact", "tf32", "bf16"):
        assert {"max_diff_vs_cpu", "max_diff_vs_naive"} <= set(exact[mode])
    # On the CPU the default and TF32 are the CPU's float32 result (CPUs have no TF32).
    assert exact["exact"]["max_diff_vs_cpu"] <= 1e-4 and exact["tf32"]["max_diff_vs_cpu"] <= 1e-4
    heat = sections["heatmap"]
    assert set(heat["stride1"]) == set(heat["stride8"]) == {"exact", "tf32", "bf16"}
    assert all(r["mp_per_s"] > 0 and r["ratio_to_matmul"] > 0 for r in heat["stride8"].values())
    for stride in ("stride8", "stride1"):
        row = sections["slide"][stride]
        assert row["tissue_megapixels"] > 0 and row["compute_s"] > 0 and "read_s" in row
    grpc = sections["grpc"]
    assert [r["stride"] for r in grpc["heatmap"]] == [1, 8]
    assert grpc["annotate_slide"]["ratio"] > 0 and grpc["slide_heatmap"]["ratio"] > 0
    assert sections["cells"]["cells"] == report["sizes"]["cells"]
    runs = sections["training"]["runs"]
    assert {(r["width"], r["amp"]) for r in runs} == {
        (w, amp) for w in report["sizes"]["train_widths"] for amp in (True, False)
    }
    for run in runs:
        split = run["epochs"][-1]["seconds"]
        assert {"data", "step", "validation", "checkpoint"} <= set(split)
        assert run["bags_per_second"] > 0
    assert all(s["wall_s"] > 0 for s in sections.values())
    assert "| exactness |" in done.stdout and "| training |" in done.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU machine runs the full suite")
def test_full_run_without_cuda_refuses_in_one_line(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(SUITE), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "no CUDA device" in lines[0] and "--smoke" in lines[0]
    assert not (tmp_path / "gpu_suite.json").exists()
