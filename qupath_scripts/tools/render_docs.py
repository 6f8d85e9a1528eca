"""Render the README's picture of what the QuPath scripts produce.

Runs heatmap_to_annotations.groovy (outlines, and probability tiles) and tma_batch.groovy
through the same QuPath stand-ins and Groovy runner as the tests, against a local server
with the tiny untrained test model, then draws the resulting QuPath objects over the
synthetic images. The shapes show the mechanics (children clipped to their parent,
measurement-map tiles, classified cores), not pathology: the model is untrained.

Usage: .venv/bin/python qupath_scripts/tools/render_docs.py [--runtime groovy4|groovy2.4]
Writes qupath_scripts/docs/scripts_result.png.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import PathPatch  # noqa: E402
from matplotlib.path import Path as MplPath  # noqa: E402
from PIL import Image  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent.parent))

import groovy_env  # noqa: E402

from milsil.data.synth import synth_image  # noqa: E402
from milsil.inference.heatmap import logit_heatmap, probabilities  # noqa: E402
from tests.server_support import register_tiny_model, running_server  # noqa: E402

ROI1 = [[20, 20], [150, 30], [170, 160], [40, 140]]
CORES = [("A-1", 20, 20, 100, 100), ("A-2", 136, 20, 100, 100), ("B-1", 20, 136, 100, 100)]


def _patch(obj: dict, **style) -> PathPatch:
    verts, codes = [], []
    for ring in obj["rings"]:
        verts += [*ring, ring[0]]
        codes += [MplPath.MOVETO] + [MplPath.LINETO] * (len(ring) - 1) + [MplPath.CLOSEPOLY]
    return PathPatch(MplPath(verts, codes), **style)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runtime", default="groovy4", choices=sorted(groovy_env.RUNTIMES))
    parser.add_argument("--out", type=Path, default=HERE.parent / "docs" / "scripts_result.png")
    parser.add_argument(
        "--checkpoint",
        type=Path,
        help="a trained model (e.g. demo_out/model/best.pt from `make demo`); default: the "
        "untrained tiny test model",
    )
    args = parser.parse_args()
    runtime = groovy_env.RUNTIMES[args.runtime]()
    work = Path(tempfile.mkdtemp(prefix="milsil_docs_"))
    slide, _ = synth_image(np.random.default_rng(1), 192, True)
    tma, _ = synth_image(np.random.default_rng(2), 256, True)
    Image.fromarray(slide).save(work / "slide.png")
    Image.fromarray(tma).save(work / "tma.png")
    stubs = groovy_env.compile_stubs(work / "stubs")
    with running_server(work / "server", token="docs") as server:
        if args.checkpoint is None:
            model = register_tiny_model(server)
        else:
            from milsil.models import load_checkpoint

            server.store.register_model(args.checkpoint, "tiny", display_name="trained")
            model = load_checkpoint(args.checkpoint)
        prob = probabilities(logit_heatmap(model, slide, stride=2))[1].numpy()
        props = {
            "milsil.server": f"127.0.0.1:{server.port}",
            "milsil.token": "docs",
            "milsil.model": "tiny",
            "milsil.stride": "4",
            "milsil.threshold": repr(0.5 if args.checkpoint else float(np.quantile(prob, 0.7))),
            "milsil.simplify": "0.25",  # of a 4-px sample: 1 px
            "milsil.minAreaMicrons": "15",  # 60 px² at the stand-in's 0.5 µm/px
        }
        scripts = HERE.parent
        spec = {
            "out": str(work / "out"),
            "project_dir": str(work / "project"),
            "images": [
                {
                    "name": "slide.png",
                    "path": str(work / "slide.png"),
                    "objects": [
                        {
                            "kind": "annotation",
                            "shape": "polygon",
                            "coords": ROI1,
                            "name": "roi1",
                            "class": "Region*",
                            "selected": True,
                        }
                    ],
                },
                {"name": "slide_tiles.png", "path": str(work / "slide.png")},
                {
                    "name": "tma.png",
                    "path": str(work / "tma.png"),
                    "objects": [
                        {"kind": "tma", "name": n, "coords": [x, y, w, h], "missing": n == "B-1"}
                        for n, x, y, w, h in CORES
                    ],
                },
            ],
            "runs": [
                {
                    "id": "heat",
                    "script": str(scripts / "heatmap_to_annotations.groovy"),
                    "image": 0,
                    "properties": props,
                },
                {
                    "id": "tiles",
                    "script": str(scripts / "heatmap_to_annotations.groovy"),
                    "image": 1,
                    "select": [],
                    "properties": dict(
                        props,
                        **{
                            "milsil.addTiles": "true",
                            "milsil.tileStride": "8",
                            "milsil.threshold": "1.0",
                        },
                    ),
                },
                {
                    "id": "tma",
                    "script": str(scripts / "tma_batch.groovy"),
                    "image": 2,
                    "properties": dict(props, **{"milsil.csvPath": str(work / "tma.csv")}),
                },
            ],
        }
        (work / "spec.json").write_text(json.dumps(spec))
        result = runtime.run(
            scripts / "tests" / "run_qupath.groovy", [str(work / "spec.json")], extra_cp=[stubs]
        )
        if result.returncode != 0:
            print(result.stdout, result.stderr, file=sys.stderr)
            return 1
    state = json.loads((work / "out" / "tma.state.json").read_text())
    logs = {r["id"]: (work / "out" / f"{r['id']}.log").read_text().strip() for r in spec["runs"]}
    by_image = {s["image"]: s["objects"] for s in state}

    fig, axes = plt.subplots(1, 3, figsize=(10.5, 4.1), dpi=80)
    ax = axes[0]
    ax.imshow(slide)
    for parent in by_image["slide.png"]:
        ax.add_patch(_patch(parent, fill=False, ec="yellow", lw=2))
        for child in parent["children"]:
            ax.add_patch(_patch(child, fc=(0.78, 0, 0, 0.45), ec=(0.78, 0, 0), lw=1))
    ax.set_title(
        "heatmap_to_annotations:\nmalignant outlines, children of the annotation", fontsize=9
    )
    ax = axes[1]
    ax.imshow(slide)
    tiles = [o for o in by_image["slide_tiles.png"] if o["type"] == "tile"]
    values = [t["measurements"]["milsil p(malignant)"] for t in tiles]
    lo, hi = min(values), max(values)
    cmap = plt.get_cmap("inferno")
    for t, v in zip(tiles, values, strict=True):
        ax.add_patch(_patch(t, fc=cmap((v - lo) / (hi - lo + 1e-12)), alpha=0.55, lw=0))
    ax.set_title(
        "addTiles = true: tiles with 'milsil p(malignant)'\n(for measurement maps)", fontsize=9
    )
    ax = axes[2]
    ax.imshow(tma)
    for core in by_image["tma.png"]:
        colour = {"malignant": "red", "benign": "lime"}.get(core.get("class"), "grey")
        ax.add_patch(_patch(core, fill=False, ec=colour, lw=2, ls="--" if core["missing"] else "-"))
        cx = np.mean([p[0] for p in core["rings"][0]])
        cy = np.mean([p[1] for p in core["rings"][0]])
        p = core["measurements"].get("milsil p(malignant)")
        text = core["name"] + ("\nmissing" if core["missing"] else f"\n{core['class']}\np={p:.3f}")
        ax.text(
            cx,
            cy,
            text,
            color="white",
            ha="center",
            va="center",
            fontsize=8,
            bbox={"fc": "black", "alpha": 0.5, "lw": 0},
        )
    ax.set_title("tma_batch: core class + probabilities\n(missing core skipped)", fontsize=9)
    for ax in axes:
        ax.set_axis_off()
    caption = (
        "Untrained width-8 test model: the shapes show what the scripts do, not pathology."
        if args.checkpoint is None
        else "MIL-SIL BagNet-9 (width 16) trained by `make demo` on synthetic H&E."
    )
    fig.text(
        0.5,
        0.01,
        caption + " Rendered from the QuPath stand-ins' objects.",
        ha="center",
        fontsize=8,
    )
    fig.tight_layout(rect=(0, 0.04, 1, 0.97))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=80)
    # A palette PNG keeps the README light (< 200 KB).
    Image.open(args.out).convert("RGB").quantize(colors=96).save(args.out, optimize=True)
    print("\n".join(logs.values()))
    print(f"wrote {args.out} ({args.out.stat().st_size // 1024} KiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
