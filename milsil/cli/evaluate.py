"""``milsil evaluate``: the ablation (Table 1) and heatmap localization, or one checkpoint."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from milsil.cli.train import add_train_arguments, config_from_args, print_choices, print_epoch
from milsil.engine.config import resolve_device
from milsil.engine.provenance import write_json_atomic
from milsil.engine.validation import evaluate_model
from milsil.errors import MilsilError
from milsil.experiments.ablation import (
    METHOD_NAMES,
    ablation,
    format_localization_table,
    format_nucleus_table,
    format_table1,
)
from milsil.experiments.localization import MAP_NAMES, localization


def _instances(args: argparse.Namespace) -> dict[str, Any]:
    """The dataset's per-nucleus instance masks (``instances.csv`` beside the manifest)."""
    from milsil.data.instances import read_instance_index

    if args.no_localization:
        return {}
    index = read_instance_index(args.data)
    if index:
        print(f"  nucleus-level localization: instance masks for {len(index)} images", flush=True)
    return index


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
    print_choices(config)
    instances = _instances(args)
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
        instances=instances,
    )
    print()
    print(format_table1(results))
    print()
    print(format_table1(results, "auroc"))
    if not args.no_localization:
        print()
        print(format_localization_table(results))
        if instances:
            print()
            print(format_nucleus_table(results))
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
    result["familiarity"] = _familiarity(model, records, patch)
    if not args.no_localization:
        instances = _instances(args)
        loc = localization(
            model.to("cpu"), records, class_names, args.dice_threshold, instances=instances
        )
        result["localization"] = loc
        for name, v in loc.items():
            print(
                f"  {MAP_NAMES[name]:<14} pixel AUROC {v['pixel_auroc']:.3f}  pointing game "
                f"{v['pointing_game']:.3f}  Dice {v['dice']:.3f}  ({v['images']} images)"
            )
            if "object_auroc" in v:
                print(
                    f"  {'':<14} nucleus AUROC {v['object_auroc']:.3f}  within-image "
                    f"{v['object_auroc_within']:.3f}  nucleus pointing "
                    f"{v['object_pointing']:.3f}  ({v['nuclei']} nuclei, "
                    f"{v['object_images']} images)"
                )
    if args.out:
        path = Path(args.out) / "evaluation.json"
        write_json_atomic(path, result)
        print(f"results: {path}")
    return 0


def _familiarity(model: Any, records: list, patch: int) -> dict[str, Any] | None:
    """Each image's familiarity (its bag's windows, as the threshold was calibrated): a
    warning line per image unlike the training data; None for a model without a reference."""
    from milsil.data import load_bag, load_rgb
    from milsil.inference.familiarity import images_familiarity
    from milsil.models import model_familiarity

    reference = model_familiarity(model)
    if reference is None:
        return None
    scores = {}
    for record in records:
        whole = None if record.path.lower().endswith(".npz") else load_rgb(record.path)
        _, bag = images_familiarity(model, list(load_bag(record, patch)), source=whole)
        scores[record.path] = bag.score
        if bag.unlike_training:
            print(bag.warning(Path(record.path).name), file=sys.stderr)
    unlike = sum(score > reference.threshold for score in scores.values())
    print(f"  familiarity: {unlike} of {len(scores)} images unlike the training data")
    return {"method": reference.method, "threshold": reference.threshold, "scores": scores}


def register_cli(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="ablation (Table 1) and heatmap localization, or evaluate one checkpoint",
        description=(
            "Without --checkpoint: train BagNet (SIL loss), MILBagNet (MIL loss) and the "
            "proposed MIL-SIL model on the same patient-level folds of DATA and print the "
            "paper's Table 1 (mean +- std over folds) and a localization table (logit "
            "heatmap vs CAM vs Grad-CAM against the masks; nucleus by nucleus too when the "
            "data has instance masks, as 'milsil synth' writes). Runs resume from --out. "
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
