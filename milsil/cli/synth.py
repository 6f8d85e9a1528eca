"""``milsil synth``: write a synthetic H&E-like dataset (:mod:`milsil.data.synth`)."""

from __future__ import annotations

import argparse
import csv
import time

from milsil.data.scenarios import SCENARIOS
from milsil.data.synth import synthesize_dataset


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    """Add ``milsil synth``."""
    p = subparsers.add_parser(
        "synth",
        help="write a synthetic H&E-like dataset with malignant-nucleus masks",
        description=(
            "Write a synthetic H&E-like histology dataset with ground truth: OUT_DIR/images/*.png, "
            "OUT_DIR/masks/*.png (malignant nuclei) and OUT_DIR/manifest.csv "
            "(image,label,patient,mask), usable by 'milsil train OUT_DIR', plus per-nucleus "
            "instance masks (OUT_DIR/instances/, indexed by OUT_DIR/instances.csv) that "
            "'milsil evaluate' scores nucleus by nucleus. Every image holds benign nuclei; each "
            "patient has its own stain tint. Scenarios: "
            + "; ".join(f"{name}: {sc.description}" for name, sc in SCENARIOS.items())
            + " (the last three with strong stain and blur variation across patients)."
        ),
    )
    p.add_argument("out_dir", metavar="OUT_DIR", help="folder to write (created if missing)")
    p.add_argument("--patients", type=int, default=10, help="number of patients (default 10)")
    p.add_argument(
        "--images-per-patient", type=int, default=6, help="images per patient (default 6)"
    )
    p.add_argument("--size", type=int, default=128, help="image side in pixels (default 128)")
    p.add_argument(
        "--malignant-fraction",
        type=float,
        default=0.5,
        help="fraction of images that are malignant (default 0.5)",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument(
        "--scenario",
        choices=list(SCENARIOS),
        default="default",
        help="what the malignant and benign nuclei look like (default: default, the same "
        "images for a seed as ever)",
    )
    p.add_argument(
        "--stain-variation",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="strong stain and blur variation across patients (default: on for sparse, "
        "mimic and mixed, off for default)",
    )
    p.add_argument(
        "--sil-noise",
        type=float,
        default=None,
        help="SIL label noise: the share (0, 0.25, 0.5 or 0.75) of a malignant image's four "
        "quarters that hold no malignant nucleus (default: the scenario's own layout)",
    )
    p.set_defaults(func=_cli)


def _cli(args: argparse.Namespace) -> int:
    total = args.patients * args.images_per_patient
    print(
        f"milsil synth: writing {total} images of {args.size}x{args.size} "
        f"({args.patients} patients x {args.images_per_patient}, malignant fraction "
        f"{args.malignant_fraction}, seed {args.seed}, scenario {args.scenario}) to "
        f"{args.out_dir}",
        flush=True,
    )
    start = time.perf_counter()
    manifest = synthesize_dataset(
        args.out_dir,
        patients=args.patients,
        images_per_patient=args.images_per_patient,
        size=args.size,
        malignant_fraction=args.malignant_fraction,
        seed=args.seed,
        verbose=True,
        scenario=args.scenario,
        stain_variation=args.stain_variation,
        sil_noise=args.sil_noise,
    )
    elapsed = time.perf_counter() - start
    with manifest.open(newline="") as f:
        rows = list(csv.DictReader(f))
    n_mal = sum(r["label"] == "malignant" for r in rows)
    print(
        f"done in {elapsed:.1f} s: {len(rows)} images ({n_mal} malignant, {len(rows) - n_mal} "
        f"benign) from {args.patients} patients; manifest {manifest}"
    )
    return 0
