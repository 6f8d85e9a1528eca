"""The paper's experiments end to end, printed as its Tables 1 and 2.

Protocol (Section 3 of the paper), with the readings of what it leaves open printed as
the header of the tables (:func:`readings`):

* CRC HistoPhenotypes: each 500x500 image is one bag of four 250x250 instances,
  malignant when it holds epithelial nuclei; 5-fold patient-level cross-validation, the
  patients from ``patients.csv`` (without one this refuses, as a patient on both sides of
  a split leaks, unless ``assume_slide_blocks``).
* CAMELYON16: the 111 tumour + 20 normal training slides; 500x500 level-0 patches are the
  bags (four 250x250 instances each), malignant when they overlap a tumour contour,
  100,000 of them by default (the paper: "over 100,000"); one 80/20 patient-level split (one slide = one patient),
  trained once.
* synthetic: :mod:`milsil.data.synth` images (``size`` px, bags of four ``size/2``
  instances), k-fold patient-level cross-validation; what CI runs, tiny and fast.

Methods (:data:`milsil.experiments.paper.METHODS`), all trained with the ``paper`` recipe
(:mod:`milsil.engine.recipe`): BagNet (BagNet-9, SIL loss), MILBagNet (MIL loss),
Proposed (MIL+SIL), RN-50 and DN-161 with MIL and SIL branches, all ImageNet-initialised;
attention MIL (Ilse et al.'s histology network and optimiser settings, from scratch) on
exhaustive 27x27 patches (ADMW) and on 27x27 patches centred on nuclei (ADMP; where
nuclei are annotated: CRC, and synthetic data with instance tables; N/A on CAMELYON16, as
in the paper). SIL accuracy is scored as the paper does (every instance carries its
bag's label) and, as an extra column, against each instance's own label from the masks.
Localization of the proposed model's logit heatmap, CAM and Grad-CAM is measured on the
test images. Every run lives under ``out`` and resumes (:func:`milsil.engine.loop.train_model`).
``milsil reproduce`` (:mod:`milsil.cli.reproduce`) runs it from the command line.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from milsil.errors import MilsilError
from milsil.experiments.paper import METHODS, format_localization, format_tables

__all__ = ["METHODS", "ReproduceSettings", "format_localization", "format_tables", "run"]


@dataclass
class ReproduceSettings:
    """One reproduction: the dataset, the methods, and the training recipe shared by all.

    The names are those of ``milsil reproduce``'s flags. ``None`` means the paper's
    recipe (:mod:`milsil.engine.recipe`): width 64, lr 1e-4 decayed x0.9 per epoch,
    ImageNet weights for all but attention MIL. ``pretrained``: None/``imagenet``,
    ``none`` (every model from scratch: NOT the paper), or a folder holding local copies of
    the published files under their published names.
    """

    dataset: str  # crc, camelyon16 or synthetic
    root: str  # dataset root (synthetic: written there if empty)
    out: str = "reproduce_out"
    methods: str = ",".join(m.key for m in METHODS)  # comma-separated keys
    folds: int = 5  # cross-validation folds (CRC, synthetic)
    width: int | None = None
    epochs: int = 10
    lr: float | None = None
    lr_decay: float | None = None
    batch_size: int = 8
    patch_size: int | None = None  # default: CRC/CAM16 250, synthetic size/2
    device: str = "auto"
    seed: int = 0
    pretrained: str | None = None
    no_localization: bool = False
    max_localization_images: int | None = None
    patients: int = 10  # synthetic: patients
    images: int = 6  # synthetic: images per patient
    size: int = 128  # synthetic: image side
    patients_csv: str | None = None  # CRC: image,patient table (default ROOT/patients.csv)
    assume_slide_blocks: bool = False  # CRC without a patients table: blocks of 10 images
    cam_patch: int = 500  # CAMELYON16: level-0 bag side (paper: 500)
    cam_patches: int = 100_000  # CAMELYON16: patches in all (paper: over 100,000)
    patches_per_slide: int | None = None  # CAMELYON16: default cam_patches / slides
    tumour_slides: int = 111  # CAMELYON16: tumour training slides (paper: 111)
    normal_slides: int = 20  # CAMELYON16: normal training slides (paper: 20)

    @classmethod
    def from_namespace(cls, ns: Any) -> ReproduceSettings:
        """From any object with these names as attributes (the parsed command line)."""
        return cls(**{f.name: getattr(ns, f.name) for f in fields(cls)})


def _synthetic_centres(records: list, root: Path) -> Callable[[Any], np.ndarray] | None:
    """Nucleus centres of synthetic images from their instance tables (None without)."""
    from milsil.data.instances import load_instances, read_instance_index

    try:
        index = read_instance_index(root)
    except MilsilError:
        return None
    if not all(str(Path(r.path).resolve()) in index for r in records):
        return None

    def centres(record: Any) -> np.ndarray:
        _, table = load_instances(index[str(Path(record.path).resolve())])
        # centroids in continuous coordinates (pixel (i, j) is centred on (j+0.5, i+0.5))
        return np.array([[n["x"] - 0.5, n["y"] - 0.5] for n in table]).reshape(-1, 2)

    return centres


def load_data(args: ReproduceSettings, log: Callable[[str], None]) -> dict[str, Any]:
    """Records, class names, instance size, nucleus bags (or None) and the data readings."""
    from milsil.data import read_manifest
    from milsil.experiments.public import nucleus_bags

    root, out = Path(args.root), Path(args.out)
    if args.dataset == "synthetic":
        manifest = root / "manifest.csv"
        if not manifest.is_file():
            from milsil.data.synth import synthesize_dataset

            log(
                f"writing a synthetic dataset to {root} ({args.patients} patients x "
                f"{args.images} images of {args.size} px)"
            )
            manifest = synthesize_dataset(
                root,
                patients=args.patients,
                images_per_patient=args.images,
                size=args.size,
                seed=args.seed,
            )
        records, names = read_manifest(manifest)
        patch = args.patch_size or args.size // 2
        centres = _synthetic_centres(records, manifest.parent)
        nuclei = nucleus_bags(records, centres, out / "synthetic_nuclei27") if centres else None
        notes = [
            f"synthetic: {len(records)} images from {len({r.patient for r in records})} "
            f"patients, bags of {patch}x{patch} instances on an exact grid; malignant = the "
            f"generator drew malignant nuclei; ADMP nuclei: "
            + ("the generator's instance tables" if nuclei else "none recorded (N/A)")
        ]
        return {
            "records": records,
            "names": names,
            "patch": patch,
            "nuclei": nuclei,
            "notes": notes,
        }
    if args.dataset == "crc":
        from milsil.experiments.public import crc_nuclei_bags, crc_records

        records, names, note = crc_records(
            root,
            out / "crc_cache",
            patients=args.patients_csv,
            assume_slide_blocks=args.assume_slide_blocks,
        )
        log(f"CRC: {len(records)} images, {sum(r.label for r in records)} malignant; {note}")
        patch = args.patch_size or 250
        notes = [
            f"CRC: {len(records)} images, each one bag of {patch}x{patch} instances on an "
            "exact grid (500x500 -> four); malignant = the image has epithelial nuclei (the "
            "paper: 'presence of malignant nuclei')",
            f"CRC patients: {note}",
            "ADMP nuclei: every annotated nucleus of the four classes (epithelial, "
            "fibroblast, inflammatory, others)",
        ]
        return {
            "records": records,
            "names": names,
            "patch": patch,
            "nuclei": crc_nuclei_bags(records, out / "crc_cache"),
            "notes": notes,
        }
    if args.dataset == "camelyon16":
        from milsil.experiments.public import camelyon16_records

        records, names, summary = camelyon16_records(
            root,
            out / "camelyon16_patches",
            patch=args.cam_patch,
            max_patches_per_slide=args.patches_per_slide,
            total_patches=args.cam_patches,
            tumour_slides=args.tumour_slides,
            normal_slides=args.normal_slides,
            seed=args.seed,
            log=log,
        )
        patch = args.patch_size or args.cam_patch // 2
        normal = summary["normal_slides"]
        target = summary["target_patches"]
        notes = [
            f"CAM16 slides: {len(summary['tumour_slides'])} tumour + {len(normal)} normal "
            f"training slides (the paper: 111 + 20; which 20 normal it does not say: the first "
            f"{len(normal)} by name{', ' + normal[0] + '..' + normal[-1] if normal else ''})",
            f"CAM16 patches: {args.cam_patch}x{args.cam_patch} level 0 on a grid, >= 50% tissue,"
            f" up to {summary['quota_per_slide']} per slide"
            + (f" ({target:,} in all asked; the paper: over 100,000)" if target else "")
            + f", half malignant on tumour slides where possible: {summary['patches']:,} "
            f"patches, {summary['malignant']:,} malignant",
            f"CAM16 labels: a patch is malignant when it overlaps a tumour contour by any area "
            f"(the paper's rule); each is one bag of {patch}x{patch} instances",
            "CAM16 patients: one slide = one patient (the dataset has no patient ids)",
            *[f"CAM16: {n}" for n in summary["notes"]],
        ]
        return {"records": records, "names": names, "patch": patch, "nuclei": None, "notes": notes}
    raise MilsilError(f"unknown dataset {args.dataset!r}; allowed: crc, camelyon16, synthetic")


def splits_for(dataset: str, records: list, folds: int, seed: int) -> list[tuple[list, list]]:
    """CRC/synthetic: k-fold patient-level CV; CAMELYON16: one 80/20 patient-level split."""
    from milsil.data import patient_kfold, patient_split

    if dataset == "camelyon16":
        return [patient_split(records, 0.2, seed)]
    return patient_kfold(records, k=folds, seed=seed)


def pretrained_for(arch: str, spec: str | None) -> str | None:
    """The ``pretrained`` value of one method's run (a folder: its published file)."""
    if arch.startswith("admil"):
        return "none"
    if spec in (None, "imagenet", "none"):
        return spec
    folder = Path(spec)
    if not folder.is_dir():
        raise MilsilError(
            f"--pretrained for reproduce is 'imagenet', 'none' or a FOLDER of local copies of "
            f"the published files (it trains several architectures); {spec} is not a folder"
        )
    from milsil.models.pretrained import source_for

    path = folder / source_for(arch).filename
    if not path.is_file():
        raise MilsilError(f"{folder} has no {path.name} (the published {arch} ImageNet weights)")
    return str(path)


