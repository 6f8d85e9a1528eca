"""Annotate a folder of slides overnight, on one process or many (``milsil batch``).

For every slide in ``SLIDES_DIR`` it writes ``OUT/<name>.geojson`` (and ``.tif`` with
``--tiff``) and, last, ``OUT/<name>.json`` (what was done, with which model and
settings): that file marks the slide finished, so a rerun skips it and continues with
the rest (a slide stopped midway resumes from its ``.work`` folder). A slide that fails
(corrupt file, unsupported format, out of memory) is recorded and the others go on; the
failures are listed at the end and the exit code is 1. ``OUT/run.json`` holds the run's
metadata: versions, model (path, SHA-256, config), parameters, per-slide outcome.

Under ``torchrun`` the slides are sharded round-robin across ranks (one GPU each) and
rank 0 gathers the outcomes: ``torchrun --nproc_per_node=4 -m milsil.cli.slides SLIDES_DIR
--model best.pt --out OUT --device cuda`` (the command and its flags live in
:mod:`milsil.cli.slides`).
"""

from __future__ import annotations

import json
import platform
import sys
import time
import traceback
from pathlib import Path

from milsil.atomic import file_sha256, write_json_atomic
from milsil.errors import MilsilError, NotFoundError
from milsil.inference.familiarity import slide_familiarity
from milsil.wsi.annotate import annotate_slide
from milsil.wsi.reader import SLIDE_SUFFIXES
from milsil.wsi.settings import SlideSettings


def list_slides(folder: str | Path) -> list[Path]:
    """Slides in ``folder`` (sorted); a sub-folder of ``.dcm`` files is one DICOM slide."""
    folder = Path(folder)
    if not folder.is_dir():
        raise NotFoundError(f"slides folder not found: {folder}")
    found: list[Path] = []
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in SLIDE_SUFFIXES and p.suffix.lower() != ".dcm":
            found.append(p)
        elif p.is_dir() and not p.name.startswith(".") and not p.name.endswith(".work"):
            dcm = sorted(q for q in p.iterdir() if q.suffix.lower() == ".dcm")
            if dcm:
                found.append(dcm[0])
    dcm_here = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".dcm")
    if dcm_here:
        found.append(dcm_here[0])
    return found


def slide_name(path: Path, folder: Path) -> str:
    """Output stem: the file stem, or the folder name for a DICOM series in a sub-folder."""
    if path.suffix.lower() == ".dcm" and path.parent != folder:
        return path.parent.name
    return path.stem


