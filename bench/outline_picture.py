#!/usr/bin/env python
"""The README's outline picture: `make demo`'s annotated images before and after the
outline clean-up, and their object counts, through a real server's Annotate.

The images are `make demo`'s last two malignant ones (``milsil synth --patients 12
--images-per-patient 6 --size 128 --seed 0``: ``p011_004`` and ``p011_005``, what
``milsil demo-server`` annotates). "Before" is what the demo asked for until the clean-up
existed (every step off, the level-0 ``min_area=4``); "after" is the server's defaults (no
outline settings sent). Each panel is drawn by :func:`milsil.cli.demo.draw_annotations`,
as ``demo_out/server/*.annotations.png`` is.

Usage::

    python bench/outline_picture.py --model demo_out/model/best.pt --out bench_out/outline_picture \
        [--picture docs/outlines_before_after.png]

``--model``: a checkpoint trained as ``make demo`` trains (``bench/outline_bench.py``'s
``OUT/model/best.pt`` will do). Prints the counts and writes ``OUT/counts.json``.
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

IMAGES = ("p011_004", "p011_005")
RAW = {"min_area": 0, "min_hole_area": 0, "smooth_sigma": 0, "merge_distance": 0, "simplify": 0}
SETTINGS = {  # label -> Annotate's keyword arguments
    "before (raw; min_area=4)": {"min_area": 4.0, "outline": RAW},
    "after (defaults)": {},
}


def write_picture(
    path: Path, panels: list[list[Image.Image]], counts: dict[str, dict[str, int]]
) -> None:
    """Rows of (image, before, after), each under a caption strip; a 64-colour PNG."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=15)
    side, gap, strip = panels[0][0].width, 6, 24
    width = 3 * side + 2 * gap
    sheet = Image.new("RGB", (width, len(panels) * (strip + side + gap)), "white")
    draw = ImageDraw.Draw(sheet)
    for r, (stem, row) in enumerate(zip(IMAGES, panels, strict=True)):
        y = r * (strip + side + gap)
        captions = [f"{stem}", *(f"{label}: {n} objects" for label, n in counts[stem].items())]
        for k, (panel, caption) in enumerate(zip(row, captions, strict=True)):
            draw.text((k * (side + gap) + 2, y + 4), caption, fill="black", font=font)
            sheet.paste(panel, (k * (side + gap), y + strip))
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.quantize(colors=64).save(path, optimize=True)
    print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KB)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="checkpoint (.pt)")
    parser.add_argument("--out", type=Path, required=True, help="work folder")
    parser.add_argument("--picture", type=Path, help="also write the figure (PNG)")
    args = parser.parse_args()

    from PIL import Image

    from milsil.atomic import write_json_atomic
    from milsil.cli.demo import draw_annotations
    from milsil.client import MilsilClient
    from milsil.data.synth import synthesize_dataset
    from tests.server_support import running_server

    data = args.out / "data"
    if not (data / "manifest.csv").is_file():
        synthesize_dataset(data, patients=12, images_per_patient=6, size=128, seed=0)
    with open(data / "manifest.csv") as f:
        paths = {Path(r["image"]).stem: data / r["image"] for r in csv.DictReader(f)}
    counts: dict[str, dict[str, int]] = {}
    panels: list[list[Image.Image]] = []
    with tempfile.TemporaryDirectory() as store, running_server(Path(store)) as server:
        client = MilsilClient(f"127.0.0.1:{server.port}", timeout=600)
        model = client.import_model(args.model, model_id="demo").name
        for stem in IMAGES:
            image = np.asarray(Image.open(paths[stem]).convert("RGB"))
            row = [Image.fromarray(image).resize((image.shape[1] * 3,) * 2, Image.NEAREST)]
            counts[stem] = {}
            for label, kwargs in SETTINGS.items():
                collection, _ = client.annotate(
                    model, image, stride=1, class_name="malignant", threshold=0.5, **kwargs
                )
                counts[stem][label] = len(collection["features"])
                small = sum(
                    f["properties"]["measurements"]["area"] < 25 for f in collection["features"]
                )
                print(f"{stem} {label}: {counts[stem][label]} objects, {small} under 25 px²")
                row.append(draw_annotations(image, collection))
            panels.append(row)
        client.close()
    write_json_atomic(args.out / "counts.json", counts)
    if args.picture:
        write_picture(args.picture, panels, counts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
