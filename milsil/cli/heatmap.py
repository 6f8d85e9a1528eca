"""``milsil heatmap``: logit heatmaps of images as arrays and paper-style PNG overlays."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from milsil import __version__
from milsil.atomic import atomic_write, write_json_atomic
from milsil.client.messages import precision_note
from milsil.engine.config import resolve_device
from milsil.errors import MilsilError
from milsil.inference.cam import cam, gradcam
from milsil.inference.familiarity import region_score
from milsil.inference.heatmap import iter_logit_bands
from milsil.inference.precision import EXPECTED_MAX_LOGIT_DEVIATION, fast_mode
from milsil.inference.render import comparison_figure, overlay
from milsil.models import load_checkpoint, model_familiarity, target_class_index


def contrast(logits: torch.Tensor, index: int) -> np.ndarray:
    """Evidence for one class: its logit minus the mean of the others (the 2-class logit gap).

    Raw logits share an arbitrary offset across classes; the difference is what the
    softmax sees, so 0 is a neutral pixel and the colour map is centred there.
    """
    others = torch.cat([logits[:index], logits[index + 1 :]]).mean(dim=0)
    return (logits[index] - others).numpy()


def save_png(pixels: np.ndarray, path: str) -> str:
    atomic_write(path, lambda fh: Image.fromarray(pixels).save(fh, format="PNG"))
    return path


def add_fast_mode_arguments(parser: argparse.ArgumentParser) -> None:
    """``--bf16`` and ``--tf32``, the fast modes (:mod:`milsil.inference.precision`;
    neither: exact), for ``heatmap``, ``annotate-slide`` and ``batch``."""
    cost = EXPECTED_MAX_LOGIT_DEVIATION
    parser.add_argument(
        "--bf16",
        action="store_true",
        help="fast mode: bfloat16 compute (about 2x faster on AVX-512 BF16 CPUs and GPUs; "
        f"logits within about {cost['bf16']:g} of exact, measured on an H200)",
    )
    parser.add_argument(
        "--tf32",
        action="store_true",
        help="fast mode on CUDA: TF32 convolutions and matmuls (logits within about "
        f"{cost['tf32']:g} of exact, measured on an H200); no effect on a CPU",
    )


def fast_mode_of(args: argparse.Namespace) -> str:
    """The mode :func:`add_fast_mode_arguments` parsed; a fast one is said on stderr."""
    mode = fast_mode(args.tf32, args.bf16)
    note = precision_note(mode, EXPECTED_MAX_LOGIT_DEVIATION[mode])
    if note:
        print(note, file=sys.stderr)
    return mode


def render_image(
    model,
    path: Path,
    out_dir: Path,
    stride: int,
    cls: int,
    compare: bool,
    bf16: bool,
    precision: str = "exact",
) -> dict:
    """Write ``<stem>.logits.npy``, ``<stem>.heatmap.png`` (and ``<stem>.compare.png``);
    the image's familiarity comes from the same pass (a warning line when unlike)."""
    from milsil.data import load_rgb

    image = load_rgb(path)
    start = time.perf_counter()
    known = model_familiarity(model) is not None
    *_, (_, maps) = iter_logit_bands(
        model, image, stride=stride, bf16=bf16, precision=precision, familiarity=known
    )
    classes = model.config.num_classes
    logits = maps[:classes]
    familiarity = region_score(model, maps[classes] if known else None, pixels=image)
    seconds = time.perf_counter() - start
    if familiarity is not None and familiarity.unlike_training:
        print(familiarity.warning(path.name), file=sys.stderr)
    stem = out_dir / path.stem
    outputs = [f"{stem}.logits.npy"]
    atomic_write(outputs[0], lambda fh: np.save(fh, logits.numpy()))
    if compare:
        cam_map = cam(model, image)
        grad = gradcam(model, image, cls).numpy()
        maps = [contrast(logits, cls), contrast(cam_map, cls), grad / max(float(grad.max()), 1e-6)]
        outputs.append(save_png(comparison_figure(image, maps), f"{stem}.compare.png"))
    # Written last: its presence is what marks the image done on a rerun.
    outputs.append(save_png(overlay(image, contrast(logits, cls)), f"{stem}.heatmap.png"))
    return {
        "image": str(path),
        "shape": list(logits.shape),
        "seconds": seconds,
        "outputs": outputs,
        "familiarity": familiarity and familiarity.to_dict(),  # None: the model has no reference
    }


