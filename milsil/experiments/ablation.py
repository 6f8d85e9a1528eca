"""The paper's ablation (Table 1): BagNet (SIL loss), MILBagNet (MIL loss) and the proposed
MIL-SIL model, each trained and tested on the same patient-level folds.

* :func:`ablation` -- train and test every head on every fold, with the localization of
  its maps (:mod:`milsil.experiments.localization`) on the test folds;
* :func:`format_table1` -- the paper's Table 1 layout (mean +- std over folds);
* :func:`format_localization_table` -- logit heatmap vs CAM vs Grad-CAM against the masks;
* :func:`format_nucleus_table` -- the same maps nucleus by nucleus (instance masks).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from milsil.engine.config import TrainConfig, resolve_device
from milsil.engine.loop import TrainProgress, train_model
from milsil.engine.metrics import format_mean_std, mean_std
from milsil.engine.provenance import write_json_atomic
from milsil.engine.validation import evaluate_model
from milsil.errors import MilsilError
from milsil.experiments.localization import MAP_NAMES, localization
from milsil.experiments.nuclei import OBJECT_KEYS

# The paper's names for the three heads (Table 1 columns).
METHOD_NAMES = {"sil": "BagNet", "mil": "MILBagNet", "milsil": "Proposed"}


def ablation(
    records: Sequence[Any],
    class_names: Sequence[str],
    folds: int = 5,
    config: TrainConfig | None = None,
    out_dir: str | Path = "ablation",
    heads: Sequence[str] = ("sil", "mil", "milsil"),
    localize: bool = True,
    localize_heads: Sequence[str] | None = None,
    dice_threshold: float = 0.5,
    log: Callable[[str], None] | None = print,
    progress: Callable[[TrainProgress], None] | None = None,
    instances: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Table 1: train each head on the same patient-level folds and test on the held-out fold.

    ``config`` is the template (its ``head`` is replaced per method). No validation data is
    carved from the training folds (the test fold is never used for model selection), so
    each fold's model is its last epoch. Every run lives in ``out_dir/fold<k>/<head>`` and
    resumes, so an interrupted ablation continues where it stopped. Localization is measured
    for ``localize_heads`` (default: all heads) on the test folds' target-class images, and
    nucleus by nucleus on the test images in ``instances`` (image path -> instance files,
    :func:`milsil.data.instances.read_instance_index`).
    Results are also written to ``out_dir/ablation.json``.
    """
    from milsil.data import patient_kfold
    from milsil.models import load_checkpoint

    config = config or TrainConfig()
    heads = list(heads)
    for h in heads:
        if h not in METHOD_NAMES:
            raise MilsilError(f"unknown head {h!r}; allowed: {', '.join(METHOD_NAMES)}")
    if not isinstance(folds, int) or folds < 2:
        raise MilsilError(f"folds must be an integer >= 2, got {folds!r}")
    localize_heads = list(heads if localize_heads is None else localize_heads)
    out_dir = Path(out_dir)
    say = log or (lambda _msg: None)
    splits = patient_kfold(list(records), k=folds, seed=config.seed)
    results: dict[str, Any] = {
        "config": config.to_dict(),
        "folds": folds,
        "class_names": list(class_names),
        "heads": heads,
        "methods": {h: {"name": METHOD_NAMES[h], "folds": []} for h in heads},
        "localization": {},
    }
    start = time.monotonic()
    for k, (train, test) in enumerate(splits):
        for h in heads:
            cfg = dataclasses.replace(config, head=h)
            run_dir = out_dir / f"fold{k}" / h
            say(
                f"[fold {k + 1}/{folds}] {METHOD_NAMES[h]} (head {h}): train {len(train)} bags, "
                f"test {len(test)} bags -> {run_dir}"
            )
            res = train_model(cfg, train, [], class_names, run_dir, progress=progress)
            model = load_checkpoint(res.best_checkpoint)
            device = resolve_device(cfg.device)
            metrics = evaluate_model(model.to(device), test, cfg.patch_size, device, cfg.batch_size)
            metrics["fold"] = k
            results["methods"][h]["folds"].append(metrics)
            say(
                f"  test: MIL acc {metrics['mil_accuracy']:.3f} (AUROC {metrics['mil_auroc']:.3f})"
                f"  SIL acc {metrics['sil_accuracy']:.3f}  [{time.monotonic() - start:.0f}s]"
            )
            if localize and h in localize_heads:
                loc = localization(
                    model.to("cpu"), test, class_names, dice_threshold, instances=instances
                )
                for name, vals in loc.items():
                    entry = results["localization"].setdefault(h, {}).setdefault(name, [])
                    entry.append(vals | {"fold": k})
                if loc:
                    say(
                        "  localization: "
                        + "; ".join(
                            f"{MAP_NAMES[n]} AUROC {v['pixel_auroc']:.3f}"
                            + (f" (nuclei {v['object_auroc']:.3f})" if "object_auroc" in v else "")
                            for n, v in loc.items()
                        )
                    )
            write_json_atomic(out_dir / "ablation.json", summarize(results))
    results = summarize(results)
    results["elapsed_seconds"] = time.monotonic() - start
    write_json_atomic(out_dir / "ablation.json", results)
    return results


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    """Add ``summary`` (mean, std, n over folds) to every method and localization entry."""
    for entry in results["methods"].values():
        entry["summary"] = {
            key: dict(
                zip(("mean", "std", "n"), mean_std([f[key] for f in entry["folds"]]), strict=True)
            )
            for key in ("sil_accuracy", "mil_accuracy", "sil_auroc", "mil_auroc")
        }
    summary: dict[str, Any] = {}
    for h, per_map in results["localization"].items():
        for name, per_fold in per_map.items():
            keys = ["pixel_auroc", "pointing_game", "dice"]
            keys += [k for k in OBJECT_KEYS if all(k in f for f in per_fold)]
            summary.setdefault(h, {})[name] = {
                key: dict(
                    zip(("mean", "std", "n"), mean_std([f[key] for f in per_fold]), strict=True)
                )
                for key in keys
            } | {"images": int(sum(f["images"] for f in per_fold))}
            if all("nuclei" in f for f in per_fold):
                summary[h][name]["nuclei"] = int(sum(f["nuclei"] for f in per_fold))
                summary[h][name]["object_images"] = int(sum(f["object_images"] for f in per_fold))
    results["localization_summary"] = summary
    return results


