#!/usr/bin/env python
"""Cells: per-nucleus evidence from the logit heatmap, through every path, and its speed.

1. **Agreement and AUROC** (``--scenarios sparse,mimic``, seeds ``--seeds``): for each
   (scenario, seed), ``milsil synth`` data (8 patients x 6 images of 128 px), a MIL-SIL
   BagNet-9 (width 8, 8 epochs, lr 2e-3 decaying 0.8) trained on three of four
   patient-level folds, and on the held-out fold every ground-truth nucleus scored by
   ``milsil p(malignant)``:

   * the library: ``measure_objects`` on the stride-1 ``logit_heatmap`` over the instance
     label image;
   * the server: ``MeasureObjects`` (Python client, pixels streamed), the nuclei sent as
     polygons traced along their pixel edges (they hold exactly the label's pixel centres);
   * QuPath: ``qupath_scripts/classify_cells.groovy`` run the way QuPath runs it (QuPath
     stand-ins, Debian's Groovy) against the same server, the nuclei as cells
     (``--no-groovy`` skips it).

   Reported: per-nucleus AUROC (malignant vs benign nuclei, pooled over the held-out
   images) of each path, mean +- sample std (n - 1) over seeds, and the largest difference
   of ``p`` between paths. A picture (``--picture``) shows one held-out image per scenario:
   nuclei outlined by their true class, and filled by ``p(malignant)``.
2. **Throughput** (``--cells 10000,100000``): random nuclei (12-gons of radius 2.5-4.5 px,
   one per 10 x 10 px) on a synthetic image, measured by a server in its own process
   (``MeasureObjects``, 512 px RAW tiles streamed), against the same-run stride-1
   ``Heatmap`` of the same pixels (the baseline: the ratio is the cost of the objects),
   and in process (``measure_image_objects`` vs ``logit_heatmap``).

Usage: ``python bench/cells_bench.py [--out bench_out/cells] [--seeds 0,1,2]
[--cells 10000,100000] [--picture docs/cells.png] [--no-groovy]``. Writes
``OUT/cells.json`` and prints the tables (about 10 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
for extra in (ROOT / "tests", ROOT / "bench"):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))

from region_bench import machine, slide_like, small_model  # noqa: E402
from server_support import reset_peak_rss, rss_bytes, serve_process, stop_process  # noqa: E402

MB = 2**20


def sample_stats(values: list[float]) -> str:
    v = [x for x in values if not math.isnan(x)]
    if not v:
        return "n/a"
    std = float(np.std(v, ddof=1)) if len(v) > 1 else 0.0
    return f"{np.mean(v):.3f} ± {std:.3f}"


def nucleus_polygons(labels: np.ndarray, ids: list[int]) -> list[dict]:
    """Each nucleus as a GeoJSON geometry traced along its pixels' edges (so the pixel
    centres inside are exactly the label's pixels)."""
    from shapely.geometry import mapping

    from milsil.wsi.geojson import component_polygon

    out = []
    for k in ids:
        rows, cols = np.nonzero(labels == k)
        r0, c0 = rows.min(), cols.min()
        crop = labels[r0 : rows.max() + 1, c0 : cols.max() + 1] == k
        from shapely import affinity

        out.append(mapping(affinity.translate(component_polygon(crop), c0, r0)))
    return out


# --------------------------------------------------------------------------- AUROC


def train_one(scenario: str, seed: int, work: Path, log) -> tuple[Any, list, list[str], dict]:
    from milsil.data import load_dataset, patient_kfold
    from milsil.data.instances import read_instance_index
    from milsil.data.synth import synthesize_dataset
    from milsil.engine.config import TrainConfig
    from milsil.engine.loop import train_model
    from milsil.models import load_checkpoint

    manifest = synthesize_dataset(
        work / "data", patients=8, images_per_patient=6, size=128, seed=seed, scenario=scenario
    )
    records, classes = load_dataset(manifest)
    train, test = patient_kfold(list(records), k=4, seed=seed)[0]
    config = TrainConfig(
        arch="bagnet9", width=8, epochs=8, lr=2e-3, lr_decay=0.8, patch_size=64, seed=seed,
        device="cpu",
    )  # fmt: skip
    log(f"{scenario} seed {seed}: training on {len(train)} images, {len(test)} held out")
    result = train_model(config, train, [], classes, work / "run")
    model = load_checkpoint(result.best_checkpoint).to("cpu").eval()
    return model, test, classes, read_instance_index(manifest)


