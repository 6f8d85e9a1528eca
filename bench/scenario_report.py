#!/usr/bin/env python
"""Every table, interval and paired count of docs/benchmark.md, recomputed from the raw
results of ``bench/scenario_bench.py`` (one JSON-lines file).

Usage::

    python bench/scenario_report.py docs/benchmark_raw.jsonl [--out docs/benchmark_tables.md]

The raw file holds a ``run`` line (command, commit, machine, settings), one ``training``
line per (scenario, noise, seed, fold, model) with every held-out image's prediction and
every held-out nucleus's map score, and an ``end`` line (wall time). From it:

* per (scenario, noise, model): held-out MIL accuracy and nucleus AUROC, mean +- sample
  std (n - 1) over the (fold, seed) pairs, and n;
* per (scenario, noise) and comparison (MILSIL - MILBagNet, MILSIL - BagNet): the mean
  +- sample std of the paired (fold, seed) differences; the paired counts (pairs where the
  first model is ahead / tied / behind); the difference with a 95% paired bootstrap
  interval over patients (:func:`paired_bootstrap`); and the smallest difference the run
  can detect, ``MDD = (z_0.975 + z_0.80) * SE = 2.80 * SE`` with SE the bootstrap standard
  error (a two-sided 5% test with 80% power).

A patient is ``(seed, patient)``: every seed draws a fresh dataset, and within a seed
every patient is held out in exactly one fold, so resampling patients with replacement
resamples independent units. The accuracy difference of a resample is pooled over its
images; the nucleus-AUROC difference is the mean over (seed, fold) of each fold's AUROC
difference on the resampled patients, computed exactly from per-patient-pair win counts
(:func:`auroc_parts`) so a resample costs no re-sorting.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from milsil.engine.metrics import mean_std

MODEL_NAMES = {"sil": "BagNet", "mil": "MILBagNet", "milsil": "MILSIL", "admil": "ADMIL"}
COMPARISONS = (("milsil", "mil"), ("milsil", "sil"))
BOOTSTRAP = 2000
MDD_FACTOR = 2.80  # z_0.975 + z_0.80 (1.96 + 0.84)


def read_raw(path: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any]]:
    """(run line, training lines, end line or {}) of a raw results file."""
    run: dict[str, Any] = {}
    end: dict[str, Any] = {}
    trainings = []
    with Path(path).open() as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            kind = row.get("kind")
            if kind == "run":
                run = row
            elif kind == "training":
                trainings.append(row)
            elif kind == "end":
                end = row
            else:
                raise ValueError(f"{path}:{n}: unknown line kind {kind!r}")
    return run, trainings, end


def stats(values: Iterable[float]) -> dict[str, Any]:
    """Mean, sample std (n - 1; nan for one value) and n of the defined values."""
    mean, std, n = mean_std(list(values))
    return {"mean": mean, "std": std, "n": n}


def accuracy(t: dict[str, Any]) -> float:
    images = t["images"]
    return sum(int(i["pred"] == i["label"]) for i in images) / len(images)


def auroc_parts(nuclei: list[dict[str, Any]], patients: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """``(wins, pairs)``: ``wins[i, j]`` = malignant nuclei of patient i scored above benign
    nuclei of patient j (ties 1/2), ``pairs[i, j]`` = their number of pairs. The AUROC of
    patients taken with multiplicities m is ``m @ wins @ m / m @ pairs @ m``."""
    index = {p: k for k, p in enumerate(patients)}
    pos: dict[int, list[float]] = defaultdict(list)
    neg: dict[int, list[float]] = defaultdict(list)
    for image in nuclei:
        k = index[image["patient"]]
        for score, malignant in zip(image["scores"], image["malignant"], strict=True):
            (pos if malignant else neg)[k].append(score)
    n = len(patients)
    wins, pairs = np.zeros((n, n)), np.zeros((n, n))
    for i, p in pos.items():
        p_arr = np.asarray(p)
        for j, q in neg.items():
            q_sorted = np.sort(q)
            below = np.searchsorted(q_sorted, p_arr, "left")
            ties = np.searchsorted(q_sorted, p_arr, "right") - below
            wins[i, j] = float(below.sum() + 0.5 * ties.sum())
            pairs[i, j] = len(p_arr) * len(q_sorted)
    return wins, pairs


def nucleus_auroc(t: dict[str, Any]) -> float:
    patients = sorted({i["patient"] for i in t["nuclei"]})
    wins, pairs = auroc_parts(t["nuclei"], patients)
    return float(wins.sum() / pairs.sum()) if pairs.sum() else math.nan


def paired_bootstrap(
    first: list[dict[str, Any]], second: list[dict[str, Any]], seed: int = 0
) -> dict[str, Any]:
    """Paired bootstrap over patients of ``first - second`` (two models' trainings on the
    same (seed, fold)s): accuracy (pooled over images) and nucleus AUROC (mean over folds).
    Returns the point estimates, 95% percentile intervals and bootstrap standard errors."""
    by_key = {(t["seed"], t["fold"]): t for t in second}
    units: list[tuple[int, str]] = []
    acc_diff: dict[tuple[int, str], list[float]] = defaultdict(lambda: [0.0, 0.0])
    folds = []
    for a in first:
        b = by_key[(a["seed"], a["fold"])]
        preds_b = {i["image"]: i for i in b["images"]}
        for i in a["images"]:
            unit = (a["seed"], i["patient"])
            j = preds_b[i["image"]]
            acc_diff[unit][0] += int(i["pred"] == i["label"]) - int(j["pred"] == j["label"])
            acc_diff[unit][1] += 1
        fold_patients = sorted({i["patient"] for i in a["images"]})
        parts = [auroc_parts(t["nuclei"], fold_patients) for t in (a, b)]
        folds.append((a["seed"], fold_patients, parts))
    units = sorted(acc_diff)
    pos = {u: k for k, u in enumerate(units)}
    d = np.array([acc_diff[u][0] for u in units])
    n = np.array([acc_diff[u][1] for u in units])
    fold_index = [np.array([pos[(s, p)] for p in ps]) for s, ps, _ in folds]

    def auroc_diff(m: np.ndarray) -> float:
        values = []
        for idx, (_, _, ((wa, pa), (wb, pb))) in zip(fold_index, folds, strict=True):
            w = m[idx]
            den_a, den_b = w @ pa @ w, w @ pb @ w
            if den_a > 0 and den_b > 0:
                values.append((w @ wa @ w) / den_a - (w @ wb @ w) / den_b)
        return float(np.mean(values)) if values else math.nan

    rng = np.random.default_rng(seed)
    ones = np.ones(len(units))
    point_acc, point_auc = float(d.sum() / n.sum()), auroc_diff(ones)
    boot_acc, boot_auc = [], []
    for _ in range(BOOTSTRAP):
        m = np.bincount(rng.integers(0, len(units), len(units)), minlength=len(units))
        boot_acc.append(float(m @ d / (m @ n)))
        boot_auc.append(auroc_diff(m.astype(float)))

    def summary(point: float, boot: list[float]) -> dict[str, float]:
        b = np.array([x for x in boot if math.isfinite(x)])
        if not len(b):
            return {"diff": point, "low": math.nan, "high": math.nan, "se": math.nan}
        low, high = np.percentile(b, [2.5, 97.5])
        return {"diff": point, "low": float(low), "high": float(high), "se": float(b.std())}

    return {
        "accuracy": summary(point_acc, boot_acc),
        "nucleus_auroc": summary(point_auc, boot_auc),
        "patients": len(units),
    }


def paired_counts(first: list[dict], second: list[dict], metric) -> tuple[int, int, int]:
    """(ahead, tied, behind) of ``first`` over (seed, fold) pairs."""
    by_key = {(t["seed"], t["fold"]): metric(t) for t in second}
    ahead = tied = behind = 0
    for t in first:
        a, b = metric(t), by_key[(t["seed"], t["fold"])]
        ahead += a > b
        tied += a == b
        behind += a < b
    return ahead, tied, behind


def group(trainings: list[dict[str, Any]]) -> dict[tuple[str, float, int], dict[str, list[dict]]]:
    """(scenario, noise, width) -> model -> trainings, in file order (models are compared
    at one width)."""
    out: dict[tuple[str, float, int], dict[str, list[dict]]] = {}
    for t in trainings:
        key = (t["scenario"], t["noise"], t["width"])
        out.setdefault(key, {}).setdefault(t["model"], []).append(t)
    return out


def analyse(trainings: list[dict[str, Any]]) -> dict[str, Any]:
    """Every number of the report, as data (the tests check rows of it)."""
    rows, diffs = [], []
    for (scenario, noise, width), models in sorted(group(trainings).items()):
        for model in [m for m in MODEL_NAMES if m in models]:
            ts = models[model]
            rows.append(
                {
                    "scenario": scenario,
                    "noise": noise,
                    "width": width,
                    "model": model,
                    "accuracy": stats(accuracy(t) for t in ts),
                    "nucleus_auroc": stats(nucleus_auroc(t) for t in ts),
                }
            )
        for a, b in COMPARISONS:
            if a not in models or b not in models:
                continue
            first, second = models[a], models[b]
            by_key = {(t["seed"], t["fold"]): t for t in second}
            pair_acc = [accuracy(t) - accuracy(by_key[(t["seed"], t["fold"])]) for t in first]
            pair_auc = [
                nucleus_auroc(t) - nucleus_auroc(by_key[(t["seed"], t["fold"])]) for t in first
            ]
            boot = paired_bootstrap(first, second)
            diffs.append(
                {
                    "scenario": scenario,
                    "noise": noise,
                    "width": width,
                    "first": a,
                    "second": b,
                    "pairs_accuracy": stats(pair_acc),
                    "pairs_nucleus_auroc": stats(pair_auc),
                    "counts_accuracy": paired_counts(first, second, accuracy),
                    "bootstrap": boot,
                    "mdd_accuracy": MDD_FACTOR * boot["accuracy"]["se"],
                    "mdd_nucleus_auroc": MDD_FACTOR * boot["nucleus_auroc"]["se"],
                }
            )
    return {"rows": rows, "diffs": diffs}


def _cell(s: dict[str, Any], scale: float = 1.0, digits: int = 1) -> str:
    if not s["n"]:
        return "n/a"
    return f"{scale * s['mean']:.{digits}f} ± {scale * s['std']:.{digits}f}"


def _interval(b: dict[str, float], scale: float, digits: int) -> str:
    return f"{scale * b['diff']:+.{digits}f} [{scale * b['low']:+.{digits}f}, {scale * b['high']:+.{digits}f}]"


def verdict(d: dict[str, Any]) -> str:
    """One sentence: does the first model beat the second at this noise level?"""
    b = d["bootstrap"]["accuracy"]
    a, s = MODEL_NAMES[d["first"]], MODEL_NAMES[d["second"]]
    where = f"{d['scenario']}, SIL label noise {d['noise']:g}, width {d['width']}"
    span = f"{100 * b['diff']:+.1f} points, 95% interval [{100 * b['low']:+.1f}, {100 * b['high']:+.1f}]"
    if b["low"] > 0:
        return f"{where}: {a} beats {s} ({span})."
    if b["high"] < 0:
        return f"{where}: {a} is worse than {s} ({span})."
    return (
        f"{where}: no detectable difference between {a} and {s} ({span}; the run detects "
        f"about {100 * d['mdd_accuracy']:.1f} points)."
    )


def markdown(run: dict[str, Any], trainings: list[dict[str, Any]], end: dict[str, Any]) -> str:
    result = analyse(trainings)
    wall = end.get("wall_seconds")
    lines = [
        f"Command: `{run.get('command', '?')}`; commit {run.get('commit', '?')}"
        + (" (DIRTY tree)" if run.get("dirty") else "")
        + f"; machine: {run.get('machine', '?')}; "
        + (f"wall time {wall / 60:.1f} min." if wall is not None else "INCOMPLETE run."),
        "",
        "Held-out MIL accuracy (%) and nucleus AUROC: mean ± sample std (n − 1) over "
        "(fold, seed) pairs.",
        "",
        "| scenario | SIL noise | width | model | MIL accuracy (%) | nucleus AUROC | n |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['scenario']} | {r['noise']:g} | {r['width']} | {MODEL_NAMES[r['model']]} | "
            f"{_cell(r['accuracy'], 100)} | {_cell(r['nucleus_auroc'], 1, 3)} | "
            f"{r['accuracy']['n']} |"
        )
    lines += [
        "",
        "Paired differences: (fold, seed) pairs mean ± sample std; counts ahead/tied/behind "
        "in accuracy; paired bootstrap over patients (2000 resamples): difference "
        "[95% interval]; MDD = 2.80 × bootstrap SE (smallest difference detectable at 5% "
        "two-sided with 80% power).",
        "",
        "| scenario | SIL noise | width | comparison | accuracy pairs (points) | "
        "ahead/tied/behind | accuracy bootstrap (points) | MDD (points) | nucleus AUROC pairs "
        "| nucleus AUROC bootstrap | MDD (AUROC) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for d in result["diffs"]:
        b = d["bootstrap"]
        lines.append(
            f"| {d['scenario']} | {d['noise']:g} | {d['width']} | {MODEL_NAMES[d['first']]} − "
            f"{MODEL_NAMES[d['second']]} | {_cell(d['pairs_accuracy'], 100)} | "
            f"{'/'.join(map(str, d['counts_accuracy']))} | {_interval(b['accuracy'], 100, 1)} | "
            f"{100 * d['mdd_accuracy']:.1f} | {_cell(d['pairs_nucleus_auroc'], 1, 3)} | "
            f"{_interval(b['nucleus_auroc'], 1, 3)} | {d['mdd_nucleus_auroc']:.3f} |"
        )
    lines += ["", *[f"* {verdict(d)}" for d in result["diffs"]]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("raw", help="the raw JSON-lines file of bench/scenario_bench.py")
    ap.add_argument("--out", default=None, help="also write the tables to this file")
    args = ap.parse_args(argv)
    try:
        run, trainings, end = read_raw(args.raw)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not trainings:
        print(f"error: {args.raw} holds no training lines", file=sys.stderr)
        return 2
    text = markdown(run, trainings, end)
    if args.out:
        from milsil.atomic import atomic_write_bytes

        atomic_write_bytes(args.out, text.encode())
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