def _cell(stats: dict[str, Any], scale: float) -> str:
    """``mean +- sample std`` over folds (the mean alone for a single fold)."""
    return format_mean_std(stats["mean"], stats["std"], stats["n"], scale)


def format_table1(results: dict[str, Any], metric: str = "accuracy") -> str:
    """The paper's Table 1: rows SIL/MIL, columns BagNet/MILBagNet/Proposed.

    Cells are "mean +- std" over folds, in percent for accuracy (as the paper) and as
    fractions for AUROC.
    """
    if metric not in ("accuracy", "auroc"):
        raise MilsilError(f"metric must be 'accuracy' or 'auroc', got {metric!r}")
    if "summary" not in next(iter(results["methods"].values()), {}):
        results = summarize(results)
    scale = 100.0 if metric == "accuracy" else 1.0
    heads = list(results["methods"])
    names = [results["methods"][h]["name"] for h in heads]
    widths = [max(len(n), 15) for n in names]
    unit = "%" if metric == "accuracy" else "AUROC"
    lines = [
        f"Table 1: ablation, {metric} ({unit}, mean +- std over {results['folds']} folds)",
        "     " + "  ".join(n.rjust(w) for n, w in zip(names, widths, strict=True)),
    ]
    for level in ("sil", "mil"):
        cells = [
            _cell(results["methods"][h]["summary"][f"{level}_{metric}"], scale).rjust(w)
            for h, w in zip(heads, widths, strict=True)
        ]
        lines.append(f"{level.upper():<5}" + "  ".join(cells))
    return "\n".join(lines)


def format_localization_table(results: dict[str, Any], head: str | None = None) -> str:
    """Rows: logit heatmap / CAM / Grad-CAM; columns pixel AUROC, pointing game, Dice.

    ``head``: which trained model (default: the proposed one if localized, else the first).
    """
    summary = results.get("localization_summary") or summarize(results)["localization_summary"]
    if not summary:
        return "Localization: no target-class images with masks (or no model with maps)"
    if head is None:
        head = "milsil" if "milsil" in summary else next(iter(summary))
    if head not in summary:
        raise MilsilError(f"no localization results for head {head!r}; have {sorted(summary)}")
    rows = summary[head]
    images = max(v["images"] for v in rows.values())
    lines = [
        f"Localization vs malignant-nuclei masks: {METHOD_NAMES.get(head, head)} model, "
        f"{images} held-out images (mean +- std over folds)",
        f"{'':<15}{'pixel AUROC':>15}  {'pointing game':>15}  {'Dice':>15}",
    ]
    for name, v in rows.items():
        lines.append(
            f"{MAP_NAMES.get(name, name):<15}"
            + "  ".join(
                _cell(v[k], 1.0).rjust(15) for k in ("pixel_auroc", "pointing_game", "dice")
            )
        )
    return "\n".join(lines)


def format_nucleus_table(results: dict[str, Any], head: str | None = None) -> str:
    """Rows: the maps; columns nucleus AUROC (pooled), within-image AUROC, nucleus pointing
    game (:mod:`milsil.experiments.nuclei`); empty when the data has no instance masks."""
    summary = results.get("localization_summary") or summarize(results)["localization_summary"]
    if head is None and summary:
        head = "milsil" if "milsil" in summary else next(iter(summary))
    rows = summary.get(head, {}) if head else {}
    rows = {n: v for n, v in rows.items() if "object_auroc" in v}
    if not rows:
        return "Nucleus-level localization: no instance masks (instances.csv) in the data"
    first = next(iter(rows.values()))
    lines = [
        f"Nucleus-level localization: {METHOD_NAMES.get(head, head)} model, "
        f"{first.get('nuclei', 0)} nuclei in {first.get('object_images', 0)} held-out images, "
        "each scored by the map's mean over it (mean +- std over folds)",
        f"{'':<15}{'nucleus AUROC':>15}  {'within-image':>15}  {'nucleus pointing':>16}",
    ]
    for name, v in rows.items():
        cells = [_cell(v[k], 1.0).rjust(w) for k, w in zip(OBJECT_KEYS, (15, 15, 16), strict=True)]
        lines.append(f"{MAP_NAMES.get(name, name):<15}" + "  ".join(cells))
    return "\n".join(lines)
