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
3. **QuPath on a slide** (``--qupath-cells 200000``, off by default): classify_cells.groovy
   end to end on one image of that many cells (the throughput grid, each nucleus inside a
   cell 1.6x its size), nothing selected, progress lines every 10 s, against a server
   process: the script's wall time and cells/s, its progress lines, the runner JVM's heap
   and resident memory during the run, the server's peak RSS growth; every cell must get
   its 7 measurements, and every cell's p(malignant) and pixels against the library's.
   The stand-in image server holds the whole PNG in the heap (4 bytes a pixel), and the
   runner holds the spec's objects and dumps every cell's state after the run: the
   heap growth over the run, not the process's peak, is the script's memory.

Usage: ``python bench/cells_bench.py [--out bench_out/cells] [--seeds 0,1,2]
[--cells 10000,100000] [--picture docs/cells.png] [--no-groovy] [--qupath-cells N]``.
Writes ``OUT/cells.json`` (and ``OUT/qupath_cells_N.log``, what the script printed) and
prints the tables (about 10 minutes on 2 cores, without --qupath-cells).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
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
    from shapely import affinity
    from shapely.geometry import mapping

    from milsil.wsi.geojson import component_polygon

    out = []
    for k in ids:
        rows, cols = np.nonzero(labels == k)
        r0, c0 = rows.min(), cols.min()
        crop = labels[r0 : rows.max() + 1, c0 : cols.max() + 1] == k
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


def groovy_runtime():
    """Debian's Groovy 4 (QuPath 0.6's) or 2.4, for run_qupath.groovy; exits if neither."""
    from qupath_support import groovy_env

    runtime = next(
        (
            r
            for r in (groovy_env.available(n) for n in ("groovy4", "groovy2.4"))
            if not isinstance(r, str)
        ),
        None,
    )
    if runtime is None:
        raise SystemExit("no Groovy runtime here: run with --no-groovy (and no --qupath-cells)")
    return runtime


def qupath_probabilities(
    address: str, model_name: str, images: list, target: str, out: Path
) -> list[np.ndarray]:
    """``p(target)`` of every nucleus as classify_cells.groovy sets it, run the way QuPath
    runs it (tests/qupath_support.py: the QuPath stand-ins, Debian's Groovy 4 or 2.4),
    each nucleus imported from GeoJSON as a detection."""
    from PIL import Image
    from qupath_support import groovy_env, image_state, runner_results, start_runner

    runtime = groovy_runtime()
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


def throughput(
    counts: list[int], width: int, log, device: str = "cpu", server=None
) -> list[dict[str, Any]]:
    """MeasureObjects of ``counts`` random nuclei by a server process and in process, each
    against the same-run stride-1 heatmap of the same pixels, both on ``device``.
    ``server``: a running ``(process, address)`` to use (left running); default one of
    its own."""
    from milsil.client import MilsilClient
    from milsil.inference.heatmap import logit_heatmap
    from milsil.inference.objects import measure_image_objects
    from milsil.models import save_checkpoint

    work = Path(tempfile.mkdtemp(prefix="cells-bench-"))
    model = small_model(width)
    save_checkpoint(model, work / "small.pt")
    own = server is None
    proc, address = serve_process(work / "server", "--device", device) if own else server
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
            logit_heatmap(model, image, stride=1, device=device)
            lib_heat_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            lib = measure_image_objects(model, image, [g for _, g in cells], device=device)
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
        if own:
            stop_process(proc)
    return rows


# --------------------------------------------------------------------------- QuPath, a slide

PROGRESS_LINE = re.compile(r"^milsil: .+: cells: \d+% \(")


def _status(pid: int, field: str) -> int | None:
    try:
        return rss_bytes(pid, field)
    except (OSError, KeyError):  # gone, or a zombie (no memory fields)
        return None


