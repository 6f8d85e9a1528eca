#!/usr/bin/env python
"""Stain normalization under stain shift (README, "Stain normalization"; issue 20).

Does ``--stain-normalize`` help a model trained on one lab's H&E judge another lab's?
One training set of synthetic H&E with the ordinary per-patient stain differences
(``milsil synth``, no ``--stain-variation``), and two held-out sets of new patients: the
same kind (in distribution) and one with strong stain and blur variation
(``--stain-variation``: stain vectors moved about twice as far, stain strengths varied
twice as much, blur from 0.3 to 1.2 px). For each method (none, macenko, reinhard) a
BagNet-9 MIL-SIL model of width 16 is trained from scratch with the same seed and
settings, and its ``best.pt`` (the last epoch: no validation split) is tested on both sets:
held-out MIL accuracy and AUROC (``evaluate_model``, the bags normalized as in training)
and nucleus AUROC of the logit heatmap (``localization``: the heatmaps normalized by the
first-band rule, as ``milsil heatmap`` and the server do).

Writes ``OUT/stain_bench.jsonl`` (one row per method and test set, with the command, date
and machine) and prints a Markdown table.

Usage::

    python bench/stain_bench.py --out bench_out/stain            # the README's numbers
    python bench/stain_bench.py --smoke --out /tmp/stain_smoke   # seconds: the test's run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

from milsil.data import load_dataset
from milsil.data.instances import read_instance_index
from milsil.data.synth import synthesize_dataset
from milsil.engine.config import TrainConfig
from milsil.engine.loop import train_model
from milsil.engine.validation import evaluate_model
from milsil.experiments.localization import localization
from milsil.models import load_checkpoint

PRESETS = {
    # patients x images per patient (train, in-distribution test, shifted test), size, epochs
    "full": {"train": (12, 6), "test": (6, 4), "shift": (8, 4), "size": 64, "epochs": 8},
    "smoke": {"train": (4, 2), "test": (2, 2), "shift": (2, 2), "size": 64, "epochs": 1},
}


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    return f"{platform.node()} ({cpu}, {os.cpu_count()} CPUs, torch {torch.__version__})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, 1 epoch (a test)")
    parser.add_argument(
        "--methods",
        default=None,
        help="comma-separated (default: none,macenko,reinhard; smoke: none,macenko)",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    preset = PRESETS["smoke" if args.smoke else "full"]
    default_methods = "none,macenko" if args.smoke else "none,macenko,reinhard"
    methods = [m.strip() for m in (args.methods or default_methods).split(",") if m.strip()]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(min(4, os.cpu_count() or 1))
    started = time.time()

    sets = {}
    for name, (patients, images), seed, shift in (
        ("train", preset["train"], args.seed, False),
        ("in distribution", preset["test"], args.seed + 1, False),
        ("stain shift", preset["shift"], args.seed + 2, True),
    ):
        folder = out / "data" / name.replace(" ", "_")
        synthesize_dataset(
            folder, patients, images, preset["size"], seed=seed, stain_variation=shift
        )
        sets[name] = (folder, *load_dataset(folder))
    train_records, class_names = sets["train"][1], sets["train"][2]

    rows = []
    for method in methods:
        config = TrainConfig(
            width=16,
            epochs=preset["epochs"],
            lr=2e-3,
            lr_decay=0.8,
            batch_size=8,
            patch_size=32,
            seed=args.seed,
            device="cpu",
            stain_normalize=method,
        )
        t0 = time.time()
        result = train_model(
            config, train_records, [], class_names, out / f"run_{method}", resume=False
        )
        train_seconds = time.time() - t0
        model = load_checkpoint(result.best_checkpoint)
        for name in ("in distribution", "stain shift"):
            folder, records, _ = sets[name]
            metrics = evaluate_model(model, records, config.patch_size, "cpu")
            loc = localization(
                model, records, class_names, maps=["logit"], instances=read_instance_index(folder)
            )["logit"]
            rows.append(
                {
                    "stain_normalize": method,
                    "test_set": name,
                    "images": len(records),
                    "mil_accuracy": float(metrics["mil_accuracy"]),
                    "mil_auroc": float(metrics["mil_auroc"]),
                    "nucleus_auroc": float(loc.get("object_auroc", float("nan"))),
                    "train_seconds": round(train_seconds, 1),
                }
            )
            print(json.dumps(rows[-1]), flush=True)

    info = {
        "command": " ".join([sys.executable, *sys.argv]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine(),
        "preset": "smoke" if args.smoke else "full",
        "wall_seconds": round(time.time() - started, 1),
    }
    with open(out / "stain_bench.jsonl", "w") as fh:
        for row in rows:
            fh.write(json.dumps(row | info) + "\n")
    print(f"\n{info['date']}, {info['machine']}, {info['wall_seconds']} s")
    print("| stain normalization | test set | images | MIL accuracy | MIL AUROC | nucleus AUROC |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r['stain_normalize']} | {r['test_set']} | {r['images']} | "
            f"{r['mil_accuracy']:.3f} | {r['mil_auroc']:.3f} | {r['nucleus_auroc']:.3f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
