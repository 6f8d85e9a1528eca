#!/usr/bin/env python
"""The SIL-label-noise benchmark (docs/benchmark.md): when does the SIL branch help?

The paper's claim is that adding a SIL branch to a MIL BagNet (MILSIL) beats MIL alone
(MILBagNet) and SIL alone (BagNet). The SIL loss gives every instance its bag's label, so
it is helped or hurt by how often that label is wrong for an instance. Here that is the
controlled variable: CRC-like bags (an image split into its four quarters, the paper's
bags) where a malignant bag's malignant nuclei lie in only ``4 - 4 * noise`` of its
quarters (:func:`milsil.data.scenarios.quarter_clusters`), so a fraction ``noise`` of its
instances carry a wrong SIL label. The result is a curve: MILSIL - MILBagNet (and -
BagNet) against SIL label noise.

Design, per (scenario, noise, seed): a fresh ``milsil synth`` dataset of ``patients x
images``; 5 patient-level folds; in each fold's training patients a patient-level 20%
validation split for early stopping (``TrainConfig.patience``; ``best.pt`` is tested).

* BagNet / MILBagNet / MILSIL: BagNet-9 from scratch (the reference init; no ImageNet
  weights offline), Adam, batches of 8 bags, flips/rotations, at each preset width.
* ADMIL as Ilse et al. (ICML 2018) trained it for histology (their Sec. 5.3 and appendix,
  as we read them; the values could not be re-checked offline here): their full-size
  network (width 64: conv 4x4-36, conv 3x3-48, fc 512, fc 512, attention 128), 27x27
  patches (here the exhaustive grid of the image), one bag per optimiser step, Adam lr
  1e-4, betas (0.9, 0.999), weight decay 5e-4, a budget of 100 epochs with early stopping
  on a validation split (their criterion: the lowest validation error and loss; ours:
  validation MIL accuracy, ties by loss, with a patience).

Every training writes one result (the held-out images' predictions and every held-out
nucleus's map score: the logit heatmap for BagNets, attention for ADMIL); all of them go
to one JSON-lines file, ``OUT/raw.jsonl``, with the command, commit and machine, from which
``bench/scenario_report.py`` recomputes every table, interval and paired count.

Usage::

    python bench/scenario_bench.py --preset cpu --out bench_out/noise_cpu
    python bench/scenario_bench.py --preset gpu --out bench_out/noise_gpu
    python bench/scenario_bench.py --preset smoke --out /tmp/smoke --allow-dirty

Runs resume (each training's result is kept under ``OUT/results``). A dirty git tree is
refused unless ``--allow-dirty`` (the commit must say what ran).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from scenario_report import MDD_FACTOR, markdown  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
BORDER = 4  # BagNet-9's half receptive field: nuclei are scored on the same interior
ASSUMED_DISCORDANCE = 0.15  # a priori: share of images two models classify differently


@dataclass(frozen=True)
class Preset:
    """One benchmark's sizes. ``widths``: the BagNet widths (one row of models each)."""

    scenarios: tuple[str, ...]
    noise: tuple[float, ...]
    patients: int
    images: int
    size: int  # image side: bags of four size/2 instances
    folds: int
    seeds: tuple[int, ...]
    widths: tuple[int, ...]
    epochs: int  # BagNets' epoch budget
    patience: int
    admil_width: int
    admil_epochs: int
    admil_patience: int
    device: str
    jobs: int  # trainings side by side
    models: tuple[str, ...] = ("sil", "mil", "milsil", "admil")
    lr: float = 2e-3
    lr_decay: float = 0.9
    notes: list[str] = field(default_factory=list, compare=False)