def run_versions() -> dict[str, str]:
    """Versions that decide the numbers: milsil, torch, numpy, OpenSlide, Python, platform."""
    import numpy
    import torch

    import milsil

    out = {
        "milsil": milsil.__version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    try:
        import openslide

        out["openslide-python"] = openslide.__version__
        out["openslide"] = openslide.__library_version__
    except ImportError:  # pragma: no cover
        pass
    if torch.cuda.is_available():
        out["cuda"] = str(torch.version.cuda)
    return out


def run_batch(
    slides_dir: str | Path,
    checkpoint: str | Path,
    out: str | Path,
    settings: SlideSettings | None = None,
    *,
    tiff: bool = False,
    device: str = "cpu",
) -> int:
    """Annotate this rank's share of the slides; rank 0 writes ``run.json`` and the summary.

    ``checkpoint`` is the model's ``.pt`` file; ``device``: cpu, cuda or cuda:N (under
    torchrun each rank takes its own GPU).
    Returns 1 when a slide failed, else 0.
    """
    from milsil.distributed import finish, gather, init_distributed, shard
    from milsil.models import load_checkpoint, read_checkpoint

    settings = settings if settings is not None else SlideSettings()
    folder, out = Path(slides_dir), Path(out)
    slides = list_slides(folder)
    names = [slide_name(p, folder) for p in slides]
    clashes = sorted({n for n in names if names.count(n) > 1})
    if clashes:
        raise MilsilError(
            f"several slides would write the same outputs ({', '.join(clashes)}): outputs are "
            "named after the slide without its extension; rename or separate them"
        )
    model_path = Path(checkpoint)
    if not model_path.is_file():
        raise NotFoundError(f"model checkpoint not found: {model_path}")
    ctx = init_distributed(device)
    try:
        out.mkdir(parents=True, exist_ok=True)
        model = load_checkpoint(model_path).to(ctx.device)
        model_sha = file_sha256(model_path)
        params = {**settings.result_params(), "tiff": bool(tiff)}
        mine = shard(slides, ctx.rank, ctx.world_size)
        outcomes = []
        started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        if ctx.is_main:
            print(
                f"milsil batch: {len(slides)} slides in {folder} -> {out} "
                f"({ctx.world_size} process(es), device {ctx.device})",
                flush=True,
            )
        for path in mine:
            name = slide_name(path, folder)
            summary_path = out / f"{name}.json"
            if summary_path.is_file():
                try:
                    old = json.loads(summary_path.read_text())
                except (json.JSONDecodeError, OSError):
                    old = {}
                if (
                    old.get("status") == "ok"
                    and old.get("model_sha256") == model_sha
                    and old.get("params") == params
                ):
                    outcomes.append({"slide": str(path), "name": name, "status": "skipped"})
                    print(f"  [rank {ctx.rank}] {name}: done before, skipped", flush=True)
                    continue
            t0 = time.monotonic()
            try:
                res = annotate_slide(
                    path,
                    model,
                    out / f"{name}.geojson",
                    settings,
                    tiff=(out / f"{name}.tif") if tiff else None,
                    device=ctx.device,
                    familiarity=True,
                )
            except Exception as exc:  # noqa: BLE001 - one bad slide must not stop the others
                message = " ".join(str(exc).split()) or type(exc).__name__
                if not isinstance(exc, MilsilError):
                    message = f"{type(exc).__name__}: {message}"
                    traceback.print_exc(file=sys.stderr)
                outcomes.append(
                    {"slide": str(path), "name": name, "status": "failed", "error": message}
                )
                print(f"  [rank {ctx.rank}] {name}: FAILED: {message}", flush=True)
                continue
            summary = res.summary() | {
                "status": "ok",
                "name": name,
                "model": str(model_path),
                "model_sha256": model_sha,
                "params": params,
                "seconds": time.monotonic() - t0,
                "rank": ctx.rank,
            }
            summary["familiarity"], warnings = slide_familiarity(
                name, res.familiarity, res.tile_familiarity
            )
            for line in warnings:
                print(line, file=sys.stderr, flush=True)
            write_json_atomic(summary_path, summary)
            outcomes.append(
                {"slide": str(path), "name": name, "status": "ok", "objects": res.objects}
            )
            print(
                f"  [rank {ctx.rank}] {name}: {res.objects} objects, {res.tissue_megapixels:.1f} MP "
                f"in {summary['seconds']:.1f}s",
                flush=True,
            )
        everyone = [o for part in gather(outcomes, ctx) for o in part]
        failed = [o for o in everyone if o["status"] == "failed"]
        if ctx.is_main:
            payload = read_checkpoint(model_path)
            write_json_atomic(
                out / "run.json",
                {
                    "command": "milsil batch",
                    "slides_dir": str(folder.resolve()),
                    "model": {
                        "path": str(model_path.resolve()),
                        "sha256": model_sha,
                        "config": payload.get("config"),
                    },
                    "params": params,
                    "world_size": ctx.world_size,
                    "device": str(ctx.device),
                    "versions": run_versions(),
                    "started": started,
                    "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "slides": everyone,
                    "failed": len(failed),
                },
            )
            counts = {
                s: sum(o["status"] == s for o in everyone) for s in ("ok", "skipped", "failed")
            }
            print(
                f"done: {counts['ok']} annotated, {counts['skipped']} skipped (done before), "
                f"{counts['failed']} failed; metadata {out / 'run.json'}"
            )
            if failed:
                print(f"{len(failed)} slide(s) failed:", file=sys.stderr)
                for o in failed:
                    print(f"  {o['slide']}: {o['error']}", file=sys.stderr)
        return 1 if failed else 0
    finally:
        finish(ctx)
