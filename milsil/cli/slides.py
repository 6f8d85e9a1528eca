"""``milsil annotate-slide`` and ``milsil batch``: whole slides to QuPath annotations.

``python -m milsil.cli.slides SLIDES_DIR ...`` runs ``batch`` alone, which is what
``torchrun --nproc_per_node=N`` starts on every rank.

Both commands share their slide flags (:func:`add_slide_arguments`), whose defaults are
:class:`~milsil.wsi.settings.SlideSettings`' own; :func:`slide_settings` turns the parsed
flags into settings, which validate them. The work is done by
:func:`milsil.wsi.annotate.annotate_slide` and :func:`milsil.wsi.batch.run_batch`.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from milsil.cli.heatmap import add_fast_mode_arguments, fast_mode_of
from milsil.client import outlines
from milsil.wsi.outlines import OutlineSettings
from milsil.wsi.settings import SlideSettings

if TYPE_CHECKING:
    from milsil.wsi.heatmap import SlideProgress

_DEFAULTS = SlideSettings()


def slide_settings(args: argparse.Namespace) -> SlideSettings:
    """The :class:`SlideSettings` that :func:`add_slide_arguments` parsed (validated)."""
    return SlideSettings(
        stride=args.stride,
        downsample=args.downsample,
        threshold=args.threshold,
        class_name=args.class_name,
        tile=args.tile,
        tissue_only=not args.all_tiles,
        bf16=args.bf16,
        precision="tf32" if fast_mode_of(args) == "tf32" else "exact",
        outline=outline_settings(args),
        pixel_size_um=args.pixel_size or None,
        readers=args.readers,
    )


def add_slide_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by ``annotate-slide`` and ``batch``."""
    d = _DEFAULTS
    parser.add_argument("--model", required=True, help="checkpoint (.pt) of a BagNet model")
    parser.add_argument(
        "--stride",
        type=int,
        default=d.stride,
        help=f"heatmap stride in pixels (default {d.stride}; 1 = every pixel)",
    )
    parser.add_argument(
        "--downsample",
        type=float,
        default=d.downsample,
        help=f"read the slide at this downsample (default {d.downsample:g} = level 0)",
    )
    parser.add_argument(
        "--threshold",
        type=float,
        default=d.threshold,
        help=f"probability outlined as an annotation (default {d.threshold:g})",
    )
    parser.add_argument(
        "--class",
        dest="class_name",
        default=d.class_name,
        help="class to outline (default: malignant, else the last)",
    )
    parser.add_argument(
        "--tile", type=int, default=d.tile, help=f"pixels read per tile (default {d.tile})"
    )
    add_outline_arguments(parser)
    parser.add_argument(
        "--all-tiles", action="store_true", help="compute glass too (default: tissue only)"
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    add_fast_mode_arguments(parser)
    parser.add_argument(
        "--readers",
        type=int,
        default=d.readers,
        help=f"threads reading tiles ahead of the compute (default {d.readers}, from the "
        "core count, at most 8; 0 = read on the computing thread); never changes the result",
    )


def add_outline_arguments(parser: argparse.ArgumentParser) -> None:
    """The outline clean-up flags (the client's table,
    :data:`milsil.client.outlines.OUTLINE_FLAGS`), whose defaults are the measured ones
    (README, "Outline clean-up"); 0 turns a step off."""
    outlines.add_outline_arguments(parser, asdict(_DEFAULTS.outline))


def outline_settings(args: argparse.Namespace) -> OutlineSettings:
    """The :class:`OutlineSettings` that :func:`add_outline_arguments` parsed (validated)."""
    return OutlineSettings(**outlines.outline_values(args))


def _print_progress(p: SlideProgress) -> None:
    if p.stage == "heatmap":
        print(
            f"\r  tiles {p.tiles_done}/{p.tiles_total}  elapsed {p.elapsed_seconds:.0f}s  "
            f"eta {p.eta_seconds:.0f}s ",
            end="",
            file=sys.stderr,
            flush=True,
        )
    else:
        print(f"\n  {p.stage}...", file=sys.stderr, flush=True)


def _cmd_annotate(args: argparse.Namespace) -> int:
    from milsil.inference.familiarity import slide_familiarity
    from milsil.models import load_checkpoint
    from milsil.wsi.annotate import annotate_slide

    model = load_checkpoint(args.model)
    out = Path(args.output)
    print(
        f"milsil annotate-slide: {args.slide} -> {out} (stride {args.stride}, downsample {args.downsample})",
        flush=True,
    )
    res = annotate_slide(
        args.slide,
        model,
        out,
        slide_settings(args),
        tiff=args.tiff,
        device=args.device,
        keep_work=args.keep_work,
        progress=_print_progress if sys.stderr.isatty() else None,
        familiarity=True,
    )
    _, warnings = slide_familiarity(Path(args.slide).name, res.familiarity, res.tile_familiarity)
    for line in warnings:
        print(line, file=sys.stderr)
    t = res.timings
    print(
        f"done: {res.objects} {res.class_name} objects from {res.tiles_computed} tissue tiles "
        f"({res.tissue_megapixels:.1f} megapixels); read {t['read']:.1f}s (overlapping the compute; "
        f"it waited {t['wait']:.1f}s for tiles), compute {t['compute']:.1f}s, "
        f"polygons {t['polygons']:.1f}s"
        + (f", tiff {t['tiff']:.1f}s -> {res.tiff}" if res.tiff else "")
    )
    if res.outline_settings:
        print(outlines.describe_outlines({"outline_settings": res.outline_settings}))
    return 0


def _cmd_batch(args: argparse.Namespace) -> int:
    from milsil.wsi.batch import run_batch

    return run_batch(
        args.slides_dir,
        args.model,
        args.out,
        slide_settings(args),
        tiff=args.tiff,
        device=args.device,
    )


def register_annotate(subparsers: Any) -> None:
    """Add ``milsil annotate-slide``."""
    p = subparsers.add_parser(
        "annotate-slide",
        help="annotate a whole slide image: logit heatmap -> QuPath GeoJSON (+ probability TIFF)",
        description=(
            "Compute the logit heatmap of a whole slide (any format OpenSlide reads) on its "
            "tissue, tile by tile with real context around each tile (no seams), and write "
            "the regions above --threshold as QuPath GeoJSON annotations in level-0 pixels; "
            "optionally a pyramidal tiled TIFF of the probability with the slide's pixel "
            "size. Interrupted runs resume from OUT.geojson.work."
        ),
    )
    p.add_argument("slide", metavar="SLIDE", help="slide file")
    p.add_argument("-o", "--output", required=True, help="output GeoJSON")
    p.add_argument(
        "--tiff", default=None, help="also write the probability map as a pyramidal TIFF"
    )
    p.add_argument(
        "--keep-work", action="store_true", help="keep the work folder (logit map) after success"
    )
    add_slide_arguments(p)
    p.set_defaults(func=_cmd_annotate)


def register_batch(subparsers: Any) -> None:
    """Add ``milsil batch``."""
    p = subparsers.add_parser(
        "batch",
        help="annotate every slide in a folder (resumable; failures isolated; torchrun-sharded)",
        description=(
            "Annotate every slide in SLIDES_DIR like 'milsil annotate-slide', writing "
            "OUT/<slide>.geojson, OUT/<slide>.json and OUT/run.json. Finished slides are "
            "skipped on rerun; a slide that fails is listed at the end (exit 1) while the "
            "others finish. Under torchrun the slides are shared across ranks: "
            "torchrun --nproc_per_node=N -m milsil.cli.slides SLIDES_DIR --model M --out OUT."
        ),
    )
    p.add_argument("slides_dir", metavar="SLIDES_DIR", help="folder of slides")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--tiff", action="store_true", help="also write OUT/<slide>.tif probability maps"
    )
    add_slide_arguments(p)
    p.set_defaults(func=_cmd_batch)


def register_cli(subparsers: Any) -> None:
    """Add ``milsil annotate-slide`` and ``milsil batch``."""
    register_annotate(subparsers)
    register_batch(subparsers)


if __name__ == "__main__":  # torchrun --nproc_per_node=N -m milsil.cli.slides SLIDES_DIR ...
    from milsil.cli import standalone

    sys.exit(standalone(register_batch, None))