PRESETS = {
    # in the test suite: every step of the gpu preset, tiny
    "smoke": Preset(
        scenarios=("default",),
        noise=(0.5,),
        patients=4,
        images=1,
        size=64,
        folds=2,
        seeds=(0,),
        widths=(4,),
        epochs=1,
        patience=1,
        admil_width=8,
        admil_epochs=2,
        admil_patience=1,
        device="cpu",
        jobs=1,
    ),
    # this 2-core machine, <= 60 min: sized from the first full run of the previous, smaller
    # cpu design (60 trainings of <= 4 epochs on 30 x 6 images in 4.5 min, 2026-12-04):
    # 135 trainings of about 9 epochs on 30 x 10 images: about 52-54 min unshared (measured)
    "cpu": Preset(
        scenarios=("default",),
        noise=(0.0, 0.5, 0.75),
        patients=30,
        images=10,
        size=64,  # bags of four 32 px instances
        folds=5,
        seeds=(0, 1, 2),
        widths=(16,),
        epochs=15,
        patience=3,
        admil_width=64,
        admil_epochs=100,
        admil_patience=5,
        device="cpu",
        jobs=2,
        models=("sil", "mil", "milsil"),  # ADMIL: gpu preset
    ),
    # one H200, <= 7 min (estimated from FLOPs, untested: docs/benchmark.md)
    "gpu": Preset(
        scenarios=("default",),
        noise=(0.0, 0.25, 0.5, 0.75),
        patients=30,
        images=10,
        size=256,  # the paper's four quarters: 128 px instances
        folds=5,
        seeds=(0, 1, 2),
        widths=(64, 16),
        epochs=30,
        patience=5,
        admil_width=64,
        admil_epochs=100,
        admil_patience=10,
        device="cuda",
        jobs=12,
    ),
}


