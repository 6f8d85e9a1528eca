"""``milsil train`` and ``milsil train-ddp``: one run of :func:`milsil.engine.loop.train_model`.

``train-ddp`` is the same training, data-parallel across the processes ``torchrun`` starts
(NCCL on GPUs, Gloo on CPUs)::

    torchrun --nproc_per_node=N -m milsil.cli train-ddp DATA --out RUN

The training flags (:func:`add_train_arguments`) are shared with ``milsil evaluate``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

from milsil.distributed import finish, init_distributed
from milsil.engine.config import TrainConfig, resolve_device
from milsil.engine.loop import TrainProgress, train_model
from milsil.engine.provenance import data_summary
from milsil.engine.recipe import RECIPES
from milsil.errors import MilsilError
from milsil.models import HEADS, list_models, read_checkpoint
from milsil.models.stain import STAIN_CHOICES


def add_train_arguments(
    parser: argparse.ArgumentParser, defaults: TrainConfig | None = None
) -> None:
    """The training flags, shared by ``milsil train`` and ``milsil evaluate``."""
    d = defaults or TrainConfig()
    parser.add_argument("--arch", default=d.arch, choices=list_models(), help="model architecture")
    parser.add_argument(
        "--head", default=d.head, choices=HEADS, help="training loss (default %(default)s)"
    )
    parser.add_argument(
        "--recipe",
        default=d.recipe,
        choices=RECIPES,
        help="what open settings become: 'default' (learns on a CPU, offline) or 'paper' "
        "(the paper's recipe where it is specific: ImageNet init, Adam lr 1e-4 decaying; our "
        "readings named: width 64, decay x0.9/epoch); default %(default)s",
    )
    parser.add_argument(
        "--pretrained",
        default=None,
        metavar="imagenet|FILE|none",
        help="initialisation: the published ImageNet weights (downloaded once into the "
        "torch hub cache; ResNet-50/DenseNet-161 sha256 checked, BagNet only structure "
        "checked: no hash is published), a local copy of them, or none (default: the recipe's)",
    )
    parser.add_argument(
        "--width", type=int, default=None, help="channel width (64 = published; default: recipe's)"
    )
    parser.add_argument("--epochs", type=int, default=d.epochs)
    parser.add_argument(
        "--lr", type=float, default=None, help="Adam learning rate (default: the recipe's)"
    )
    parser.add_argument(
        "--lr-decay", type=float, default=None, help="lr factor per epoch (default: the recipe's)"
    )
    parser.add_argument("--batch-size", type=int, default=d.batch_size, help="bags per batch")
    parser.add_argument(
        "--weight-decay", type=float, default=None, help="Adam weight decay (default: recipe's)"
    )
    parser.add_argument(
        "--patch-size", type=int, default=d.patch_size, help="bag patch side in pixels"
    )
    parser.add_argument("--no-augment", action="store_true", help="no flips/rotations")
    parser.add_argument(
        "--color-jitter", type=float, default=d.color_jitter, help="H&E stain jitter strength 0-1"
    )
    parser.add_argument(
        "--stain-normalize",
        default=d.stain_normalize,
        choices=STAIN_CHOICES,
        help="map every input onto a stain target fitted on the training images (torchstain; "
        "it travels in the checkpoint and inference applies it); default %(default)s",
    )
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--device", default=d.device, help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--num-workers", type=int, default=d.num_workers, help="DataLoader workers")
    parser.add_argument("--no-amp", action="store_true", help="no mixed precision on CUDA")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        arch=args.arch,
        head=args.head,
        width=args.width,
        epochs=args.epochs,
        lr=args.lr,
        lr_decay=args.lr_decay,
        batch_size=args.batch_size,
        weight_decay=args.weight_decay,
        patch_size=args.patch_size,
        augment=not args.no_augment,
        color_jitter=args.color_jitter,
        stain_normalize=args.stain_normalize,
        seed=args.seed,
        device=args.device,
        num_workers=args.num_workers,
        amp=not args.no_amp,
        pretrained=args.pretrained,
        recipe=args.recipe,
    )


def print_choices(config: TrainConfig, say: Any = print) -> None:
    """Print what the recipe chose for every open setting, and why."""
    for line in config.explain():
        say(f"  {line}", flush=True)


def print_epoch(p: TrainProgress, label: str = "") -> None:
    """A CLI progress callback: one line per epoch (the tqdm bar, on a terminal, does steps)."""
    if p.event != "epoch":
        return
    val = ""
    if not math.isnan(p.val_mil_accuracy):
        val = (
            f"  val: MIL acc {p.val_mil_accuracy:.3f} AUROC {p.val_mil_auroc:.3f}"
            f" SIL acc {p.val_sil_accuracy:.3f}"
        )
    print(
        f"{label}epoch {p.epoch}/{p.epochs}  loss {p.loss:.4f}  MIL acc {p.mil_accuracy:.3f}"
        f"  SIL acc {p.sil_accuracy:.3f}{val}  ({p.bags_per_second:.1f} bags/s,"
        f" {p.elapsed_seconds:.0f}s, eta {p.eta_seconds:.0f}s)",
        flush=True,
    )


def _cmd_train(args: argparse.Namespace) -> int:
    from milsil.data import load_dataset, patient_split

    config = config_from_args(args)
    records, class_names = load_dataset(args.data)
    if not 0.0 <= args.val_fraction < 1.0:
        raise MilsilError(f"--val-fraction must be in [0, 1), got {args.val_fraction}")
    if args.val_fraction > 0:
        train, val = patient_split(records, test_fraction=args.val_fraction, seed=config.seed)
    else:
        train, val = list(records), []
    out = Path(args.out)
    device = resolve_device(config.device)
    ts, vs = data_summary(train, class_names), data_summary(val, class_names)
    print(
        f"milsil train: {args.data}: {len(records)} bags, classes {', '.join(class_names)}\n"
        f"  train {ts['bags']} bags / {ts['patients']} patients {ts['class_counts']}; "
        f"validation {vs['bags']} bags / {vs['patients']} patients {vs['class_counts']}\n"
        f"  {config.arch} width {config.width} head {config.head}, {config.epochs} epochs, "
        f"lr {config.lr:g} (x{config.lr_decay:g}/epoch), batch {config.batch_size}, "
        f"patch {config.patch_size}, seed {config.seed}, device {device}\n"
        f"  output: {out}",
        flush=True,
    )
    print_choices(config)
    if (out / "last.pt").exists() and not args.no_resume:
        state = read_checkpoint(out / "last.pt").get("training_state") or {}
        done, step = int(state.get("epoch", 0)), int(state.get("step", 0))
        if done >= config.epochs and step == 0:
            print(
                f"  {out} already holds a finished run ({done} epochs): nothing to train",
                flush=True,
            )
        else:
            where = f"epoch {done + 1}" + (f", step {step + 1}" if step else "")
            print(f"  resuming the run in {out} at {where} (--no-resume starts over)", flush=True)
    result = train_model(
        config,
        train,
        val,
        class_names,
        out,
        progress=print_epoch,
        resume=not args.no_resume,
    )
    best = next((h for h in result.history if h["epoch"] == result.best_epoch), {})
    acc = best.get("val_mil_accuracy")
    what = f"val MIL accuracy {acc:.3f}" if acc is not None else "no validation set: last epoch"
    print(
        f"milsil train: {'stopped' if result.stopped else 'finished'} after "
        f"{len(result.history)}/{config.epochs} epochs; best epoch {result.best_epoch} ({what})\n"
        f"  best: {result.best_checkpoint}\n  last: {result.last_checkpoint}\n"
        f"  log:  {out / 'log.jsonl'}",
        flush=True,
    )
    familiarity = json.loads((out / "run.json").read_text()).get("familiarity")
    if familiarity:  # milsil.engine.familiarity: what the answers' scores are judged by
        print(familiarity_summary(familiarity))
    return 0


def familiarity_summary(familiarity: dict) -> str:
    """What ``run.json``'s familiarity entry says, for the end of ``milsil train``: the
    threshold, what it was calibrated on and the patient-level bound on a new patient's
    false alarms (:func:`milsil.models.familiarity.patient_threshold`), and a second line
    when the bound could not reach the goal."""
    cal = familiarity["calibration"]
    patients = cal.get("calibration_patients", cal["patients"])
    judged = "held-out" if cal.get("held_out") else "training"
    line = (
        f"  familiarity: {familiarity['method']}, threshold {familiarity['threshold']:.3g} "
        f"(calibrated on {cal.get('calibration_images', cal['images'])} images of {patients} "
        f"patient{'' if patients == 1 else 's'}: {cal['split']}{' and training' if cal.get('held_out') else ''}; "
        f"{cal['false_alarm_rate']:.1%} of the {judged} images above it"
    )
    bound, target = cal.get("new_patient_bound"), cal["target_false_alarm_rate"]
    if bound is None:
        return line + ")"
    line += f"; patient-level bound {bound:.1%})"
    if bound > target + 1e-9:  # no room for a feature alarm under the goal
        needed = math.ceil(1 / target - 1 - 1e-9)
        why = (
            f"{patients} patients are too few to bound a new patient's false alarms by "
            f"{target:.0%} ({needed} or more are needed)"
            if patients < needed
            else f"the appearance part's alarms on them already fill the {target:.0%} bound"
        )
        line += (
            f"\n  familiarity: {why}: no calibration image's feature part is above the threshold"
        )
    return line


def _cmd_train_ddp(args: argparse.Namespace) -> int:
    from milsil.data import load_dataset

    config = config_from_args(args)
    ctx = init_distributed(config.device)
    try:
        records, names = load_dataset(args.data)
        out = Path(args.out)
        say = print if ctx.is_main else (lambda *_a, **_k: None)
        start = 0
        if (out / "last.pt").is_file():
            state = read_checkpoint(out / "last.pt").get("training_state") or {}
            start = int(state.get("epoch", 0))
        clock: list[float] = []

        def epoch_line(p: TrainProgress) -> None:
            if not clock:  # the first event: the run's settings and data were accepted
                say(
                    f"DDP training: {ctx.world_size} process(es), backend "
                    f"{ctx.backend or 'none'}, epochs {start + 1}..{config.epochs}",
                    flush=True,
                )
                print_choices(config, say)
                clock.append(started)
            if p.event == "epoch":
                now = time.monotonic()
                say(f"  epoch {p.epoch}/{p.epochs}: loss {p.loss:.4f} ({now - clock[0]:.1f}s)")
                clock[0] = now

        started = time.monotonic()

        result = train_model(config, records, [], names, out, progress=epoch_line, distributed=ctx)
        say(f"checkpoint: {result.last_checkpoint}")
    finally:
        finish(ctx)
    return 0


def register_cli(subparsers: Any) -> None:
    """Add ``milsil train`` and ``milsil train-ddp``."""
    parser = subparsers.add_parser(
        "train",
        help="train a MIL-SIL model on a dataset",
        description=(
            "Train a model on DATA (a manifest CSV, a folder with manifest.csv, or a folder of "
            "<class>/*.png). A patient-level validation split picks best.pt (highest bag "
            "accuracy). Checkpoints are written every epoch; running again with the same --out "
            "resumes, or does nothing if the run had finished."
        ),
    )
    parser.add_argument("data", help="dataset: manifest CSV or folder")
    parser.add_argument("--out", required=True, help="output folder (checkpoints, logs)")
    add_train_arguments(parser)
    parser.add_argument(
        "--val-fraction",
        type=float,
        default=0.2,
        help="fraction of patients held out for validation (0 = none; best = last)",
    )
    parser.add_argument(
        "--no-resume", action="store_true", help="start over even if --out has a run"
    )
    parser.set_defaults(func=_cmd_train)

    ddp = subparsers.add_parser(
        "train-ddp",
        help="data-parallel training under torchrun (multi-GPU, multi-node, or CPU/Gloo)",
        description=(
            "Train like 'milsil train', data-parallel across the processes torchrun starts "
            "(NCCL on GPUs, Gloo on CPUs): torchrun --nproc_per_node=N -m milsil.cli train-ddp "
            "DATA --out RUN. Rank 0 writes RUN/last.pt and RUN/run.json; reruns resume."
        ),
    )
    ddp.add_argument("data", help="dataset: manifest CSV or folder")
    ddp.add_argument("--out", required=True, help="run folder")
    add_train_arguments(ddp)
    ddp.set_defaults(func=_cmd_train_ddp)
