"""``milsil reproduce``: the paper's protocol end to end (:mod:`milsil.experiments.reproduce`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from milsil.experiments.reproduce import (
    METHODS,
    ReproduceSettings,
    format_localization,
    format_tables,
    run,
)


def _cmd(args: argparse.Namespace) -> int:
    print(f"milsil reproduce: {args.dataset} from {args.root} -> {args.out}", flush=True)
    results = run(ReproduceSettings.from_namespace(args), log=lambda s: print(s, flush=True))
    print()
    print(format_tables(results))
    print()
    print(format_localization(results))
    print(f"\nresults: {Path(args.out) / 'reproduce.json'} ({results['elapsed_seconds']:.0f}s)")
    return 0


def register_cli(subparsers: Any) -> None:
    """Add ``milsil reproduce``."""
    p = subparsers.add_parser(
        "reproduce",
        help="run the paper's protocol and print its Tables 1 and 2",
        description=(
            "Train and test BagNet, MILBagNet, the proposed MIL-SIL BagNet, RN-50, DN-161 and "
            "attention MIL (ADMW, ADMP) with the paper's protocol and recipe where they are "
            "specific, our readings named with the tables (CRC: 5-fold "
            "patient-level cross-validation; CAMELYON16: 111 tumour + 20 normal slides, "
            "500x500 patches, 100,000 by default (the paper: over 100,000), one 80/20 "
            "patient-level split; synthetic: k-fold; "
            "ImageNet initialisation for all but ADMIL, Adam lr 1e-4 with decay) and print "
            "Tables 1 and 2 (mean +- sample std) with the paper's numbers, every reading of what "
            "the paper leaves open in their header, plus heatmap localization. Runs resume from "
            "--out. A GPU is needed for real data at full width."
        ),
    )
    p.add_argument("--dataset", required=True, choices=("crc", "camelyon16", "synthetic"))
    p.add_argument("--root", required=True, help="dataset root (synthetic: written there if empty)")
    p.add_argument(
        "--out", default="reproduce_out", help="runs and reproduce.json (default reproduce_out)"
    )
    p.add_argument(
        "--methods",
        default=",".join(m.key for m in METHODS),
        help="comma-separated subset of " + ", ".join(m.key for m in METHODS),
    )
    p.add_argument(
        "--folds", type=int, default=5, help="cross-validation folds (CRC, synthetic; default 5)"
    )
    p.add_argument(
        "--pretrained",
        default=None,
        metavar="imagenet|DIR|none",
        help="ImageNet initialisation for all but ADMIL (default: imagenet, the paper's): the "
        "published weights downloaded once, a folder holding local copies under their "
        "published names, or none (from scratch: not the paper)",
    )
    p.add_argument(
        "--width", type=int, default=None, help="network width (default 64: the paper's)"
    )
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--lr", type=float, default=None, help="Adam learning rate (default: 1e-4)")
    p.add_argument(
        "--lr-decay", type=float, default=None, help="per-epoch decay factor (default 0.9)"
    )
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument(
        "--patch-size",
        type=int,
        default=None,
        help="instance patch size (default: CRC/CAM16 250, synthetic size/2)",
    )
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-localization", action="store_true")
    p.add_argument("--max-localization-images", type=int, default=None)
    p.add_argument("--patients", type=int, default=10, help="synthetic: patients")
    p.add_argument("--images", type=int, default=6, help="synthetic: images per patient")
    p.add_argument("--size", type=int, default=128, help="synthetic: image side")
    p.add_argument(
        "--patients-csv", default=None, help="CRC: image,patient table (default ROOT/patients.csv)"
    )
    p.add_argument(
        "--assume-slide-blocks",
        action="store_true",
        help="CRC without a patients table: take consecutive blocks of 10 images as one "
        "slide/patient each (an assumption: the paper says 10 slides from 9 patients, so two "
        "of these 10 pseudo-patients are one patient; without this flag reproduce refuses)",
    )
    p.add_argument(
        "--cam-patch", type=int, default=500, help="CAMELYON16: level-0 bag side (paper: 500)"
    )
    p.add_argument(
        "--cam-patches",
        type=int,
        default=100_000,
        help="CAMELYON16: patches (bags) in all, spread over the slides (paper: over 100,000)",
    )
    p.add_argument(
        "--patches-per-slide",
        type=int,
        default=None,
        help="CAMELYON16: patches per slide (default: --cam-patches / slides)",
    )
    p.add_argument(
        "--tumour-slides", type=int, default=111, help="CAMELYON16: tumour slides (paper: 111)"
    )
    p.add_argument(
        "--normal-slides",
        type=int,
        default=20,
        help="CAMELYON16: normal slides, the first N by name (paper: 20)",
    )
    p.set_defaults(func=_cmd)