def score_paths(model, test, classes, instances, client, groovy, work: Path) -> dict[str, Any]:
    """p(malignant) of every held-out nucleus by each path, and whether it is malignant."""
    from milsil.data import load_rgb
    from milsil.data.instances import load_instances
    from milsil.inference.heatmap import logit_heatmap
    from milsil.inference.objects import measure_objects
    from milsil.models import save_checkpoint, target_class_index

    target = target_class_index(model.class_names, None)
    name = model.class_names[target]
    save_checkpoint(model, work / "model.pt")
    model_name = client.import_model(work / "model.pt", model_id=f"cells-{work.name}").name
    paths: dict[str, list[np.ndarray]] = {"library": [], "server": [], "qupath": []}
    truth, images = [], []
    for record in test:
        stem = Path(record.path).stem
        image = load_rgb(record.path)
        labels, table = load_instances(instances[str(Path(record.path).resolve())])
        ids = [int(n["id"]) for n in table if (labels == int(n["id"])).any()]
        if not ids:
            continue
        malignant = {int(n["id"]): n["class"] == name for n in table}
        truth.append(np.array([malignant[k] for k in ids]))
        heat = logit_heatmap(model, image, stride=1)
        paths["library"].append(measure_objects(heat, labels, ids=ids).p[:, target])
        polygons = nucleus_polygons(labels, ids)
        served = client.measure_objects(
            model_name, list(zip(map(str, ids), polygons, strict=True)), image
        )
        paths["server"].append(served.probabilities[:, target])
        images.append((stem, image, labels, ids, polygons))
    if groovy is not None:
        paths["qupath"] = groovy(model_name, images, name, work / "qupath")
    else:
        del paths["qupath"]
    client.delete_model(model_name)
    return {"truth": truth, "paths": paths, "images": images, "target": name}


def picture(examples: list[tuple[str, dict]], path: Path) -> None:
    """Per scenario: the image with nuclei outlined by true class (red malignant, green
    benign) | nuclei filled by p(malignant) (blue 0 -> red 1) over the greyed image."""
    from PIL import Image, ImageDraw

    from milsil.inference.render import colorize, side_by_side

    scale, panels = 3, []
    for _scenario, scored in examples:
        k = next((i for i, t in enumerate(scored["truth"]) if t.any() and (~t).any()), 0)
        stem, image, labels, ids, polygons = scored["images"][k]
        p = scored["paths"]["library"][k]
        truth = scored["truth"][k]
        big = Image.fromarray(image).resize((image.shape[1] * scale,) * 2, Image.Resampling.NEAREST)
        left = big.copy()
        draw = ImageDraw.Draw(left)
        for poly, t in zip(polygons, truth, strict=True):
            for ring in _shells(poly):
                draw.line(
                    [(x * scale, y * scale) for x, y in ring],
                    fill=(230, 30, 30) if t else (40, 200, 60),
                    width=2,
                )
        grey = np.asarray(big.convert("L").convert("RGB")).astype(np.float32) * 0.6 + 90
        fill = np.zeros(labels.shape + (3,), np.float32)
        inside = np.zeros(labels.shape, bool)
        for nucleus, value in zip(ids, p, strict=True):
            mask = labels == nucleus
            fill[mask] = colorize(np.array([[2 * value - 1.0]]), limit=1.0)[0, 0, :3]
            inside |= mask
        fill = np.kron(fill, np.ones((scale, scale, 1)))
        inside = np.kron(inside, np.ones((scale, scale), bool))
        right = np.where(inside[..., None], fill, grey).clip(0, 255).astype(np.uint8)
        panels.append(side_by_side([np.asarray(left), right], gap=6))
    gap = np.full((6, panels[0].shape[1], 3), 255, np.uint8)
    rows = [panels[0]]
    for panel in panels[1:]:
        rows += [gap, panel]
    Image.fromarray(np.concatenate(rows, 0)).save(path, optimize=True)


def _shells(geometry: dict) -> list[list]:
    polys = [geometry["coordinates"]] if geometry["type"] == "Polygon" else geometry["coordinates"]
    return [poly[0] for poly in polys]


