"""The paper's experiments end to end, printed as its Tables 1 and 2.

Protocol (Section 3 of the paper):

* CRC HistoPhenotypes: each 500x500 image is one bag of four 250x250 patches; 5-fold
  patient-level cross-validation; cells are mean +- std over folds.
* CAMELYON16: 500x500 level-0 patches are the bags (four 250x250 patches each), labelled
  malignant when they overlap a tumour contour; one 80/20 patient-level split, trained once.
* synthetic: :mod:`milsil.data.synth` images (``size`` px, bags of four ``size/2`` patches),
  5-fold patient-level cross-validation; what CI runs, tiny and fast.

Methods: BagNet (BagNet-9, SIL loss), MILBagNet (MIL loss), Proposed (MIL+SIL), RN-50
and DN-161 with MIL and SIL branches, attention MIL on exhaustive 27x27 patches (ADMW)
and on nucleus-centred 27x27 patches (ADMP; CRC only, where nuclei are annotated: N/A
elsewhere, as in the paper). Localization of the logit heatmap, CAM and Grad-CAM of the
proposed model against the nuclei/contour masks is measured on the test images.
Every run lives under ``out`` and resumes (:func:`milsil.engine.loop.train_model`).
``milsil reproduce`` (:mod:`milsil.cli.reproduce`) runs it from the command line.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from milsil.errors import MilsilError


@dataclass(frozen=True)
class Method:
    key: str
    name: str
    arch: str
    head: str
    patch: str = "bag"  # "bag": the dataset's patch size; "27": exhaustive 27x27; "nuclei"


METHODS = (
    Method("bagnet", "BagNet", "bagnet9", "sil"),
    Method("milbagnet", "MILBagNet", "bagnet9", "mil"),
    Method("proposed", "Proposed", "bagnet9", "milsil"),
    Method("rn50", "RN50", "resnet50", "milsil"),
    Method("dn161", "DN161", "densenet161", "milsil"),
    Method("admw", "ADMW", "admil", "mil", "27"),
    Method("admp", "ADMP", "admil", "mil", "nuclei"),
)
TABLE1 = ("bagnet", "milbagnet", "proposed")
TABLE2 = ("admw", "admp", "rn50", "dn161", "proposed")
# The paper's numbers, printed beside ours for comparison (accuracy %).
PAPER = {
    "crc": {
        "sil": {
            "bagnet": 87.25,
            "milbagnet": 83.75,
            "proposed": 89.59,
            "rn50": 86.00,
            "dn161": 87.00,
        },
        "mil": {
            "bagnet": 92.00,
            "milbagnet": 94.00,
            "proposed": 98.00,
            "rn50": 93.00,
            "dn161": 95.00,
            "admw": 88.00,
            "admp": 91.84,
        },
    },
    "camelyon16": {
        "sil": {
            "bagnet": 82.60,
            "milbagnet": 83.37,
            "proposed": 85.35,
            "rn50": 83.76,
            "dn161": 83.34,
        },
        "mil": {
            "bagnet": 84.57,
            "milbagnet": 85.22,
            "proposed": 86.91,
            "rn50": 84.91,
            "dn161": 84.96,
            "admw": 82.75,
        },
    },
}


@dataclass
class ReproduceSettings:
    """One reproduction: the dataset, the methods, and the training recipe shared by all.

    The names are those of ``milsil reproduce``'s flags; the defaults are the paper's.
    """

    dataset: str  # crc, camelyon16 or synthetic
    root: str  # dataset root (synthetic: written there if empty)
    out: str = "reproduce_out"
    methods: str = ",".join(m.key for m in METHODS)  # comma-separated keys
    folds: int = 5  # cross-validation folds (CRC, synthetic)
    width: int = 64
    epochs: int = 10
    lr: float = 1e-4
    lr_decay: float = 0.9
    batch_size: int = 8
    patch_size: int | None = None  # default: CRC/CAM16 250, synthetic size/2
    device: str = "auto"
    seed: int = 0
    no_localization: bool = False
    max_localization_images: int | None = None
    patients: int = 10  # synthetic: patients
    images: int = 6  # synthetic: images per patient
    size: int = 128  # synthetic: image side
    patients_csv: str | None = None  # CRC: image,patient table (default ROOT/patients.csv)
    cam_patch: int = 500  # CAMELYON16: level-0 bag side (paper: 500)
    patches_per_slide: int = 100  # CAMELYON16: bags sampled per slide

    @classmethod
    def from_namespace(cls, ns: Any) -> ReproduceSettings:
        """From any object with these names as attributes (the parsed command line)."""
        return cls(**{f.name: getattr(ns, f.name) for f in fields(cls)})


def load_data(args: ReproduceSettings, log: Callable[[str], None]) -> dict[str, Any]:
    """Records, class names, the bag patch size and (CRC) nucleus bags for ``args.dataset``."""
    from milsil.data import read_manifest

    root = Path(args.root)
    out = Path(args.out)
    if args.dataset == "synthetic":
        manifest = root / "manifest.csv"
        if not manifest.is_file():
            from milsil.data.synth import synthesize_dataset

            log(
                f"writing a synthetic dataset to {root} ({args.patients} patients x {args.images} images of {args.size} px)"
            )
            manifest = synthesize_dataset(
                root,
                patients=args.patients,
                images_per_patient=args.images,
                size=args.size,
                seed=args.seed,
            )
        records, names = read_manifest(manifest)
        return {
            "records": records,
            "class_names": names,
            "patch": args.patch_size or args.size // 2,
            "nuclei": None,
        }
    if args.dataset == "crc":
        from milsil.data.public import crc_nuclei_bags, crc_records

        records, names, note = crc_records(root, out / "crc_cache", patients=args.patients_csv)
        log(f"CRC: {len(records)} images, {sum(r.label for r in records)} malignant; {note}")
        nuclei = crc_nuclei_bags(records, out / "crc_cache")
        return {
            "records": records,
            "class_names": names,
            "patch": args.patch_size or 250,
            "nuclei": nuclei,
        }
    if args.dataset == "camelyon16":
        from milsil.data.public import camelyon16_records

        records, names = camelyon16_records(
            root,
            out / "camelyon16_patches",
            patch=args.cam_patch,
            max_patches_per_slide=args.patches_per_slide,
            seed=args.seed,
            log=log,
        )
        return {
            "records": records,
            "class_names": names,
            "patch": args.patch_size or args.cam_patch // 2,
            "nuclei": None,
        }
    raise MilsilError(f"unknown dataset {args.dataset!r}; allowed: crc, camelyon16, synthetic")


def splits_for(dataset: str, records: list, folds: int, seed: int) -> list[tuple[list, list]]:
    """CRC/synthetic: k-fold patient-level CV; CAMELYON16: one 80/20 patient-level split."""
    from milsil.data import patient_kfold, patient_split

    if dataset == "camelyon16":
        return [patient_split(records, 0.2, seed)]
    return patient_kfold(records, k=folds, seed=seed)


def run(args: ReproduceSettings, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train and test every method on every split; returns (and writes) the results."""
    from milsil.engine.config import TrainConfig, resolve_device
    from milsil.engine.loop import train_model
    from milsil.engine.provenance import write_json_atomic
    from milsil.engine.validation import evaluate_model
    from milsil.experiments.localization import localization
    from milsil.models import load_checkpoint

    data = load_data(args, log)
    records, names = data["records"], data["class_names"]
    keys = [k.strip() for k in args.methods.split(",") if k.strip()]
    by_key = {m.key: m for m in METHODS}
    unknown = [k for k in keys if k not in by_key]
    if unknown:
        raise MilsilError(f"unknown method(s) {unknown}; allowed: {', '.join(by_key)}")
    splits = splits_for(args.dataset, records, args.folds, args.seed)
    nuclei_of = {}
    if data["nuclei"] is not None:
        nuclei_of = {r.path: n for r, n in zip(records, data["nuclei"], strict=True)}
    out = Path(args.out)
    results: dict[str, Any] = {
        "dataset": args.dataset,
        "splits": len(splits),
        "class_names": names,
        "protocol": "one 80/20 patient-level split"
        if args.dataset == "camelyon16"
        else f"{len(splits)}-fold patient-level cross-validation",
        "methods": {k: {"name": by_key[k].name, "folds": []} for k in keys},
        "localization": [],
    }
    start = time.monotonic()
    device = resolve_device(args.device)
    for s, (train, test) in enumerate(splits):
        for key in keys:
            m = by_key[key]
            patch = data["patch"] if m.patch == "bag" else 27
            tr, te = train, test
            if m.patch == "nuclei":
                if not nuclei_of:
                    continue  # N/A: no nucleus annotations (synthetic, CAMELYON16)
                tr = [nuclei_of[r.path] for r in train]
                te = [nuclei_of[r.path] for r in test]
            cfg = TrainConfig(
                arch=m.arch,
                head=m.head,
                width=args.width,
                epochs=args.epochs,
                lr=args.lr,
                lr_decay=args.lr_decay,
                batch_size=args.batch_size,
                patch_size=patch,
                seed=args.seed,
                device=args.device,
                augment=True,
            )
            run_dir = out / "runs" / f"split{s}" / key
            log(
                f"[split {s + 1}/{len(splits)}] {m.name}: {m.arch} head {m.head}, patch {patch}, {len(tr)} train / {len(te)} test bags"
            )
            res = train_model(cfg, tr, [], names, run_dir)
            model = load_checkpoint(res.best_checkpoint).to(device)
            metrics = evaluate_model(model, te, patch, device, args.batch_size)
            metrics["split"] = s
            results["methods"][key]["folds"].append(metrics)
            log(
                f"    MIL acc {metrics['mil_accuracy']:.3f}  SIL acc {metrics['sil_accuracy']:.3f}  [{time.monotonic() - start:.0f}s]"
            )
            if key == "proposed" and not args.no_localization:
                loc = localization(
                    model.to("cpu"), test, names, max_images=args.max_localization_images
                )
                results["localization"].append(loc | {"split": s})
            write_json_atomic(out / "reproduce.json", results)
    results["elapsed_seconds"] = time.monotonic() - start
    write_json_atomic(out / "reproduce.json", results)
    return results