def qupath_cells(
    count: int,
    width: int,
    out: Path,
    log,
    progress_seconds: float = 10,
    region_size: int | None = None,
    timeout: float = 6 * 3600,
) -> dict[str, Any]:
    """classify_cells.groovy end to end on one slide-sized image of ``count`` cells (nothing
    selected: the whole image), run the way QuPath runs it against a server process.

    The image: ``slide_like`` pixels, side the grid of ``count`` cells at 10 px spacing,
    a PNG for the stand-in PngImageServer (which decodes the whole PNG into the heap: 4 bytes
    a pixel, held for the whole run). The cells: ``random_cells``' 12-gons as nuclei, each
    cell the 12-gon scaled 1.6x about its centre (run_qupath 'cell' objects). Measured: the
    script's wall time (the runner's MEMORY line: from the script's start to its end, before
    the runner dumps the image's state), its progress lines, the runner JVM's heap (in use
    after a full GC before and after the run, the heap pools' peaks summed during it) and
    resident memory (VmHWM reset at the run's start, read at its end; and the whole
    process's peak, sampled every 0.2 s), the server's peak RSS growth; checked: every cell
    has the 7 measurements, and every cell's ``milsil p(malignant)`` and pixel count against
    the library's ``measure_image_objects`` on the whole image, in process.
    """
    from PIL import Image
    from qupath_support import SCRIPTS, groovy_env, image_state, start_runner

    from milsil.client import MilsilClient
    from milsil.inference.objects import measure_image_objects
    from milsil.models import save_checkpoint

    runtime = groovy_runtime()
    work = Path(tempfile.mkdtemp(prefix="cells-qupath-"))
    side = (math.isqrt(count - 1) + 2) * 10  # as throughput(): a grid of at least `count`
    image = slide_like(side, seed=1)
    Image.fromarray(image).save(work / "slide.png", compress_level=1)
    nuclei = [g["coordinates"][0][:-1] for _, g in random_cells(side)[:count]]  # open rings
    objects = []
    for k, ring in enumerate(nuclei):
        r = np.asarray(ring)
        centre = r.mean(0)  # a regular 12-gon's centre
        cell = (centre + 1.6 * (r - centre)).round(2).tolist()
        objects.append({"kind": "cell", "name": f"c{k}", "coords": cell, "nucleus": ring})
    log(f"qupath cells: {count:,} cells on a {side:,} px square image")
    save_checkpoint(small_model(width), work / "small.pt")
    stubs = groovy_env.compile_stubs(work / "stubs")
    proc, address = serve_process(work / "server")
    try:
        client = MilsilClient(address, timeout=3600)
        model = client.import_model(work / "small.pt", model_id="small").name
        client.heatmap(model, slide_like(256), stride=1)  # warm up
        properties = {
            "milsil.server": address,
            "milsil.model": model,
            "milsil.progressEverySeconds": str(progress_seconds),
        }
        if region_size:
            properties["milsil.regionSize"] = str(region_size)
        spec = {
            "out": str(work),
            "project_dir": "",
            "memory": True,  # run_qupath.groovy's MEMORY line
            "images": [{"name": "slide.png", "path": str(work / "slide.png"), "objects": objects}],
            "runs": [
                {
                    "id": "cells",
                    "script": str(SCRIPTS / "classify_cells.groovy"),
                    "properties": properties,
                    "image": 0,
                    "select": [],
                }
            ],
        }
        base = rss_bytes(proc.pid)
        reset_peak_rss(proc.pid)
        started = time.perf_counter()
        runner = start_runner(runtime, spec, work, stubs)
        del objects, spec
        jvm_peak = 0
        try:
            while runner.poll() is None:
                jvm_peak = max(jvm_peak, _status(runner.pid, "VmHWM") or 0)
                if time.perf_counter() - started > timeout:
                    raise TimeoutError(f"the runner took over {timeout:.0f} s")
                time.sleep(0.2)
        finally:
            if runner.poll() is None:
                runner.kill()
                runner.wait()
        runner_s = time.perf_counter() - started
        server_growth = (rss_bytes(proc.pid, "VmHWM") - base) / MB
        text = (work / "runner.log").read_text()
        if runner.returncode != 0 or "DONE" not in text:
            raise RuntimeError(f"run_qupath.groovy failed:\n{text[-4000:]}")
        lines = (work / "cells.log").read_text().splitlines()
        log(f"qupath cells: {lines[-1] if lines else 'no output'}")
        memory = json.loads(re.search(r"^MEMORY cells (.*)$", text, re.M).group(1))
        run_ms = int(re.search(r"^RUN cells (\d+) ms", text, re.M).group(1))
        regions = re.search(r"cell\(s\) measured in (\d+) region", lines[-1] if lines else "")
        if regions is None:
            raise RuntimeError("classify_cells.groovy did not finish:\n" + "\n".join(lines[-20:]))

        t0 = time.perf_counter()
        state_mb = (work / "cells.state.json").stat().st_size / MB
        state = json.loads((work / "cells.state.json").read_text())
        measured = {
            o["name"]: o["measurements"]
            for o in image_state(state, "slide.png")["objects"]
            if o["type"] == "cell"
        }
        del state
        parse_s = time.perf_counter() - t0
        classes = ["benign", "malignant"]
        keys = [f"milsil {v}({c})" for v in ("mean logit", "max logit", "p") for c in classes]
        keys.append("milsil pixels")
        complete = sum(
            all(isinstance(m.get(k), (int, float)) and math.isfinite(m[k]) for k in keys)
            for m in (measured.get(f"c{k}", {}) for k in range(count))
        )

        # Every cell against the library on the whole image (its own heatmap, in process).
        t0 = time.perf_counter()
        reference = measure_image_objects(
            small_model(width),
            image,
            [{"type": "Polygon", "coordinates": [ring + ring[:1]]} for ring in nuclei],
        )
        p_ref = reference.p[:, 1]
        got_p = np.array([measured[f"c{k}"]["milsil p(malignant)"] for k in range(count)])
        got_pixels = np.array([measured[f"c{k}"]["milsil pixels"] for k in range(count)])
        differences = np.abs(got_p - p_ref)
        pixel_mismatch = np.flatnonzero(got_pixels != reference.pixels)
        for k in pixel_mismatch[:5]:
            log(
                f"qupath cells: c{k}: {got_pixels[k]} pixels in the script, {reference.pixels[k]} "
                f"in the library; nucleus {nuclei[k]}"
            )
        sample_s = time.perf_counter() - t0
        client.close()
    finally:
        stop_process(proc)
    (out / f"qupath_cells_{count}.log").write_text("\n".join(lines) + "\n")
    options = [*runtime.prefix, *runtime.env.get("JAVA_OPTS", "").split()]
    script_s = memory["script_ms"] / 1000
    row = {
        "cells": count, "side": side, "megapixels": side * side / 1e6, "runtime": runtime.name,
        "regions": int(regions.group(1)), "progress_every_s": progress_seconds,
        "progress_lines": sum(bool(PROGRESS_LINE.match(line)) for line in lines),
        "script_s": script_s, "cells_per_s": count / script_s,
        "run_s_with_state_dump": run_ms / 1000, "runner_s": runner_s,
        "jvm_options": [o for o in options if o.startswith("-X")],
        "jvm_xmx": next((o for o in options if o.startswith("-Xmx")), None),
        "jvm_max_heap_mb": memory["heap_max"] / MB,
        "jvm_heap_before_mb": memory["heap_before"] / MB,
        "jvm_heap_after_mb": memory["heap_after"] / MB,
        "jvm_heap_peak_mb": memory["heap_peak"] / MB,
        "jvm_rss_before_mb": memory["rss_before"] / MB,
        "jvm_rss_peak_run_mb": memory["rss_peak"] / MB,
        "jvm_rss_peak_process_mb": jvm_peak / MB,
        "png_image_in_heap_mb": side * side * 4 / MB,
        "server_peak_growth_mb": server_growth,
        "cells_with_7_measurements": complete,
        "compared": count, "max_p_difference": float(differences.max()),
        "p_differences_over_1e-5": int((differences > 1e-5).sum()),
        "pixel_count_mismatches": int(len(pixel_mismatch)), "library_check_s": sample_s,
        "state_json_mb": state_mb, "state_parse_s": parse_s,
    }  # fmt: skip
    log(json.dumps(row))
    shutil.rmtree(work, ignore_errors=True)
    if complete != count:
        raise RuntimeError(f"{count - complete} cells lack measurements")
    return row


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
    parser.add_argument(
        "--qupath-cells",
        type=int,
        default=0,
        help="also run classify_cells.groovy on one image of this many cells (0: off)",
    )
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
    if args.qupath_cells > 0:
        report["qupath_cells"] = qupath_cells(args.qupath_cells, args.width, args.out, log)
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
    q = report.get("qupath_cells")
    if q:
        print(
            "\n| cells | image | script (with state dump) | cells/s | regions | progress lines "
            "(every 10 s) | JVM heap after GC, before -> after run | JVM heap peak (max) | "
            "JVM RSS run start -> peak (process peak) | server peak RSS growth | cells with 7 "
            "measurements | vs the library: max abs p difference, cells over 1e-5, pixel-count "
            "mismatches |"
        )
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        print(
            f"| {q['cells']:,} | {q['side']:,}² ({q['megapixels']:.1f} MP) | "
            f"{q['script_s']:.1f} s ({q['run_s_with_state_dump']:.1f} s) | {q['cells_per_s']:,.0f} | "
            f"{q['regions']} | {q['progress_lines']} | {q['jvm_heap_before_mb']:.0f} -> "
            f"{q['jvm_heap_after_mb']:.0f} MB | {q['jvm_heap_peak_mb']:.0f} MB "
            f"({q['jvm_max_heap_mb']:.0f} MB, -Xmx {q['jvm_xmx'] or 'unset'}) | "
            f"{q['jvm_rss_before_mb']:.0f} -> {q['jvm_rss_peak_run_mb']:.0f} MB "
            f"({q['jvm_rss_peak_process_mb']:.0f} MB) | +{q['server_peak_growth_mb']:.0f} MB | "
            f"{q['cells_with_7_measurements']:,} | {q['max_p_difference']:.1e}, "
            f"{q['p_differences_over_1e-5']}, {q['pixel_count_mismatches']} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
