"""``milsil measure-objects``: score every cell (or any object) of an image by its logits.

Reads QuPath GeoJSON objects (a FeatureCollection or a list of features, level-0 pixel
coordinates: what QuPath's "Export objects as GeoJSON" writes), measures each on the
stride-1 logit heatmap of the image (:mod:`milsil.inference.objects` defines exactly how)
and writes the same features, same order, ids and geometry, with ``milsil mean logit(c)``,
``milsil max logit(c)``, ``milsil p(c)`` and ``milsil pixels`` added to
``properties.measurements``: a file QuPath imports back onto the image.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from milsil.atomic import write_json_atomic
from milsil.client.objects import ROI_CHOICES, add_measurements, object_geometry, read_features
from milsil.engine.config import resolve_device
from milsil.models import load_checkpoint


def run(args: argparse.Namespace) -> int:
    from milsil.wsi.objects import measure_image_file_objects, open_image

    doc, features = read_features(args.objects)
    geometries = [object_geometry(f, i, args.roi) for i, f in enumerate(features)]
    device = resolve_device(args.device)
    print(f"loading model {args.model} on {device}")
    model = load_checkpoint(args.model, map_location=device)
    started = time.perf_counter()
    with open_image(args.image) as image:
        print(
            f"measuring {len(features):,} objects on {Path(args.image).name} at downsample "
            f"{args.downsample:g} ({args.roi} ROI where a cell has one)"
        )

        def progress(done: int, rows: int) -> None:
            print(f"  {done / rows:4.0%} of the region ({done:,}/{rows:,} rows)", flush=True)

        result = measure_image_file_objects(
            model,
            image,
            geometries,
            downsample=args.downsample,
            ids=range(len(geometries)),
            device=device,
            progress=progress,
        )
    seconds = time.perf_counter() - started
    outside = add_measurements(features, result.measurements(model.class_names))
    write_json_atomic(args.output, doc)
    held = int((result.pixels > 0).sum())
    print(
        f"wrote {args.output}: {len(features):,} objects ({held:,} holding pixel centres, "
        f"{len(features) - held - outside:,} measured at their centroid"
        + (f", {outside:,} outside the image: not measured" if outside else "")
        + f") in {seconds:.1f} s"
    )
    return 0


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "measure-objects",
        help="per-cell (per-object) mean/max logit and probability, as QuPath GeoJSON",
        description=(
            "Measure every object of a QuPath GeoJSON file (cells, nuclei, annotations: "
            "polygons in level-0 pixels) on the stride-1 logit heatmap of IMAGE: for each "
            "class c, 'milsil mean logit(c)' (the mean over the pixels whose centres lie "
            "inside; the MIL logit of the bag of windows centred in the object), 'milsil max "
            "logit(c)', 'milsil p(c)' (softmax of the mean logits) and 'milsil pixels'. "
            "Writes the same features with these added to properties.measurements; import "
            "the file back in QuPath (File > Import objects)."
        ),
    )
    p.add_argument("image", metavar="IMAGE", help="a whole slide (OpenSlide) or an image file")
    p.add_argument("--model", required=True, help="checkpoint written by milsil train")
    p.add_argument("--objects", required=True, metavar="IN.geojson", help="QuPath GeoJSON")
    p.add_argument("-o", "--output", required=True, metavar="OUT.geojson", help="written file")
    p.add_argument(
        "--downsample",
        type=float,
        default=1.0,
        help="level-0 pixels per model pixel: the scale the model was trained at (default 1)",
    )
    p.add_argument(
        "--roi",
        choices=ROI_CHOICES,
        default="nucleus",
        help="for cells: measure the nucleus (default) or the whole cell boundary",
    )
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    p.set_defaults(func=run)