def _stats(values: list[float]) -> tuple[float, float, int]:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return math.nan, math.nan, 0
    mean = sum(vals) / len(vals)
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / len(vals)) if len(vals) > 1 else 0.0
    return mean, std, len(vals)


def _cell(results: dict[str, Any], key: str, level: str) -> str:
    entry = results["methods"].get(key)
    if entry is None:
        return "-"
    mean, std, n = _stats([f[f"{level}_accuracy"] for f in entry["folds"]])
    if n == 0:
        return "N/A"
    if results["splits"] == 1:
        return f"{100 * mean:.2f}"
    return f"{100 * mean:.2f} +- {100 * std:.2f}"


def _table(results: dict[str, Any], keys: tuple[str, ...], title: str) -> str:
    names = {m.key: m.name for m in METHODS}
    width = 17
    label = {"crc": "CRC", "camelyon16": "CAM16", "synthetic": "SYNTH"}[results["dataset"]]
    lines = [title, f"{'':<7}{'':<5}" + "".join(names[k].rjust(width) for k in keys)]
    for level in ("sil", "mil"):
        cells = "".join(_cell(results, k, level).rjust(width) for k in keys)
        lines.append(f"{label if level == 'sil' else '':<7}{level.upper():<5}{cells}")
    paper = PAPER.get(results["dataset"])
    if paper:
        for level in ("sil", "mil"):
            cells = "".join(
                (f"{paper[level][k]:.2f}" if k in paper[level] else "N/A").rjust(width)
                for k in keys
            )
            lines.append(f"{'paper':<7}{level.upper():<5}{cells}")
    return "\n".join(lines)