def git_state() -> tuple[str, bool]:
    """(commit, dirty) of the repository this script lives in."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()

    try:
        return git("rev-parse", "HEAD"), bool(git("status", "--porcelain"))
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)", True


def machine(device: str) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        info = dict(
            (k.strip(), v.strip())
            for k, v in (x.split(":", 1) for x in text.splitlines() if ":" in x)
        )
        cpu = f"{info.get('CPU(s)', '?')} vCPU {info.get('Model name', cpu)}"
    except (OSError, subprocess.CalledProcessError):
        pass
    if device.startswith("cuda"):
        import torch

        if torch.cuda.is_available():
            cpu += f", {torch.cuda.get_device_name(0)}"
    return cpu


def a_priori_mdd(p: Preset) -> float:
    """Smallest accuracy difference (fraction) one (scenario, noise) comparison can detect,
    before running: ``2.80 * sqrt(q / N)`` with N = patients x images x seeds paired image
    evaluations and q = :data:`ASSUMED_DISCORDANCE` the share of images the two models
    classify differently (the standard error of a paired difference of proportions,
    ignoring patient clustering, so the true MDD is larger; the report gives the measured
    one from the bootstrap)."""
    n = p.patients * p.images * len(p.seeds)
    return MDD_FACTOR * math.sqrt(ASSUMED_DISCORDANCE / n)


def dataset_dir(out: Path, scenario: str, noise: float, seed: int) -> Path:
    return out / "data" / f"{scenario}_noise{noise:g}_seed{seed}"


def make_tasks(p: Preset, out: Path) -> list[dict[str, Any]]:
    tasks = []
    for seed in p.seeds:  # seed-major: a partial run covers every noise level
        for scenario in p.scenarios:
            for noise in p.noise:
                for fold in range(p.folds):
                    for model in p.models:
                        for width in (p.admil_width,) if model == "admil" else p.widths:
                            key = (
                                f"{scenario}_noise{noise:g}_seed{seed}_fold{fold}_{model}_w{width}"
                            )
                            tasks.append(
                                {
                                    "key": key,
                                    "scenario": scenario,
                                    "noise": noise,
                                    "seed": seed,
                                    "fold": fold,
                                    "model": model,
                                    "width": width,
                                    "data": str(dataset_dir(out, scenario, noise, seed)),
                                    "out": str(out),
                                    "preset": asdict(p),
                                }
                            )
    return tasks


def train_config(task: dict[str, Any]):
    """The TrainConfig of one training (see the module docstring)."""
    from milsil.engine.config import TrainConfig

    p = task["preset"]
    common = dict(seed=task["seed"], device=p["device"], augment=True, width=task["width"])
    if task["model"] == "admil":  # Ilse et al.'s histology training
        return TrainConfig(
            arch="admil",
            head="mil",
            recipe="paper",
            pretrained="none",
            patch_size=27,
            batch_size=1,
            lr=1e-4,
            lr_decay=1.0,
            weight_decay=5e-4,
            epochs=p["admil_epochs"],
            patience=p["admil_patience"],
            **common,
        )
    return TrainConfig(
        arch="bagnet9",
        head=task["model"],
        patch_size=p["size"] // 2,
        batch_size=8,
        lr=p["lr"],
        lr_decay=p["lr_decay"],
        epochs=p["epochs"],
        patience=p["patience"],
        **common,
    )


def run_training(task: dict[str, Any]) -> dict[str, Any]:
    """One (scenario, noise, seed, fold, model): train with early stopping, then every
    held-out image's prediction and every held-out nucleus's map score."""
    import numpy as np
    import torch

    from milsil.atomic import write_json_atomic
    from milsil.data import load_dataset, load_rgb, patient_kfold, patient_split
    from milsil.data.instances import load_instances, read_instance_index
    from milsil.engine.loop import train_model
    from milsil.engine.validation import predict
    from milsil.experiments.localization import image_maps
    from milsil.experiments.nuclei import score_nuclei
    from milsil.models import load_checkpoint, target_class_index

    cached = Path(task["out"]) / "results" / f"{task['key']}.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    torch.set_num_threads(task.get("threads", 1))
    t0 = time.monotonic()
    manifest = Path(task["data"]) / "manifest.csv"
    records, names = load_dataset(manifest)
    train, test = patient_kfold(records, k=task["preset"]["folds"], seed=task["seed"])[task["fold"]]
    fit, val = patient_split(train, 0.2, task["seed"])
    config = train_config(task)
    run_dir = Path(task["out"]) / "runs" / task["key"]
    result = train_model(config, fit, val, names, run_dir)
    device = torch.device("cuda" if config.device.startswith("cuda") else "cpu")
    model = load_checkpoint(result.best_checkpoint).to(device)
    probs = predict(model, test, config.patch_size, device, config.batch_size)
    target = target_class_index(names)
    instances = read_instance_index(manifest)
    map_name = "attention" if task["model"] == "admil" else "logit"
    inner = (slice(BORDER, -BORDER), slice(BORDER, -BORDER))
    images, nuclei = [], []
    for r, p_row in zip(test, probs["mil_probs"], strict=True):
        stem = Path(r.path).stem
        images.append(
            {
                "image": stem,
                "patient": r.patient,
                "label": int(r.label == target),
                "prob": round(float(p_row[target]), 5),
                "pred": int(np.argmax(p_row) == target),
            }
        )
        labels, table = load_instances(instances[str(Path(r.path).resolve())])
        heat = image_maps(model, load_rgb(r.path), target, [map_name])[map_name]
        scores, is_target = score_nuclei(heat[inner], labels[inner], table, names[target])
        nuclei.append(
            {
                "image": stem,
                "patient": r.patient,
                "scores": [float(f"{s:.5g}") for s in scores],
                "malignant": [int(t) for t in is_target],
            }
        )
    row = {
        "kind": "training",
        **{k: task[k] for k in ("scenario", "noise", "seed", "fold", "model", "width")},
        "epochs_run": len(result.history),
        "best_epoch": result.best_epoch,
        "train_bags": len(fit),
        "val_bags": len(val),
        "seconds": round(time.monotonic() - t0, 1),
        "images": images,
        "nuclei": nuclei,
    }
    write_json_atomic(cached, row, indent=None)
    shutil.rmtree(run_dir)  # the checkpoints: 110 MB a width-64 BagNet, the result is kept
    return row


def make_dataset(d: dict[str, Any]) -> None:
    """Synthesize one (scenario, noise, seed) dataset unless it is there already."""
    from milsil.data.synth import synthesize_dataset

    root, p = Path(d["root"]), d["preset"]
    if (root / "manifest.csv").is_file():
        return
    t0 = time.monotonic()
    synthesize_dataset(
        root,
        patients=p["patients"],
        images_per_patient=p["images"],
        size=p["size"],
        seed=d["seed"],
        scenario=d["scenario"],
        sil_noise=d["noise"],
    )
    print(f"dataset {root.name}: {time.monotonic() - t0:.0f}s", flush=True)


def write_raw(path: Path, run: dict, rows: list[dict], end: dict | None) -> None:
    from milsil.atomic import atomic_write_bytes

    order = ("scenario", "noise", "seed", "fold", "model", "width")
    lines = [run, *sorted(rows, key=lambda r: tuple(r[k] for k in order))]
    if end is not None:
        lines.append(end)
    atomic_write_bytes(path, "".join(json.dumps(x) + "\n" for x in lines).encode())


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", required=True, choices=list(PRESETS))
    ap.add_argument("--out", default=None, help="output folder (default bench_out/noise_PRESET)")
    ap.add_argument("--jobs", type=int, default=None, help="trainings side by side")
    ap.add_argument("--allow-dirty", action="store_true", help="run on uncommitted changes")
    ap.add_argument(
        "--only", default=None, help="run only trainings whose key contains this (timing)"
    )
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    import multiprocessing as mp

    args = parse(argv)
    preset = PRESETS[args.preset]
    if args.jobs is not None:
        if args.jobs < 1:
            print(f"error: --jobs must be at least 1, got {args.jobs}", file=sys.stderr)
            return 2
        preset = replace(preset, jobs=args.jobs)
    commit, dirty = git_state()
    if dirty and not args.allow_dirty:
        print(
            f"error: the tree at {REPO} has uncommitted changes, so commit {commit[:12]} would "
            "not say what ran; commit them, or pass --allow-dirty (recorded in the results)",
            file=sys.stderr,
        )
        return 2
    out = Path(args.out or f"bench_out/noise_{args.preset}")
    (out / "results").mkdir(parents=True, exist_ok=True)
    command = "python bench/scenario_bench.py " + " ".join(sys.argv[1:] if argv is None else argv)
    run = {
        "kind": "run",
        "command": command,
        "commit": commit,
        "dirty": dirty,
        "machine": machine(preset.device),
        "preset": args.preset,
        "settings": asdict(preset),
        "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }
    mdd = a_priori_mdd(preset)
    print(
        f"{args.preset}: {len(preset.noise)} noise level(s) x {preset.folds} folds x "
        f"{len(preset.seeds)} seeds; {preset.patients} patients x {preset.images} images per "
        f"dataset. Smallest detectable MIL-accuracy difference per noise level, a priori: "
        f"{100 * mdd:.1f} points (2.80 * sqrt(q / N), N = {preset.patients * preset.images * len(preset.seeds)} "
        f"paired images, q = {ASSUMED_DISCORDANCE} assumed discordance; ignores patient "
        "clustering, so a lower bound; the report gives the measured one)",
        flush=True,
    )
    timing = out / "timing.json"
    before = json.loads(timing.read_text())["wall_seconds"] if timing.is_file() else 0.0
    start = time.monotonic()
    tasks = make_tasks(preset, out)
    if args.only:
        tasks = [t for t in tasks if args.only in t["key"]]
    datasets = [
        {
            "root": str(dataset_dir(out, sc, noise, seed)),
            "scenario": sc,
            "noise": noise,
            "seed": seed,
        }
        for sc, noise, seed in dict.fromkeys((t["scenario"], t["noise"], t["seed"]) for t in tasks)
    ]
    datasets = [d | {"preset": asdict(preset)} for d in datasets]
    if preset.jobs > 1:  # 12 datasets of 300 images of 256 px: minutes on one core
        with mp.get_context("spawn").Pool(min(preset.jobs, len(datasets) or 1)) as pool:
            pool.map(make_dataset, datasets)
    else:
        for d in datasets:
            make_dataset(d)
    threads = max(1, (os.cpu_count() or 1) // preset.jobs)
    for t in tasks:
        t["threads"] = threads
    rows: list[dict[str, Any]] = []
    raw = out / "raw.jsonl"

    def record(row: dict[str, Any]) -> None:
        rows.append(row)
        print(
            f"[{len(rows)}/{len(tasks)} {time.monotonic() - start:6.0f}s] {row['scenario']} "
            f"noise {row['noise']:g} seed {row['seed']} fold {row['fold']} {row['model']} "
            f"w{row['width']}: {row['epochs_run']} epochs (best {row['best_epoch']}), "
            f"{row['seconds']:.0f}s",
            flush=True,
        )
        wall = before + time.monotonic() - start
        timing.write_text(json.dumps({"wall_seconds": wall}))
        write_raw(raw, run, rows, None)

    if preset.jobs > 1:
        with mp.get_context("spawn").Pool(preset.jobs, maxtasksperchild=20) as pool:
            for row in pool.imap_unordered(run_training, tasks):
                record(row)
    else:
        for task in tasks:
            record(run_training(task))
    wall = before + time.monotonic() - start
    write_raw(raw, run, rows, {"kind": "end", "wall_seconds": round(wall, 1)})
    print(markdown(run, rows, {"wall_seconds": wall}), end="")
    print(f"raw results: {raw} (python bench/scenario_report.py {raw})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
