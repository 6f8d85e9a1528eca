"""Evaluation: the paper's ablation (Table 1) and a quantitative heatmap comparison.

* :func:`evaluate_model` -- patch (SIL) and bag (MIL) accuracy and AUROC of one model.
* :func:`ablation` -- BagNet (SIL loss), MILBagNet (MIL loss) and the proposed MIL-SIL
  model, each trained and tested on the same patient-level folds; :func:`format_table1`
  prints the paper's Table 1 layout (mean +- std over folds).
* :func:`localization` -- how well the logit heatmap, CAM and Grad-CAM of a model point at
  the annotated malignant nuclei (pixel AUROC, pointing game, Dice). The paper shows this
  only as pictures (its Fig. 1); with synthetic data the masks are exact, so it can be
  measured. :func:`format_localization_table` prints it.

Maps compared:
  * logit heatmap -- log-odds of the target class per pixel, ``l_t - logsumexp(l_others)``
    (for two classes: the malignant-minus-benign logit difference), stride 1;
  * CAM -- the target class's classifier applied to the last feature map, upsampled;
  * Grad-CAM -- of the target class on the last feature map, upsampled.
Dice thresholds each map after min-max scaling to [0, 1], so one threshold serves all.

Scores are taken over the image's *valid* interior by default: pixels whose receptive-field
window lies inside the image (a border of ``receptive_field // 2``). Border windows of the
logit heatmap see mirrored, partly invented context (the border policy of
:mod:`milsil.inference.heatmap`), and CAM/Grad-CAM are smeared at borders by upsampling; all maps are
cropped alike to compare fairly.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from milsil.engine.loop import (
    TrainConfig,
    TrainProgress,
    add_train_arguments,
    bag_loss,
    config_from_args,
    print_epoch,
    resolve_device,
    train_model,
    write_json_atomic,
)
from milsil.engine.metrics import (
    accuracy,
    auroc,
    dice,
    mean_std,
    normalize_map,
    pixel_auroc,
    pointing_game,
)
from milsil.errors import MilsilError
from milsil.models.mil import ConfiguredModel, target_class_index

# The paper's names for the three heads (Table 1 columns).
METHOD_NAMES = {"sil": "BagNet", "mil": "MILBagNet", "milsil": "Proposed"}
MAP_NAMES = {"logit": "Logit heatmap", "cam": "CAM", "gradcam": "Grad-CAM"}


@torch.no_grad()
def predict(
    model: ConfiguredModel,
    records: Sequence[Any],
    patch_size: int,
    device: torch.device | str | None = None,
    batch_size: int = 8,
) -> dict[str, Any]:
    """Run ``model`` on every bag (no augmentation) and collect probabilities.

    Returns numpy arrays in record order: ``labels [B]``, ``mil_probs [B, C]``, and, for
    models with per-patch outputs, ``sil_probs [P, C]`` / ``sil_labels [P]`` / ``sil_bag
    [P]`` (the bag index of each patch); plus ``loss``, the model head's training loss
    averaged over bags.
    """
    from milsil.data import BagDataset, bucket_batches, collate_bags

    records = list(records)
    if not records:
        raise MilsilError("no records to evaluate")
    if device is None:
        device = next(model.parameters()).device
    device = resolve_device(device) if isinstance(device, str) else torch.device(device)
    was_training = model.training
    model.to(device).eval()
    mean, std = model.normalization
    dataset = BagDataset(records, patch_size, mean, std, augment=False)
    batches = bucket_batches(dataset.bag_sizes, batch_size, False, 0)
    use_amp = device.type == "cuda"
    c = model.config.num_classes
    labels = np.array([r.label for r in records], dtype=np.int64)
    mil_probs = np.zeros((len(records), c), dtype=np.float64)
    sil: dict[int, np.ndarray] = {}
    loss_sum = 0.0
    try:
        for batch in batches:
            bags, y = collate_bags([dataset[i] for i in batch])
            bags, y = bags.to(device), y.to(device)
            with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
                out = model(bags)
            loss, _ = bag_loss(out, y, model.head)
            loss_sum += float(loss) * len(batch)
            mil_probs[batch] = torch.softmax(out.mil_logits.float(), 1).cpu().numpy()
            if out.sil_logits is not None:
                probs = torch.softmax(out.sil_logits.float(), 2).cpu().numpy()
                for k, i in enumerate(batch):
                    sil[i] = probs[k]
    finally:
        model.train(was_training)
    result: dict[str, Any] = {
        "labels": labels,
        "mil_probs": mil_probs,
        "loss": loss_sum / len(records),
    }
    if sil:
        order = range(len(records))
        result["sil_probs"] = np.concatenate([sil[i] for i in order])
        result["sil_labels"] = np.concatenate([np.full(len(sil[i]), labels[i]) for i in order])
        result["sil_bag"] = np.concatenate([np.full(len(sil[i]), i) for i in order])
    return result


def evaluate_model(
    model: ConfiguredModel,
    records: Sequence[Any],
    patch_size: int,
    device: torch.device | str | None = None,
    batch_size: int = 8,
) -> dict[str, Any]:
    """Bag-level (MIL) and patch-level (SIL) accuracy and AUROC, and the head's loss.

    SIL metrics score every patch against its bag's label, as the paper does; they are
    ``nan`` for models without per-patch outputs (attention MIL). AUROC is ``nan`` when the
    records hold one class only.
    """
    p = predict(model, records, patch_size, device, batch_size)
    out: dict[str, Any] = {
        "loss": p["loss"],
        "mil_accuracy": accuracy(p["mil_probs"], p["labels"]),
        "mil_auroc": auroc(p["mil_probs"], p["labels"]),
        "sil_accuracy": math.nan,
        "sil_auroc": math.nan,
        "bags": len(p["labels"]),
        "patches": 0,
    }
    if "sil_probs" in p:
        out["sil_accuracy"] = accuracy(p["sil_probs"], p["sil_labels"])
        out["sil_auroc"] = auroc(p["sil_probs"], p["sil_labels"])
        out["patches"] = len(p["sil_labels"])
    return out


# --------------------------------------------------------------------------- localization


def target_class(class_names: Sequence[str]) -> int:
    """The class the masks mark (:func:`milsil.models.target_class_index`'s default)."""
    return target_class_index(class_names)


def class_log_odds(logits: torch.Tensor, target: int) -> torch.Tensor:
    """``l_t - logsumexp(l_others)`` over axis 0: for two classes the logit difference."""
    others = torch.cat([logits[:target], logits[target + 1 :]])
    return logits[target] - torch.logsumexp(others, dim=0)


def image_maps(
    model: ConfiguredModel, image: np.ndarray, target: int, maps: Sequence[str] = tuple(MAP_NAMES)
) -> dict[str, np.ndarray]:
    """The requested maps of one uint8 image, each ``H x W`` float (see module docstring)."""
    from milsil.inference.heatmap import cam, gradcam, logit_heatmap

    out: dict[str, np.ndarray] = {}
    for name in maps:
        if name == "logit":
            out[name] = class_log_odds(logit_heatmap(model, image), target).numpy()
        elif name == "cam":
            out[name] = cam(model, image)[target].numpy()
        elif name == "gradcam":
            out[name] = gradcam(model, image, target).numpy()
        else:
            raise MilsilError(f"unknown map {name!r}; allowed: {', '.join(MAP_NAMES)}")
    return out


def available_maps(model: ConfiguredModel) -> list[str]:
    """Logit heatmaps need a BagNet; CAM/Grad-CAM a conv feature map with a linear head."""
    from milsil.models.mil import MilSilNet

    if not isinstance(model, MilSilNet):
        return []
    maps = ["cam", "gradcam"]
    if model.receptive_field is not None:
        maps.insert(0, "logit")
    return maps


def localization(
    model: ConfiguredModel,
    records: Sequence[Any],
    class_names: Sequence[str],
    dice_threshold: float = 0.5,
    maps: Sequence[str] | None = None,
    max_images: int | None = None,
    border: int | None = None,
) -> dict[str, Any]:
    """Compare maps with the masks on the target-class images that have a non-empty mask.

    Returns ``{map: {"pixel_auroc", "pointing_game", "dice", "images"}}`` (means over
    images; ``pointing_game`` is the hit rate). ``border`` pixels are left out on each side
    (default: half the receptive field, see the module docstring). Bags stored as ``.npz``
    tiles are skipped: they have no image to map.
    """
    from milsil.data import load_mask, load_rgb

    target = target_class(class_names)
    maps = list(maps) if maps is not None else available_maps(model)
    if border is None:
        border = (model.receptive_field or 0) // 2
    if not isinstance(border, int) or border < 0:
        raise MilsilError(f"border must be a non-negative number of pixels, got {border!r}")
    inner = (slice(border, -border or None), slice(border, -border or None))
    per: dict[str, dict[str, list[float]]] = {
        m: {"pixel_auroc": [], "pointing_game": [], "dice": []} for m in maps
    }
    used = 0
    for r in records:
        if r.label != target or not r.mask or str(r.path).lower().endswith(".npz"):
            continue
        if max_images is not None and used >= max_images:
            break
        mask = load_mask(r.mask)
        if not mask[inner].any():
            continue
        image = load_rgb(r.path)
        if image.shape[:2] != mask.shape:
            raise MilsilError(
                f"mask {r.mask} is {mask.shape[::-1]}, image {r.path} is {image.shape[1::-1]}"
            )
        if min(mask.shape) <= 2 * border:
            raise MilsilError(f"{r.path}: a {border}-pixel border leaves no interior")
        used += 1
        mask = mask[inner]
        for name, heat in image_maps(model, image, target, maps).items():
            heat = heat[inner]
            per[name]["pixel_auroc"].append(pixel_auroc(heat, mask))
            per[name]["pointing_game"].append(float(pointing_game(heat, mask)))
            per[name]["dice"].append(dice(normalize_map(heat), mask, dice_threshold))
    return {
        m: {k: mean_std(v)[0] for k, v in vals.items()} | {"images": used}
        for m, vals in per.items()
    }


# --------------------------------------------------------------------------- ablation


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
) -> dict[str, Any]:
    """Table 1: train each head on the same patient-level folds and test on the held-out fold.

    ``config`` is the template (its ``head`` is replaced per method). No validation data is
    carved from the training folds (the test fold is never used for model selection), so
    each fold's model is its last epoch. Every run lives in ``out_dir/fold<k>/<head>`` and
    resumes, so an interrupted ablation continues where it stopped. Localization is measured
    for ``localize_heads`` (default: all heads) on the test folds' target-class images.
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
                loc = localization(model.to("cpu"), test, class_names, dice_threshold)
                for name, vals in loc.items():
                    entry = results["localization"].setdefault(h, {}).setdefault(name, [])
                    entry.append(vals | {"fold": k})
                if loc:
                    say(
                        "  localization: "
                        + "; ".join(
                            f"{MAP_NAMES[n]} AUROC {v['pixel_auroc']:.3f}" for n, v in loc.items()
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
            summary.setdefault(h, {})[name] = {
                key: dict(
                    zip(("mean", "std", "n"), mean_std([f[key] for f in per_fold]), strict=True)
                )
                for key in ("pixel_auroc", "pointing_game", "dice")
            } | {"images": int(sum(f["images"] for f in per_fold))}
    results["localization_summary"] = summary
    return results


def _cell(stats: dict[str, Any], scale: float) -> str:
    if stats["n"] == 0 or stats["mean"] is None or math.isnan(stats["mean"]):
        return "N/A"
    return f"{scale * stats['mean']:.2f} +- {scale * stats['std']:.2f}"


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


# --------------------------------------------------------------------------- CLI


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from milsil.data import load_dataset

    records, class_names = load_dataset(args.data)
    if args.checkpoint:
        return _evaluate_checkpoint(args, records, class_names)
    if not args.out:
        raise MilsilError("--out is required for the ablation (its runs and results live there)")
    config = config_from_args(args)
    heads = [h.strip() for h in args.heads.split(",") if h.strip()]
    device = resolve_device(config.device)
    print(
        f"milsil evaluate: {args.data}: {len(records)} bags, "
        f"{len({r.patient for r in records})} patients, classes {', '.join(class_names)}\n"
        f"  ablation {', '.join(METHOD_NAMES.get(h, h) for h in heads)} with {args.folds}-fold "
        f"patient-level cross-validation: {config.arch} width {config.width}, {config.epochs} "
        f"epochs, lr {config.lr:g}, batch {config.batch_size}, patch {config.patch_size}, "
        f"device {device}\n  output: {args.out}",
        flush=True,
    )
    results = ablation(
        records,
        class_names,
        folds=args.folds,
        config=config,
        out_dir=args.out,
        heads=heads,
        localize=not args.no_localization,
        dice_threshold=args.dice_threshold,
        progress=lambda p: print_epoch(p, "    "),
    )
    print()
    print(format_table1(results))
    print()
    print(format_table1(results, "auroc"))
    if not args.no_localization:
        print()
        print(format_localization_table(results))
    print(f"\nresults: {Path(args.out) / 'ablation.json'}")
    return 0


def _evaluate_checkpoint(args: argparse.Namespace, records: list, class_names: list[str]) -> int:
    from milsil.models import load_checkpoint

    model = load_checkpoint(args.checkpoint)
    if model.class_names != list(class_names):
        raise MilsilError(
            f"{args.checkpoint} was trained on classes {model.class_names}; DATA has {class_names}"
        )
    patch = args.patch_size
    prov = getattr(model, "provenance", {}) or {}
    if "config" in prov and "patch_size" in prov["config"]:
        patch = int(prov["config"]["patch_size"])
    device = resolve_device(args.device)
    print(f"milsil evaluate: {args.checkpoint} on {args.data} ({len(records)} bags, patch {patch})")
    metrics = evaluate_model(model.to(device), records, patch, device, args.batch_size)
    print(
        f"  MIL accuracy {metrics['mil_accuracy']:.4f}  AUROC {metrics['mil_auroc']:.4f}\n"
        f"  SIL accuracy {metrics['sil_accuracy']:.4f}  AUROC {metrics['sil_auroc']:.4f}"
    )
    result: dict[str, Any] = {"checkpoint": str(args.checkpoint), "metrics": metrics}
    if not args.no_localization:
        loc = localization(model.to("cpu"), records, class_names, args.dice_threshold)
        result["localization"] = loc
        for name, v in loc.items():
            print(
                f"  {MAP_NAMES[name]:<14} pixel AUROC {v['pixel_auroc']:.3f}  pointing game "
                f"{v['pointing_game']:.3f}  Dice {v['dice']:.3f}  ({v['images']} images)"
            )
    if args.out:
        path = Path(args.out) / "evaluation.json"
        write_json_atomic(path, result)
        print(f"results: {path}")
    return 0


def register_cli(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="ablation (Table 1) and heatmap localization, or evaluate one checkpoint",
        description=(
            "Without --checkpoint: train BagNet (SIL loss), MILBagNet (MIL loss) and the "
            "proposed MIL-SIL model on the same patient-level folds of DATA and print the "
            "paper's Table 1 (mean +- std over folds) and a localization table (logit "
            "heatmap vs CAM vs Grad-CAM against the masks). Runs resume from --out. "
            "With --checkpoint: evaluate that model on all of DATA."
        ),
    )
    parser.add_argument("data", help="dataset: manifest CSV or folder")
    parser.add_argument("--out", default=None, help="output folder (runs and ablation.json)")
    parser.add_argument("--folds", type=int, default=5, help="cross-validation folds")
    parser.add_argument(
        "--heads", default="sil,mil,milsil", help="comma-separated heads to compare"
    )
    parser.add_argument("--checkpoint", default=None, help="evaluate this checkpoint instead")
    parser.add_argument("--no-localization", action="store_true", help="skip the heatmap table")
    parser.add_argument("--dice-threshold", type=float, default=0.5, help="on min-max scaled maps")
    add_train_arguments(parser)
    parser.set_defaults(func=_cmd_evaluate)