def qupath_probabilities(
    address: str, model_name: str, images: list, target: str, out: Path
) -> list[np.ndarray]:
    """``p(target)`` of every nucleus as classify_cells.groovy sets it, run the way QuPath
    runs it (tests/qupath_support.py: the QuPath stand-ins, Debian's Groovy 4 or 2.4),
    each nucleus imported from GeoJSON as a detection."""
    from PIL import Image
    from qupath_support import groovy_env, image_state, runner_results, start_runner

    runtime = next(
        (
            r
            for r in (groovy_env.available(n) for n in ("groovy4", "groovy2.4"))
            if not isinstance(r, str)
        ),
        None,
    )
    if runtime is None:
        raise SystemExit("no Groovy runtime here: run with --no-groovy")
    out.mkdir(parents=True, exist_ok=True)
    spec_images, runs = [], []
    for k, (stem, image, _labels, ids, polygons) in enumerate(images):
        Image.fromarray(image).save(out / f"{stem}.png")
        objects = [
            {
                "kind": "geojson",
                "name": f"n{nucleus}",
                "feature": json.dumps(
                    {
                        "type": "Feature",
                        "geometry": geometry,
                        "properties": {"objectType": "detection"},
                    }
                ),
            }
            for nucleus, geometry in zip(ids, polygons, strict=True)
        ]
        spec_images.append(
            {"name": f"{stem}.png", "path": str(out / f"{stem}.png"), "objects": objects}
        )
        runs.append(
            {
                "id": f"image{k}",
                "script": str(ROOT / "qupath_scripts" / "classify_cells.groovy"),
                "properties": {
                    "milsil.server": address,
                    "milsil.model": model_name,
                    "milsil.progressEverySeconds": "0",
                },
                "image": k,
                "select": [],
            }
        )
    spec = {"out": str(out), "project_dir": "", "images": spec_images, "runs": runs}
    stubs = groovy_env.compile_stubs(out / "stubs")
    results = runner_results(start_runner(runtime, spec, out, stubs), out, spec, timeout=1800)
    key = f"milsil p({target})"
    probabilities = []
    for k, (stem, _image, _labels, ids, _polygons) in enumerate(images):
        objects = image_state(results["states"][f"image{k}"], f"{stem}.png")["objects"]
        by_name = {o["name"]: o["measurements"] for o in objects}
        probabilities.append(np.array([by_name[f"n{n}"][key] for n in ids], np.float64))
    return probabilities


# --------------------------------------------------------------------------- throughput


def random_cells(side: int, seed: int = 0, spacing: int = 10) -> list[tuple[str, dict]]:
    """One 12-gon nucleus (radius 2.5-4.5 px) per ``spacing``^2 pixels, jittered."""
    rng = np.random.default_rng(seed)
    centres = np.mgrid[
        spacing // 2 : side - spacing // 2 : spacing, spacing // 2 : side - spacing // 2 : spacing
    ]
    centres = centres.reshape(2, -1).T.astype(float) + rng.uniform(-2, 2, (centres[0].size, 2))
    radii = rng.uniform(2.5, 4.5, len(centres))
    angles = np.linspace(0, 2 * np.pi, 13)[:-1]
    cells = []
    for k, ((y, x), r) in enumerate(zip(centres, radii, strict=True)):
        ring = np.stack([x + r * np.cos(angles), y + r * np.sin(angles)], 1).round(2).tolist()
        cells.append((str(k), {"type": "Polygon", "coordinates": [ring + ring[:1]]}))
    return cells


def throughput(counts: list[int], width: int, log) -> list[dict[str, Any]]:
    from milsil.client import MilsilClient
    from milsil.inference.heatmap import logit_heatmap
    from milsil.inference.objects import measure_image_objects
    from milsil.models import save_checkpoint

    work = Path(tempfile.mkdtemp(prefix="cells-bench-"))
    model = small_model(width)
    save_checkpoint(model, work / "small.pt")
    proc, address = serve_process(work / "server")
    rows = []
    try:
        client = MilsilClient(address, timeout=3600)
        client.import_model(work / "small.pt", model_id="small")
        client.heatmap("models/small", slide_like(256), stride=1)  # warm up
        for count in counts:
            side = (math.isqrt(count - 1) + 2) * 10  # a grid of at least `count` nuclei
            image = slide_like(side, seed=1)
            cells = random_cells(side)[:count]
            mp = side * side / 1e6
            base = rss_bytes(proc.pid)
            reset_peak_rss(proc.pid)
            t0 = time.perf_counter()
            client.heatmap("models/small", image, stride=1, value_type="float16")
            heat_s = time.perf_counter() - t0
            reset_peak_rss(proc.pid)
            t0 = time.perf_counter()
            result = client.measure_objects("models/small", cells, image)
            cells_s = time.perf_counter() - t0
            growth = (rss_bytes(proc.pid, "VmHWM") - base) / MB
            t0 = time.perf_counter()
            logit_heatmap(model, image, stride=1)
            lib_heat_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            lib = measure_image_objects(model, image, [g for _, g in cells])
            lib_cells_s = time.perf_counter() - t0
            agree = float(np.nanmax(np.abs(lib.mean_logit - result.mean_logits)))
            row = {
                "cells": len(cells), "side": side, "megapixels": mp,
                "server_heatmap_s": heat_s, "server_cells_s": cells_s,
                "server_cells_per_s": len(cells) / cells_s, "server_mp_per_s": mp / cells_s,
                "server_ratio_to_heatmap": cells_s / heat_s, "server_peak_growth_mb": growth,
                "library_heatmap_s": lib_heat_s, "library_cells_s": lib_cells_s,
                "library_cells_per_s": len(cells) / lib_cells_s,
                "library_ratio_to_heatmap": lib_cells_s / lib_heat_s,
                "max_mean_logit_difference": agree,
            }  # fmt: skip
            log(json.dumps(row))
            rows.append(row)
        client.close()
    finally:
        stop_process(proc)
    return rows