def run(args: argparse.Namespace) -> int:
    mode = fast_mode_of(args)
    precision = "tf32" if mode == "tf32" else "exact"
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(args.device)
    print(f"loading model {args.model} on {device}")
    model = load_checkpoint(args.model, map_location=device)
    cls = target_class_index(model.class_names, args.class_name)
    print(f"drawing class {model.class_names[cls]!r} at stride {args.stride} into {out_dir}/")
    stems = [Path(p).stem for p in args.images]
    clashes = sorted({s for s in stems if stems.count(s) > 1})
    if clashes:
        raise MilsilError(
            f"several images would write the same outputs ({', '.join(clashes)}); outputs are "
            "named after the file name without extension: run them into different --out folders"
        )
    results, failures = [], []
    for i, raw in enumerate(args.images, 1):
        path = Path(raw)
        if not args.overwrite and Path(out_dir / f"{path.stem}.heatmap.png").exists():
            print(
                f"[{i}/{len(args.images)}] {path.name}: done already, skipped (--overwrite to redo)"
            )
            continue
        try:
            info = render_image(
                model, path, out_dir, args.stride, cls, args.compare, args.bf16, precision
            )
        except MilsilError as exc:
            failures.append((str(path), str(exc)))
            print(f"[{i}/{len(args.images)}] {path.name}: FAILED: {exc}", file=sys.stderr)
            continue
        results.append(info)
        print(
            f"[{i}/{len(args.images)}] {path.name}: {info['shape']} logits in {info['seconds']:.2f} s"
        )
    meta = {
        "milsil_version": __version__,
        "torch_version": torch.__version__,
        "model": str(args.model),
        "model_config": model.config.to_dict(),
        "class": model.class_names[cls],
        "stride": args.stride,
        "bf16": args.bf16,
        "precision": mode,
        "results": results,
        "failures": [{"image": p, "error": e} for p, e in failures],
    }
    write_json_atomic(out_dir / "heatmap_run.json", meta)
    if failures:
        print(f"{len(failures)} of {len(args.images)} images failed:", file=sys.stderr)
        for p, e in failures:
            print(f"  {p}: {e}", file=sys.stderr)
        return 1
    return 0


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "heatmap",
        help="per-pixel logit heatmaps of images (arrays + PNG overlays)",
        description=(
            "Compute the exact per-pixel class-logit heatmap of each IMAGE (the paper's "
            "visualisation: the logits of the receptive-field window centred on every pixel) "
            "and write <stem>.logits.npy (float32 [classes, H/stride, W/stride]) and "
            "<stem>.heatmap.png (red = evidence for the class, blue = against, over the tissue). "
            "Finished images are skipped on rerun; a failing image does not stop the others."
        ),
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help="RGB image files (PNG, JPEG, TIFF)")
    p.add_argument("--model", required=True, help="checkpoint written by milsil train")
    p.add_argument("--out", default="heatmaps", help="output folder (default: ./heatmaps)")
    p.add_argument(
        "--stride", type=int, default=1, help="1 = every pixel (default), 8 = fast preview"
    )
    p.add_argument(
        "--class", dest="class_name", help="class to draw (default: malignant, else the last)"
    )
    p.add_argument(
        "--compare",
        action="store_true",
        help="also write <stem>.compare.png: image | logit heatmap | CAM | Grad-CAM, over the tissue and alone",
    )
    add_fast_mode_arguments(p)
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    p.add_argument("--overwrite", action="store_true", help="recompute images whose outputs exist")
    p.set_defaults(func=run)