def format_tables(results: dict[str, Any]) -> str:
    """Tables 1 and 2 in the paper's layout (accuracy %, mean +- std over folds)."""
    spread = "mean +- std over folds" if results["splits"] > 1 else "one split"
    t1 = _table(
        results,
        TABLE1,
        f"Table 1: Ablative evaluation. Accuracy (%), {spread} ({results['protocol']}).",
    )
    t2 = _table(
        results,
        TABLE2,
        f"Table 2: Comparison of baselines with the proposed method. Accuracy (%), {spread}.",
    )
    return t1 + "\n\n" + t2


def format_localization(results: dict[str, Any]) -> str:
    """Heatmap localization of the proposed model against the masks (mean +- std over splits)."""
    per = results.get("localization") or []
    if not per:
        return "Localization: not measured"
    maps = [k for k in per[0] if k != "split"]
    names = {"logit": "Logit heatmap", "cam": "CAM", "gradcam": "Grad-CAM"}
    lines = [
        "Localization of the proposed model vs the malignant masks (test images, mean +- std over splits)",
        f"{'':<15}{'pixel AUROC':>17}{'pointing game':>17}{'Dice':>17}",
    ]
    for name in maps:
        cells = []
        for key in ("pixel_auroc", "pointing_game", "dice"):
            mean, std, n = _stats([p[name][key] for p in per if name in p])
            cells.append(("N/A" if n == 0 else f"{mean:.3f} +- {std:.3f}").rjust(17))
        lines.append(f"{names.get(name, name):<15}" + "".join(cells))
    return "\n".join(lines)