# --------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench_out/cells"))
    parser.add_argument("--scenarios", default="sparse,mimic")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--cells", default="10000,100000")
    parser.add_argument("--width", type=int, default=8, help="BagNet-9 width of the speed runs")
    parser.add_argument("--picture", type=Path, default=None)
    parser.add_argument("--no-groovy", action="store_true")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    def log(line: str) -> None:
        print(f"[{time.perf_counter() - started:6.0f}s] {line}", flush=True)

    from milsil.client import MilsilClient
    from milsil.engine.metrics import auroc

    report: dict[str, Any] = {"machine": machine(), "command": " ".join(sys.argv), "auroc": {}}
    groovy = None if args.no_groovy else qupath_probabilities
    work = Path(tempfile.mkdtemp(prefix="cells-auroc-"))
    proc, address = serve_process(work / "server")
    examples = []
    try:
        client = MilsilClient(address, timeout=3600)
        for scenario in [s for s in args.scenarios.split(",") if s]:
            per_seed = []
            for seed in [int(s) for s in args.seeds.split(",") if s]:
                run = work / f"{scenario}-{seed}"
                torch.manual_seed(seed)
                model, test, classes, instances = train_one(scenario, seed, run, log)
                bound = None
                if groovy is not None:

                    def bound(name, images, target, out, _a=address):  # noqa: E306
                        return groovy(_a, name, images, target, out)

                scored = score_paths(model, test, classes, instances, client, bound, run)
                truth = np.concatenate(scored["truth"])
                entry = {"seed": seed, "nuclei": int(truth.size), "malignant": int(truth.sum())}
                library = np.concatenate(scored["paths"]["library"])
                for path, values in scored["paths"].items():
                    p = np.concatenate(values)
                    entry[f"{path}_auroc"] = auroc(p, truth.astype(int))
                    entry[f"{path}_max_p_difference"] = float(np.max(np.abs(p - library)))
                log(f"{scenario} seed {seed}: {json.dumps(entry)}")
                per_seed.append(entry)
                if seed == int(args.seeds.split(",")[0]):
                    examples.append((scenario, scored))
            report["auroc"][scenario] = per_seed
        client.close()
    finally:
        stop_process(proc)
    if args.picture is not None and examples:
        picture(examples, args.picture)
        log(f"wrote {args.picture}")
    report["throughput"] = throughput([int(c) for c in args.cells.split(",") if c], args.width, log)
    (args.out / "cells.json").write_text(json.dumps(report, indent=1))

    print(f"\n# cells_bench: {report['machine']}\n")
    first = next(iter(report["auroc"].values()), [{}])[0]
    paths = [p for p in ("library", "server", "qupath") if f"{p}_auroc" in first]
    print(
        "| scenario | nuclei (malignant) per seed | "
        + " | ".join(f"{p} AUROC" for p in paths)
        + " | max abs p difference to the library |"
    )
    print("| --- | --- |" + " --- |" * len(paths) + " --- |")
    for scenario, rows in report["auroc"].items():
        counts = ", ".join(f"{r['nuclei']} ({r['malignant']})" for r in rows)
        cells = [sample_stats([r[f"{p}_auroc"] for r in rows]) for p in paths]
        diff = max(r[f"{p}_max_p_difference"] for r in rows for p in paths)
        print(f"| {scenario} | {counts} | " + " | ".join(cells) + f" | {diff:.1e} |")
    print(
        "\n| cells | image | server MeasureObjects | cells/s | MP/s | x same-run Heatmap | server peak RSS growth | in-process cells/s | x in-process logit_heatmap |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in report["throughput"]:
        print(
            f"| {r['cells']:,} | {r['side']:,}² ({r['megapixels']:.1f} MP) | {r['server_cells_s']:.1f} s | "
            f"{r['server_cells_per_s']:,.0f} | {r['server_mp_per_s']:.2f} | {r['server_ratio_to_heatmap']:.2f} | "
            f"+{r['server_peak_growth_mb']:.0f} MB | {r['library_cells_per_s']:,.0f} | {r['library_ratio_to_heatmap']:.2f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
