#!/usr/bin/env python
"""The scenario benchmark (docs/benchmark.md): the ablation and the localization, pixel and
nucleus level, on each ``milsil synth`` scenario, over folds x seeds.

For every scenario and seed ``s``: ``milsil synth --scenario S --seed s`` writes a fresh
dataset (so seeds vary the data, the fold assignment and the initialisation), then the
ablation (BagNet = SIL loss, MILBagNet = MIL loss, MILSIL = both; BagNet-9, the same
patient-level folds) trains and tests every head on every fold, and localizes each model's
maps (logit heatmap, CAM, Grad-CAM) on the held-out images against the malignant-nuclei
masks and, nucleus by nucleus, against the instance masks. ADMIL (attention MIL, Ilse et
al.) is trained on the same folds, its attention map localized the same way.

Every cell of the tables is the mean +- sample standard deviation (n - 1) over all
(fold, seed) pairs. Runs resume: rerunning the same command continues where it stopped.

Usage::

    python bench/scenario_bench.py --out bench_out/scenarios \\
        [--scenarios default,sparse,mimic,mixed] [--seeds 0,1,2] [--folds 5] \\
        [--patients 8 --images-per-patient 6 --size 96] [--width 8 --epochs 8] [--jobs 2] \\
        [--no-admil]

Writes ``OUT/benchmark.json`` (every fold's numbers and the summaries) and
``OUT/benchmark.md`` (the tables), after every (scenario, seed) so partial results survive.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from milsil.data import load_dataset, patient_kfold
from milsil.data.instances import read_instance_index
from milsil.data.synth import synthesize_dataset
from milsil.engine.config import TrainConfig
from milsil.engine.loop import train_model
from milsil.engine.validation import evaluate_model
from milsil.experiments.ablation import ablation
from milsil.experiments.localization import MAP_NAMES, localization
from milsil.models import load_checkpoint

MODELS = {"sil": "BagNet", "mil": "MILBagNet", "milsil": "MILSIL", "admil": "ADMIL"}
CLASSIFICATION = ("mil_accuracy", "mil_auroc", "sil_accuracy")
LOCALIZATION = (
    "pixel_auroc",
    "pointing_game",
    "dice",
    "object_auroc",
    "object_auroc_within",
    "object_pointing",
)
BORDER = 4  # BagNet-9's half receptive field: every map is scored on the same interior


def sample_stats(values: list[float]) -> dict[str, Any]:
    """Mean and sample standard deviation (n - 1) of the defined values, and n."""
    v = [float(x) for x in values if x is not None and not math.isnan(float(x))]
    if not v:
        return {"mean": None, "std": None, "n": 0}
    std = float(np.std(v, ddof=1)) if len(v) > 1 else 0.0
    return {"mean": float(np.mean(v)), "std": std, "n": len(v)}


def run_admil(records, class_names, folds, config, out_dir, instances, log) -> list[dict]:
    """ADMIL on the ablation's folds: MIL metrics and attention-map localization per fold."""
    # a 4 x 4 grid of patches that covers every pixel (the extractor needs >= 16 px)
    patch = max(16, config.patch_size // 2)
    cfg = dataclasses.replace(config, arch="admil", head="mil", patch_size=patch)
    rows = []
    for k, (train, test) in enumerate(patient_kfold(list(records), k=folds, seed=cfg.seed)):
        run_dir = Path(out_dir) / f"fold{k}" / "admil"
        log(f"[fold {k + 1}/{folds}] ADMIL: train {len(train)} bags -> {run_dir}")
        res = train_model(cfg, train, [], class_names, run_dir)
        model = load_checkpoint(res.best_checkpoint).to("cpu")
        metrics = evaluate_model(model, test, cfg.patch_size, "cpu", cfg.batch_size)
        loc = localization(model, test, class_names, instances=instances, border=BORDER)
        rows.append({"fold": k, "metrics": metrics, "localization": loc})
    return rows


def collect(results: dict[str, Any], admil: list[dict]) -> dict[str, Any]:
    """Per model: per-fold classification metrics; per model and map: localization."""
    out: dict[str, Any] = {}
    for head, entry in results["methods"].items():
        out[head] = {"folds": [{k: f[k] for k in CLASSIFICATION} for f in entry["folds"]]}
        loc = results["localization"].get(head, {})
        out[head]["maps"] = {
            name: [{k: f.get(k) for k in LOCALIZATION} for f in per_fold]
            for name, per_fold in loc.items()
        }
    if admil:
        out["admil"] = {
            "folds": [{k: r["metrics"].get(k) for k in CLASSIFICATION} for r in admil],
            "maps": {
                name: [{k: r["localization"][name].get(k) for k in LOCALIZATION} for r in admil]
                for name in admil[0]["localization"]
            },
        }
    return out


def summarize(per_seed: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Pool every (fold, seed) pair of a scenario: mean +- sample std per metric."""
    summary: dict[str, Any] = {}
    for seed_result in per_seed.values():
        for model, entry in seed_result["models"].items():
            s = summary.setdefault(model, {"classification": {}, "maps": {}})
            for f in entry["folds"]:
                for k in CLASSIFICATION:
                    s["classification"].setdefault(k, []).append(f[k])
            for name, per_fold in entry["maps"].items():
                for f in per_fold:
                    for k in LOCALIZATION:
                        s["maps"].setdefault(name, {}).setdefault(k, []).append(f[k])
    for s in summary.values():
        s["classification"] = {k: sample_stats(v) for k, v in s["classification"].items()}
        s["maps"] = {
            name: {k: sample_stats(v) for k, v in vals.items()} for name, vals in s["maps"].items()
        }
    return summary


def cell(stats: dict[str, Any], scale: float = 1.0, digits: int = 3) -> str:
    if not stats or stats["n"] == 0:
        return "n/a"
    return f"{scale * stats['mean']:.{digits}f} ± {scale * stats['std']:.{digits}f}"


def summary_tables(report: dict[str, Any]) -> list[str]:
    """Two compact tables, scenario x model: MIL accuracy; nucleus AUROC of each map."""
    scenarios = report["scenarios"]
    models = [m for m in MODELS if any(m in sc["summary"] for sc in scenarios.values())]
    lines = [
        "| scenario | " + " | ".join(f"{MODELS[m]} MIL acc. (%)" for m in models) + " |",
        "| --- |" + " --- |" * len(models),
    ]
    for name, sc in scenarios.items():
        cells = [
            cell(sc["summary"][m]["classification"]["mil_accuracy"], 100, 1)
            if m in sc["summary"]
            else "n/a"
            for m in models
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    columns = [("milsil", "logit"), ("milsil", "cam"), ("milsil", "gradcam")]
    columns += [("sil", "logit"), ("mil", "logit"), ("admil", "attention")]
    lines += [
        "",
        "| scenario | " + " | ".join(f"{MODELS[m]} {MAP_NAMES[n]}" for m, n in columns) + " |",
        "| --- |" + " --- |" * len(columns),
    ]
    for name, sc in scenarios.items():
        cells = []
        for m, n in columns:
            maps = sc["summary"].get(m, {}).get("maps", {})
            cells.append(cell(maps[n]["object_auroc"]) if n in maps else "n/a")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# Scenario benchmark",
        "",
        f"Command: `{report['command']}`",
        "",
        f"Machine: {report['machine']}; {report['jobs']} tasks at once, torch threads "
        f"{report['torch_threads']} each. "
        f"Wall time {report['elapsed_seconds'] / 60:.1f} min "
        f"({'complete' if report['complete'] else 'INCOMPLETE: see the n column'}).",
        "",
        "Cells: mean ± sample std (n − 1) over (fold, seed) pairs; n = pairs with a defined value.",
        "",
        "## Summary: held-out MIL accuracy; nucleus AUROC (malignant vs benign nuclei)",
        "",
        *summary_tables(report),
    ]
    for scenario, sc in report["scenarios"].items():
        summary = sc["summary"]
        lines += [
            "",
            f"## {scenario}",
            "",
            f"{sc['description']}. Seeds {', '.join(map(str, sc['seeds_done']))}, "
            f"{report['settings']['folds']} folds; {sc['task_seconds'] / 60:.1f} min of task "
            "time (tasks run in parallel).",
            "",
            "| model | MIL accuracy (%) | MIL AUROC | SIL accuracy (%) | n |",
            "| --- | --- | --- | --- | --- |",
        ]
        for model, s in summary.items():
            c = s["classification"]
            lines.append(
                f"| {MODELS[model]} | {cell(c['mil_accuracy'], 100, 1)} | "
                f"{cell(c['mil_auroc'])} | {cell(c['sil_accuracy'], 100, 1)} | "
                f"{c['mil_accuracy']['n']} |"
            )
        lines += [
            "",
            "| model | map | pixel AUROC | pointing | Dice | nucleus AUROC | "
            "within-image nucleus AUROC | nucleus pointing |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for model, s in summary.items():
            for name, m in s["maps"].items():
                lines.append(
                    f"| {MODELS[model]} | {MAP_NAMES.get(name, name)} | "
                    + " | ".join(cell(m[k]) for k in LOCALIZATION)
                    + " |"
                )
    return "\n".join(lines) + "\n"


def machine() -> str:
    try:
        cpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        fields = dict(
            (k.strip(), v.strip())
            for k, v in (ln.split(":", 1) for ln in cpu.splitlines() if ":" in ln)
        )
        return f"{fields.get('CPU(s)', '?')} vCPU {fields.get('Model name', platform.processor())}"
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or platform.machine()


def run_task(task: dict[str, Any]) -> dict[str, Any]:
    """One (scenario, seed): synthesize, ablate, ADMIL; its result is cached in
    ``OUT/<scenario>/seed<s>/result.json`` so a rerun skips it."""
    import torch

    torch.set_num_threads(task["threads"])
    args = argparse.Namespace(**task["args"])
    scenario, seed = task["scenario"], task["seed"]
    root = Path(args.out) / scenario / f"seed{seed}"
    cached = root / "result.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    t0 = time.monotonic()

    def log(msg: str) -> None:
        print(f"[{scenario} seed {seed} {time.monotonic() - t0:6.0f}s] {msg}", flush=True)

    manifest = synthesize_dataset(
        root / "data",
        patients=args.patients,
        images_per_patient=args.images_per_patient,
        size=args.size,
        seed=seed,
        scenario=scenario,
    )
    description = json.loads((root / "data" / "synth.json").read_text())["description"]
    records, class_names = load_dataset(manifest)
    instances = read_instance_index(manifest)
    config = TrainConfig(
        arch="bagnet9",
        width=args.width,
        epochs=args.epochs,
        lr=args.lr,
        lr_decay=args.lr_decay,
        patch_size=args.size // 2,
        seed=seed,
        device="cpu",
    )
    log(f"{len(records)} images, {args.folds} folds, patch {config.patch_size}")
    results = ablation(
        records,
        class_names,
        folds=args.folds,
        config=config,
        out_dir=root / "runs",
        instances=instances,
        log=log,
    )
    admil = []
    if not args.no_admil:
        admil = run_admil(records, class_names, args.folds, config, root / "runs", instances, log)
    result = {
        "scenario": scenario,
        "seed": seed,
        "description": description,
        "models": collect(results, admil),
        "seconds": time.monotonic() - t0,
    }
    cached.write_text(json.dumps(result))
    log(f"done in {result['seconds']:.0f}s")
    return result


def main(argv: list[str] | None = None) -> int:
    import multiprocessing as mp

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="bench_out/scenarios")
    ap.add_argument("--scenarios", default="default,sparse,mimic,mixed")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--patients", type=int, default=8)
    ap.add_argument("--images-per-patient", type=int, default=6)
    ap.add_argument("--size", type=int, default=96, help="image side; bags of 4 size/2 patches")
    ap.add_argument("--width", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--lr-decay", type=float, default=0.8)
    ap.add_argument("--no-admil", action="store_true")
    ap.add_argument(
        "--jobs", type=int, default=2, help="(scenario, seed) tasks run at once, 1 thread each"
    )
    ap.add_argument(
        "--report-only", action="store_true", help="rewrite OUT/benchmark.md from its JSON"
    )
    args = ap.parse_args(argv)

    out = Path(args.out)
    if args.report_only:
        report = json.loads((out / "benchmark.json").read_text())
        (out / "benchmark.md").write_text(markdown(report))
        print(markdown(report))
        return 0
    out.mkdir(parents=True, exist_ok=True)
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    cores = os.cpu_count() or 1
    threads = max(1, cores // max(1, args.jobs))
    settings = {k: v for k, v in vars(args).items() if k not in ("jobs", "report_only")}
    report: dict[str, Any] = {
        "command": "python bench/scenario_bench.py "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": machine(),
        "jobs": args.jobs,
        "torch_threads": threads,
        "settings": settings,
        "scenarios": {},
        "complete": False,
    }
    timing_path = out / "timing.json"
    previous = json.loads(timing_path.read_text()) if timing_path.is_file() else {}
    start = time.monotonic() - float(previous.get("elapsed_seconds", 0.0))
    tasks = [
        {"scenario": sc, "seed": seed, "args": settings, "threads": threads}
        for seed in seeds  # seed-major: a partial run covers every scenario
        for sc in scenarios
    ]
    done: dict[str, dict[str, Any]] = {}

    def record(result: dict[str, Any]) -> None:
        done.setdefault(result["scenario"], {})[str(result["seed"])] = result
        report["scenarios"] = {}  # in the order asked for, whatever finished first
        for sc in scenarios:
            per_seed = done.get(sc, {})
            if not per_seed:
                continue
            report["scenarios"][sc] = {
                "description": next(iter(per_seed.values()))["description"],
                "seeds_done": sorted(int(s) for s in per_seed),
                "task_seconds": sum(r["seconds"] for r in per_seed.values()),
                "per_seed": per_seed,
                "summary": summarize(per_seed),
            }
        report["elapsed_seconds"] = time.monotonic() - start
        report["complete"] = all(len(done.get(sc, {})) == len(seeds) for sc in scenarios)
        timing_path.write_text(json.dumps({"elapsed_seconds": report["elapsed_seconds"]}))
        (out / "benchmark.json").write_text(json.dumps(report, indent=1))
        (out / "benchmark.md").write_text(markdown(report))

    if args.jobs > 1:
        with mp.get_context("spawn").Pool(args.jobs, maxtasksperchild=1) as pool:
            for result in pool.imap_unordered(run_task, tasks):
                record(result)
    else:
        for task in tasks:
            record(run_task(task))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
