"""Whole-slide work the server does for AnnotateSlide and SlideHeatmap, without gRPC.

A :class:`SlideJob` is a validated request: the slide (inside a slide root), the model,
the :class:`~milsil.wsi.settings.SlideSettings`, the TIFF target and the resumable work
folder, whose name is a digest of everything that changes the map (so a retry with the
same settings resumes, and anything different starts afresh). :func:`annotate` and
:func:`heatmap` call the library.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from milsil.wsi.annotate import AnnotateResult, annotate_slide
from milsil.wsi.heatmap import SlideHeatmap, SlideProgress, Timings, slide_heatmap
from milsil.wsi.reader import Slide
from milsil.wsi.settings import SlideSettings


@dataclass
class SlideJob:
    """What to read, with what, how, and where."""

    model_id: str
    model: Any
    path: Path  # the slide, resolved inside a slide root
    request_path: str  # as the client named it
    settings: SlideSettings
    class_index: int
    tiff: Path | None  # absolute TIFF target, or None
    tiff_rel: str  # its path relative to the output root
    work_dir: Path  # resumable state, one per (slide, model, settings)
    roi: Any = None  # region of interest (shapely, level-0 px), or None: the whole slide

    @property
    def class_name(self) -> str:
        return self.model.class_names[self.class_index]

    @property
    def first_stage(self) -> str:
        return "tissue" if self.settings.tissue_only else "heatmap"


def default_tiff_name(in_root: Path, model_id: str, settings: SlideSettings) -> str:
    """``<slide>.<model>.s<stride>-ds<downsample>.tif``, relative to the output root."""
    return f"{in_root.as_posix()}.{model_id}.s{settings.stride}-ds{settings.downsample:g}.tif"


def work_dir(
    root: Path, slide: Path, model_id: str, model_sha256: str, settings: SlideSettings
) -> Path:
    """The work folder under ``root/slide-work`` for this slide file, model and settings."""
    st = slide.stat()
    key = {
        "slide": str(slide),
        "bytes": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "model": model_id,
        "model_sha256": model_sha256,
        "stride": settings.stride,
        "downsample": settings.downsample,
        "tile": settings.tile,
        "tissue_only": settings.tissue_only,
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
    return root / "slide-work" / digest


def annotate(
    job: SlideJob,
    device: Any,
    progress: Callable[[SlideProgress], None],
    should_stop: Callable[[], bool],
) -> AnnotateResult:
    """Outlines of ``job``'s class (and its TIFF); the work folder is kept for the caller."""
    return annotate_slide(
        job.path,
        job.model,
        None,
        job.settings,
        tiff=job.tiff,
        work_dir=job.work_dir,
        device=device,
        keep_work=True,  # removed by the caller, once the result fits in a message
        progress=progress,
        should_stop=should_stop,
        roi=job.roi,
    )


def heatmap(
    job: SlideJob,
    slide: Slide,
    device: Any,
    progress: Callable[[SlideProgress], None],
    should_stop: Callable[[], bool],
    timings: Timings,
) -> tuple[SlideHeatmap, bool]:
    """The slide's logit map in ``job.work_dir``: ``(map, stopped)``."""
    return slide_heatmap(
        job.model,
        slide,
        job.work_dir,
        job.settings,
        device=device,
        progress=progress,
        should_stop=should_stop,
        timings=timings,
        roi=job.roi,
    )