def check_weights(archs: list[str], args: ReproduceSettings) -> None:
    """Before any data is prepared: every method's settings are valid and its ImageNet
    weights are at hand (cached, or downloadable: else one line naming the way out)."""
    from milsil.engine.config import TrainConfig
    from milsil.models.pretrained import probe

    for arch in dict.fromkeys(archs):
        cfg = TrainConfig(
            recipe="paper",
            arch=arch,
            width=args.width,
            pretrained=pretrained_for(arch, args.pretrained),
        )
        if cfg.pretrained == "imagenet":
            probe(arch)


def admil_steps(images: int, splits: int, args: ReproduceSettings) -> int:
    """Optimiser steps of one training run: training bags per split (all but the held-out
    fold, or 80% for one split) over the batch size, rounded up, times the epochs."""
    train = images * (splits - 1) // splits if splits > 1 else int(images * 0.8)
    return -(-train // args.batch_size) * args.epochs


def readings(args: ReproduceSettings, data: dict[str, Any], splits: int) -> list[str]:
    """Every reading of what the paper leaves open, in words (the tables' header)."""
    from milsil.engine.config import TrainConfig

    spec = args.pretrained
    cfg = TrainConfig(  # the settings every method shares (the paper's recipe)
        recipe="paper",
        width=args.width,
        lr=args.lr,
        lr_decay=args.lr_decay,
        epochs=args.epochs,
        pretrained="none" if spec == "none" else None,
    )
    init = (
        "every model FROM SCRATCH (--pretrained none; NOT the paper, which uses ImageNet "
        "weights): He-normal init, the reference BagNet's stem BatchNorm momentum 0.001"
        if spec == "none"
        else "ImageNet weights for all but ADMIL (BagNet: the official release, structure "
        "checked; ResNet-50/DenseNet-161: torchvision IMAGENET1K_V1, sha256 checked)"
        + ("" if spec in (None, "imagenet") else f", local copies from {spec}")
        + "; the reference BagNet's stem BatchNorm momentum 0.001"
    )
    protocol = (
        "one 80/20 patient-level split, trained once"
        if args.dataset == "camelyon16"
        else f"{splits}-fold patient-level cross-validation, each fold tested once (the "
        "paper: 5 folds, 80/20)"
    )
    return [
        *data["notes"],
        f"protocol: {protocol}; seed {args.seed}",
        f"initialisation: {init}",
        f"width {cfg.width} (64 = the published ResNet-50 widths)",
        f"optimiser: Adam lr {cfg.lr:g}, decayed x{cfg.lr_decay:g} per epoch (the paper: "
        f"'decaying', no factor), {args.epochs} epoch(s), batches of {args.batch_size} bags "
        "(the paper gives neither); flips and 90-degree rotations (not in the paper)",
        "model tested: the last epoch (the paper names no validation split); input "
        "normalised with the ImageNet mean/std; a bag's class is the arg-max of its logits",
        "ADMIL (ADMW, ADMP): Ilse et al.'s histology network (conv 4x4-36, pool, conv 3x3-48, "
        "pool, fc 512 + dropout, fc 512 + dropout, attention 128; dropout 0.5: not stated by "
        "them), Adam lr as above, betas (0.9, 0.999), weight decay 5e-4, from scratch; a "
        "softmax over both classes for their single sigmoid",
        f"ADMIL training length (ours, NOT Ilse et al.'s): like every method here, "
        f"{args.epochs} epoch(s) in batches of {args.batch_size} bags, about "
        f"{admil_steps(len(data['records']), splits, args)} optimiser steps per split, the "
        "last epoch tested; Ilse et al. trained one bag per step with early stopping on a "
        "validation split",
        "ADMW: the exhaustive grid of 27x27 patches (the remainder at right/bottom dropped); "
        "ADMP: 27x27 patches centred on every annotated nucleus",
        "SIL accuracy: every instance against its bag's label (the paper); SIL*: against the "
        "instance's own label from the masks (malignant where it holds annotated malignant "
        "pixels; ours)",
        "+-: sample standard deviation (n - 1) over folds, as the paper's 98.00 +- 2.74 = "
        "{100, 100, 95, 100, 95}",
    ]


def run(args: ReproduceSettings, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train and test every method on every split; returns (and writes) the results."""
    from milsil.engine.config import TrainConfig, resolve_device
    from milsil.engine.loop import train_model
    from milsil.engine.provenance import write_json_atomic
    from milsil.engine.validation import evaluate_model
    from milsil.experiments.localization import localization
    from milsil.models import load_checkpoint

    keys = [k.strip() for k in args.methods.split(",") if k.strip()]
    by_key = {m.key: m for m in METHODS}
    unknown = [k for k in keys if k not in by_key]
    if unknown:
        raise MilsilError(f"unknown method(s) {unknown}; allowed: {', '.join(by_key)}")
    check_weights([by_key[k].arch for k in keys], args)
    data = load_data(args, log)
    records, names = data["records"], data["names"]
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
        "readings": readings(args, data, len(splits)),
        "methods": {k: {"name": by_key[k].name, "folds": []} for k in keys},
        "localization": [],
    }
    log("Readings of what the paper leaves open (ours):")
    for line in results["readings"]:
        log(f"  - {line}")
    start = time.monotonic()
    device = resolve_device(args.device)
    for s, (train, test) in enumerate(splits):
        for key in keys:
            m = by_key[key]
            patch = data["patch"] if m.patch == "bag" else 27
            tr, te = train, test
            if m.patch == "nuclei":
                if not nuclei_of:
                    continue  # N/A: no nucleus annotations (CAMELYON16)
                tr = [nuclei_of[r.path] for r in train]
                te = [nuclei_of[r.path] for r in test]
            cfg = TrainConfig(
                recipe="paper",
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
                pretrained=pretrained_for(m.arch, args.pretrained),
            )
            run_dir = out / "runs" / f"split{s}" / key
            log(
                f"[split {s + 1}/{len(splits)}] {m.name}: {m.arch} head {m.head}, patch {patch}, "
                f"{len(tr)} train / {len(te)} test bags, init {cfg.pretrained}"
            )
            res = train_model(cfg, tr, [], names, run_dir)
            model = load_checkpoint(res.best_checkpoint).to(device)
            own = m.patch == "bag"  # instances of the bag grid, with masks (ADMIL: no SIL)
            metrics = evaluate_model(model, te, patch, device, args.batch_size, own_labels=own)
            metrics["split"] = s
            results["methods"][key]["folds"].append(metrics)
            log(
                f"    MIL acc {metrics['mil_accuracy']:.3f}  SIL acc {metrics['sil_accuracy']:.3f}"
                f"  SIL* acc {metrics.get('sil_accuracy_own', float('nan')):.3f}"
                f"  [{time.monotonic() - start:.0f}s]"
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
