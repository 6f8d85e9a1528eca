"""A whole slide to QuPath annotations in one call.

:func:`annotate_slide` is the ``annotate-slide`` command, each slide of ``batch`` and the
server's AnnotateSlide RPC: slide -> logit heatmap of its tissue -> GeoJSON outlines (and
a probability TIFF), resumable through its work folder.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from milsil.atomic import write_json_atomic
from milsil.models import target_class_index
from milsil.wsi.heatmap import SlideProgress, Timings, default_work_dir, slide_heatmap
from milsil.wsi.polygons import heatmap_polygons
from milsil.wsi.reader import open_slide
from milsil.wsi.settings import SlideSettings
from milsil.wsi.tiff import write_probability_tiff


@dataclass
class AnnotateResult:
    """What :func:`annotate_slide` produced."""

    slide: str
    geojson: str | None
    tiff: str | None
    objects: int
    tiles_total: int
    tiles_computed: int
    tissue_megapixels: float
    stride: int
    downsample: float
    threshold: float
    class_name: str
    stopped: bool
    timings: dict[str, float] = field(default_factory=dict)
    collection: dict[str, Any] | None = None
    # the outline clean-up used: settings as given, their units ("um"/"px"), pixel size
    outline_settings: dict[str, Any] | None = None
    # With familiarity: each computed slide tile's FamiliarityScore ((tile row, tile col)
    # -> score) and the whole slide's (None: not asked, or a model without a reference).
    tile_familiarity: dict[tuple[int, int], Any] = field(default_factory=dict)
    familiarity: Any = None

    def summary(self) -> dict[str, Any]:
        skip = ("collection", "tile_familiarity", "familiarity")
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in skip}


def _timed_tiff(heat: Any, tiff: str | Path, cls: int) -> float:
    """Write the probability TIFF; the seconds it took (run on a side thread)."""
    t0 = time.perf_counter()
    write_probability_tiff(heat, tiff, cls)
    return time.perf_counter() - t0


def annotate_slide(
    slide_path: str | Path,
    model: Any,
    output: str | Path | None,
    settings: SlideSettings | None = None,
    *,
    tiff: str | Path | None = None,
    work_dir: str | Path | None = None,
    device: Any = None,
    keep_work: bool = False,
    progress: Callable[[SlideProgress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    roi: Any = None,
    familiarity: bool = False,
) -> AnnotateResult:
    """Slide -> logit heatmap (tissue tiles) -> QuPath GeoJSON (and a probability TIFF).

    ``settings`` (default :class:`SlideSettings`) say how: stride, downsample, tiles,
    threshold, class and outline clean-up. ``output`` (``None``: return the collection
    only) is written atomically. The work folder (default ``<output>.work``, or a
    temporary one) holds the resumable state; it is removed after success unless
    ``keep_work``. When stopped, the result has ``stopped=True`` and nothing is written; a
    rerun continues. ``roi`` (a shapely geometry, level-0 px): only tiles that intersect it
    are computed, and the outlines are clipped to it. ``familiarity``: also judge how like
    the training data each slide tile and the whole slide were, from the same pass
    (``tile_familiarity``, ``familiarity``; a model with a familiarity reference).
    """
    settings = settings if settings is not None else SlideSettings()
    timings = Timings()
    cls = target_class_index(model.class_names, settings.class_name)
    with open_slide(slide_path) as slide:
        temp_work = None
        if work_dir is None:
            if output is not None:
                work_dir = default_work_dir(output)
            else:
                temp_work = Path(tempfile.mkdtemp(prefix="milsil-slide-"))
                work_dir = temp_work
        try:
            heat, stopped = slide_heatmap(
                model,
                slide,
                work_dir,
                settings,
                device=device,
                progress=progress,
                should_stop=should_stop,
                timings=timings,
                roi=roi,
                familiarity=familiarity,
            )
            result = AnnotateResult(
                slide=str(slide_path),
                geojson=None,
                tiff=None,
                objects=0,
                tiles_total=heat.tiles_total,
                tiles_computed=len(heat.done),
                tissue_megapixels=heat.computed_megapixels(),
                stride=heat.stride,
                downsample=heat.downsample,
                threshold=settings.threshold,
                class_name=model.class_names[cls],
                stopped=stopped,
            )
            if stopped:
                result.timings = asdict(timings)
                return result
            result.tile_familiarity = heat.tile_familiarity(model)
            result.familiarity = heat.familiarity(model)
            if progress is not None:
                progress(
                    SlideProgress(
                        len(heat.done),
                        len(heat.done),
                        result.tissue_megapixels,
                        0.0,
                        0.0,
                        "polygons",
                    )
                )
            # The TIFF and the outlines both only read the finished map: the TIFF is
            # written on its own thread while the outlines are traced and written here.
            with ThreadPoolExecutor(1, thread_name_prefix="milsil-tiff") as pool:
                tiff_job = None
                if tiff is not None:
                    tiff_job = pool.submit(_timed_tiff, heat, tiff, cls)
                t0 = time.perf_counter()
                collection = heatmap_polygons(
                    heat,
                    cls,
                    settings.threshold,
                    min_area=settings.min_area,
                    simplify_tolerance=settings.simplify_tolerance,
                    roi=roi,
                    outline=settings.outline,
                    pixel_size_um=settings.outline_pixel_size(slide.mpp),
                )
                timings.polygons = time.perf_counter() - t0
                result.collection = collection
                result.objects = len(collection["features"])
                result.outline_settings = collection["outline_settings"]
                if output is not None:
                    write_json_atomic(Path(output), collection)
                    result.geojson = str(output)
                if tiff_job is not None:
                    timings.tiff = tiff_job.result()
                    result.tiff = str(tiff)
            result.timings = asdict(timings)
            del heat
            if not keep_work:
                shutil.rmtree(work_dir, ignore_errors=True)
            return result
        finally:
            if temp_work is not None:
                shutil.rmtree(temp_work, ignore_errors=True)
