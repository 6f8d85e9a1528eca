"""Resumable whole-slide logit heatmaps.

:func:`slide_heatmap` computes the paper's logit heatmap of a whole slide tile by tile.
Each tile is read with the context :mod:`milsil.inference.tiling` prescribes (real
neighbouring pixels) and passed to :func:`milsil.inference.heatmap.logit_heatmap` with ``margin``, so the
stitched map equals ``logit_heatmap`` of the whole slide image: no seams. Beyond the
slide's edge the slide is mirrored, exactly as ``logit_heatmap`` pads at an image border.
Logits go to a memory-mapped file in a work folder (:class:`SlideHeatmap`) and every
finished tile is appended to a log after its data is flushed, so memory stays bounded and
an interrupted run continues where it stopped. With ``familiarity`` (a model with a
familiarity reference) the same pass also stores each sample's distance from the training
data (:mod:`milsil.inference.familiarity`), judged per slide tile and for the whole slide.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from milsil.models.stain import model_stain
from milsil.wsi.pipeline import OrderedWriter, read_ahead, to_device_ahead
from milsil.wsi.reader import Slide
from milsil.wsi.settings import SlideSettings
from milsil.wsi.tissue import TissueMask, tile_grid, tissue_mask


@dataclass
class SlideProgress:
    """What a whole-slide run has done: tiles (tissue only) and timings so far."""

    tiles_done: int
    tiles_total: int
    tissue_megapixels: float
    elapsed_seconds: float
    eta_seconds: float
    stage: str = "heatmap"


def _model_fingerprint(model: Any) -> str:
    """A hash of the weights, so a resumed run never mixes two models' tiles."""
    h = hashlib.sha256()
    h.update(json.dumps(model.config.to_dict(), sort_keys=True, default=str).encode())
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:32]


def _slide_identity(slide: Slide) -> dict[str, Any]:
    st = slide.path.stat()
    return {
        "path": str(slide.path.resolve()),
        "bytes": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "dimensions": list(slide.dimensions),
    }


class SlideHeatmap:
    """A whole-slide logit map on disk: ``logits [C, rows, cols]`` (float32 memmap).

    Sample ``[i, j]`` is the logit of the window centred on pixel ``(i*stride, j*stride)``
    of the slide seen at ``downsample``, i.e. level-0 ``(j*stride*downsample,
    i*stride*downsample)``. Tiles never computed (no tissue) are ``NaN`` when read through
    :meth:`block`.
    """

    def __init__(self, work_dir: Path, meta: dict[str, Any], done: set[tuple[int, int]]) -> None:
        self.work_dir = work_dir
        self.meta = meta
        self.done = done
        self.stride = int(meta["stride"])
        self.downsample = float(meta["downsample"])
        self.tile = int(meta["tile"])
        self.num_classes = int(meta["num_classes"])
        self.rows, self.cols = int(meta["rows"]), int(meta["cols"])
        self.region_size = tuple(meta["region_size"])
        self.class_names = list(meta["class_names"])
        self.mpp = meta.get("mpp")
        self.tiles_total = len(done)
        self.logits = np.memmap(
            work_dir / "logits.f32",
            dtype=np.float32,
            mode="r+",
            shape=(self.num_classes, self.rows, self.cols),
        )
        # Per-sample distance from the training data (a run with familiarity), else None.
        self.distance = (
            np.memmap(
                work_dir / "distance.f32", dtype=np.float32, mode="r+", shape=(self.rows, self.cols)
            )
            if meta.get("familiarity")
            else None
        )
        # Each slide tile's appearance sums (a reference with an appearance part), else None.
        self.appearance = (
            np.memmap(
                work_dir / "appearance.f64",
                dtype=np.float64,
                mode="r+",
                shape=appearance_shape(meta),
            )
            if meta.get("appearance")
            else None
        )

    @property
    def tile_samples(self) -> int:
        return self.tile // self.stride

    def valid(self, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        """Which samples of the block were computed (their tile is done)."""
        t = self.tile_samples
        out = np.zeros((r1 - r0, c1 - c0), dtype=bool)
        for tr, tc in self.done_tiles(r0, r1, c0, c1):
            a0, a1 = max(tr * t, r0), min((tr + 1) * t, r1)
            b0, b1 = max(tc * t, c0), min((tc + 1) * t, c1)
            out[a0 - r0 : a1 - r0, b0 - c0 : b1 - c0] = True
        return out

    def done_tiles(self, r0: int, r1: int, c0: int, c1: int) -> list[tuple[int, int]]:
        """The computed slide tiles ``(tile row, tile col)`` a block of samples touches."""
        t = self.tile_samples
        return [
            (tr, tc)
            for tr in range(r0 // t, (r1 - 1) // t + 1)
            for tc in range(c0 // t, (c1 - 1) // t + 1)
            if (tr, tc) in self.done
        ]

    def block(self, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        """Logits ``[C, r1-r0, c1-c0]``; NaN where not computed."""
        out = np.array(self.logits[:, r0:r1, c0:c1], dtype=np.float32)
        out[:, ~self.valid(r0, r1, c0, c1)] = np.nan
        return out

    def probability_block(self, class_index: int, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        """Softmax probability of one class over the block; NaN where not computed."""
        lg = self.block(r0, r1, c0, c1).astype(np.float64)
        with np.errstate(invalid="ignore"):
            e = np.exp(lg - lg.max(axis=0, keepdims=True))
            return (e[class_index] / e.sum(axis=0)).astype(np.float32)

    def distance_block(self, r0: int, r1: int, c0: int, c1: int) -> np.ndarray | None:
        """Per-sample distance ``[r1-r0, c1-c0]`` (NaN where not computed), or None when the
        run computed no distance."""
        if self.distance is None:
            return None
        out = np.array(self.distance[r0:r1, c0:c1], dtype=np.float32)
        out[~self.valid(r0, r1, c0, c1)] = np.nan
        return out

    def tile_familiarity(self, model: Any) -> dict[tuple[int, int], Any]:
        """``(tile row, tile col) -> FamiliarityScore`` of every computed slide tile (the
        unit a slide is judged in); empty when the run computed no distance."""
        from milsil.inference.familiarity import region_score

        if self.distance is None:
            return {}
        t = self.tile_samples
        scores = {}
        for r, c in sorted(self.done):
            block = np.asarray(self.distance[r * t : (r + 1) * t, c * t : (c + 1) * t])
            score = region_score(model, block, appearance=self.tile_appearance(r, c))
            if score is not None:
                scores[(r, c)] = score
        return scores

    def familiarity(self, model: Any) -> Any:
        """The whole computed map's ``FamiliarityScore`` (tile by tile, so memory stays
        bounded), or None (no distance, or no reference)."""
        from milsil.inference.familiarity import FamiliarityAccumulator

        if self.distance is None:
            return None
        judge = FamiliarityAccumulator(model)
        t = self.tile_samples
        for r, c in sorted(self.done):
            judge.add(np.asarray(self.distance[r * t : (r + 1) * t, c * t : (c + 1) * t]))
            judge.add_appearance(self.tile_appearance(r, c))
        return judge.result()

    def tile_appearance(self, row: int, col: int) -> np.ndarray | None:
        """A computed slide tile's appearance sums (its own pixels), or None (none stored)."""
        return None if self.appearance is None else np.array(self.appearance[row, col])

    def block_appearance(self, r0: int, r1: int, c0: int, c1: int) -> np.ndarray | None:
        """The appearance sums of the computed slide tiles a block of samples touches
        (appearance is stored per slide tile), or None (none stored, none computed)."""
        if self.appearance is None:
            return None
        touched = [self.tile_appearance(r, c) for r, c in self.done_tiles(r0, r1, c0, c1)]
        return sum(touched) if touched else None

    def to_array(self) -> np.ndarray:
        """The whole logit map in memory (small slides and tests only)."""
        return self.block(0, self.rows, 0, self.cols)

    def computed_megapixels(self) -> float:
        """Level-0 megapixels of the computed tiles (what throughput is measured on)."""
        t = self.tile
        rw, rh = self.region_size
        total = 0
        for r, c in self.done:
            total += min(t, rw - c * t) * min(t, rh - r * t)
        return total * self.downsample**2 / 1e6


def _prepare_work_dir(work_dir: Path, meta: dict[str, Any]) -> set[tuple[int, int]]:
    """Reuse ``work_dir`` when it holds the same job, else start it afresh; the done tiles."""
    meta_path = work_dir / "heatmap.json"
    shape = (meta["num_classes"], meta["rows"], meta["cols"])
    if meta_path.is_file():
        try:
            old = json.loads(meta_path.read_text())
        except (json.JSONDecodeError, OSError):
            old = None
        maps = ["logits.f32"] + (["distance.f32"] if meta.get("familiarity") else [])
        maps += ["appearance.f64"] if meta.get("appearance") else []
        if old == meta and all((work_dir / name).is_file() for name in maps):
            done = set()
            log = work_dir / "tiles.done"
            if log.is_file():
                for line in log.read_text().splitlines():
                    parts = line.split()
                    if len(parts) == 3 and parts[2] == "ok":  # a torn last line is ignored
                        done.add((int(parts[0]), int(parts[1])))
            return done
    if work_dir.exists():
        for name in ("heatmap.json", "logits.f32", "distance.f32", "appearance.f64", "tiles.done"):
            (work_dir / name).unlink(missing_ok=True)
    work_dir.mkdir(parents=True, exist_ok=True)
    nbytes = int(np.prod(shape)) * 4
    with open(work_dir / "logits.f32", "wb") as f:  # sparse: untouched tiles take no disk
        if nbytes:
            f.truncate(nbytes)
    if meta.get("familiarity"):
        with open(work_dir / "distance.f32", "wb") as f:
            if nbytes:
                f.truncate(nbytes // meta["num_classes"])
    if meta.get("appearance"):
        with open(work_dir / "appearance.f64", "wb") as f:
            f.truncate(int(np.prod(appearance_shape(meta))) * 8)
    tmp = meta_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(meta, indent=1, sort_keys=True))
    os.replace(tmp, meta_path)
    return set()


def appearance_shape(meta: dict[str, Any]) -> tuple[int, int, int]:
    """``(tile rows, tile cols, SUMS)``: the slide tiles' appearance sums store."""
    from milsil.models.familiarity import SUMS

    width, height = meta["region_size"]
    tile = meta["tile"]
    return (max(1, -(-height // tile)), max(1, -(-width // tile)), SUMS)


def default_work_dir(output: str | Path) -> Path:
    """Where a run keeps its resumable state: ``<output>.work`` beside the output."""
    output = Path(output)
    return output.with_name(output.name + ".work")


@dataclass
class Timings:
    """Seconds spent reading pixels, running the model, making polygons, writing the TIFF.

    With reader threads, ``read`` is the readers' time summed (it overlaps the compute);
    ``wait`` is what the compute spent waiting for a tile, ``write`` the writer thread's
    time storing tiles (memmap, resume log, fsync), also off the compute's path.
    """

    read: float = 0.0
    compute: float = 0.0
    polygons: float = 0.0
    tiff: float = 0.0
    tissue: float = 0.0
    wait: float = 0.0
    write: float = 0.0


def tiles_in(tiles: list, roi: Any) -> list:
    """The tiles whose level-0 rectangle intersects ``roi`` (a shapely geometry)."""
    import shapely

    if not tiles:
        return tiles
    boxes = shapely.box(
        [t.x for t in tiles],
        [t.y for t in tiles],
        [t.x + t.width * t.downsample for t in tiles],
        [t.y + t.height * t.downsample for t in tiles],
    )
    shapely.prepare(roi)
    keep = shapely.intersects(roi, boxes)
    return [t for t, k in zip(tiles, keep, strict=True) if k]


@dataclass(frozen=True)
class TileReader:
    """Reads one tile as the compute wants it; called from the reader threads.

    The tile plus a halo of ``halo`` pixels of real context, clipped to the slide; beyond
    the slide the image is mirrored, as ``logit_heatmap`` pads at an image border. The
    result is the normalised ``[3, H, W]`` tensor (pinned when ``pin``, for a side-stream
    copy to a GPU) and the seconds the read took. ``bench/slide_bench.py --compute none``
    times exactly this.
    """

    slide: Any  # a Slide, or any reader with the same read() and region_size()
    halo: int
    downsample: float
    mean: Any
    std: Any
    pin: bool = False
    stain: Any = None  # the slide's StainTransform (milsil.data.stain), or None
    # When a dict: each read tile's appearance sums (its own pixels, before any stain
    # normalization), by (tile row, tile col), for the familiarity of a slide tile.
    appearance: dict | None = None

    def __call__(self, t: Any) -> tuple[Any, float]:
        from milsil.data import to_tensor
        from milsil.data.stain import apply_stain
        from milsil.inference.tiling import context_box, mirror_pad

        t0 = time.perf_counter()
        ds = self.downsample
        rw, rh = self.slide.region_size(ds)
        box = context_box(t.px, t.py, t.width, t.height, self.halo, rw, rh)
        rgb = self.slide.read(round(box.x0 * ds), round(box.y0 * ds), box.width, box.height, ds)
        if self.appearance is not None:
            from milsil.data.appearance import appearance_sums

            y, x = t.py - box.y0, t.px - box.x0
            own = rgb[y : y + t.height, x : x + t.width]
            self.appearance[(t.row, t.col)] = appearance_sums(own)
        pixels = to_tensor(apply_stain(rgb, self.stain), self.mean, self.std)
        canvas = mirror_pad(pixels, box.left, box.right, box.top, box.bottom)
        if self.pin:
            canvas = canvas.pin_memory()
        return canvas, time.perf_counter() - t0


def slide_stain(model: Any, slide: Any, tiles: list, downsample: float) -> Any:
    """The slide's stain transform (:mod:`milsil.data.stain`): estimated once, from centre
    crops of its most-tissue tiles (:func:`milsil.data.stain.slide_sample`); None when the
    model has no target or the slide no tissue."""
    from milsil.data.stain import region_stain, slide_sample

    if model_stain(model) is None:
        return None

    def read(t: Any, x: int, y: int, w: int, h: int) -> np.ndarray:
        ds = downsample
        return slide.read(round((t.px + x) * ds), round((t.py + y) * ds), w, h, ds)

    return region_stain(model, slide_sample(tiles, read), f"slide {slide.path.name}")


def _timed(tiles_read: Iterator[tuple[Any, tuple[Any, float]]], timings: Timings) -> Iterator:
    """The read tiles, their reading time added to ``timings.read`` as they arrive."""
    for t, (canvas, seconds) in tiles_read:
        timings.read += seconds
        yield t, (canvas, seconds)


def _store_tile(
    heat: SlideHeatmap,
    log: Any,
    t: Any,
    values: np.ndarray,
    ts: int,
    timings: Timings,
    looks: np.ndarray | None = None,
) -> None:
    """Write one tile's logits (and its distance channel, with familiarity), then log it
    as done (after the data is flushed, so a crash never logs a tile whose logits are not
    on disk). Runs on the writer thread."""
    t0 = time.perf_counter()
    r0, c0 = t.row * ts, t.col * ts
    rows, cols = values.shape[1], values.shape[2]
    heat.logits[:, r0 : r0 + rows, c0 : c0 + cols] = values[: heat.num_classes]
    heat.logits.flush()
    if heat.distance is not None:
        heat.distance[r0 : r0 + rows, c0 : c0 + cols] = values[heat.num_classes]
        heat.distance.flush()
    if heat.appearance is not None and looks is not None:
        heat.appearance[t.row, t.col] = looks
        heat.appearance.flush()
    log.write(f"{t.row} {t.col} ok\n")
    log.flush()
    os.fsync(log.fileno())
    heat.done.add((t.row, t.col))
    timings.write += time.perf_counter() - t0


def slide_heatmap(
    model: Any,
    slide: Slide,
    work_dir: str | Path,
    settings: SlideSettings,
    *,
    tissue: TissueMask | None = None,
    device: Any = None,
    progress: Callable[[SlideProgress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    timings: Timings | None = None,
    roi: Any = None,
    familiarity: bool = False,
) -> tuple[SlideHeatmap, bool]:
    """The logit heatmap of a whole slide, tile by tile, resumable. Returns ``(map, stopped)``.

    ``familiarity``: also each sample's distance from the training data, from the same pass
    (``SlideHeatmap.distance``; only for a model with a familiarity reference).

    ``roi``: a shapely (Multi)Polygon in level-0 pixels: only tiles that intersect it are
    computed (tiles of an earlier run with another region of interest are kept).

    Reads ``stride``, ``downsample``, ``tile``, ``tissue_only``, ``bf16`` and ``precision`` from
    ``settings``. ``tile`` (output pixels at ``downsample``, a multiple of ``stride``)
    bounds the pixels read at once; the model's own tiling bounds its activations. A rerun
    with the same slide, model and settings in the same ``work_dir`` skips finished tiles;
    anything different starts afresh. ``should_stop`` is polled between tiles.

    A pipeline (:mod:`milsil.wsi.pipeline`): ``settings.readers`` threads read tiles ahead
    of the compute, a writer thread stores finished tiles behind it, and on CUDA each tile
    is copied from pinned memory on a side stream; every stage keeps the tile order, so the
    map is the sequential one (``readers=0``) bit for bit.
    """
    import torch

    from milsil.inference.heatmap import chunk_side, iter_logit_bands, logit_heatmap, output_size
    from milsil.inference.tiling import context_pixels
    from milsil.models.familiarity import model_familiarity

    stride, ds, tile = settings.stride, settings.downsample, settings.tile
    tissue_only, bf16 = settings.tissue_only, settings.bf16
    halo = context_pixels(model)
    # Chunks of the network as a streamed region's (cache-sized on a CPU).
    chunk = chunk_side(model, stride, device or next(model.parameters()).device)
    timings = timings if timings is not None else Timings()
    work_dir = Path(work_dir)
    rw, rh = slide.region_size(ds)
    meta = {
        "format": "milsil-slide-heatmap/1",
        "slide": _slide_identity(slide),
        "model": _model_fingerprint(model),
        "class_names": list(model.class_names),
        "num_classes": int(model.config.num_classes),
        "stride": stride,
        "downsample": ds,
        "tile": tile,
        "tissue_only": bool(tissue_only),
        "region_size": [rw, rh],
        "rows": output_size(rh, stride),
        "cols": output_size(rw, stride),
        "mpp": list(slide.mpp) if slide.mpp else None,
    }
    familiarity = familiarity and model_familiarity(model) is not None
    if familiarity:  # absent otherwise: earlier work folders still resume
        meta["familiarity"] = True
        if model_familiarity(model).appearance is not None:
            meta["appearance"] = True
    if model_stain(model) is not None:  # another target is another map
        meta["stain_normalization"] = model_stain(model).to_payload()
    done = _prepare_work_dir(work_dir, meta)
    heat = SlideHeatmap(work_dir, meta, done)
    if tissue_only and tissue is None:
        t0 = time.perf_counter()
        tissue = tissue_mask(slide)
        timings.tissue += time.perf_counter() - t0
    tiles = tile_grid(slide, tile, ds, tissue if tissue_only else None)
    stain = slide_stain(model, slide, tiles, ds)  # the whole slide's, whatever the roi
    if roi is not None:
        tiles = tiles_in(tiles, roi)
    todo = [t for t in tiles if (t.row, t.col) not in done]
    heat.tiles_total = len(tiles)
    mean, std = model.normalization
    ts = tile // stride
    # The device the tiles go to (the model's when none is given): on CUDA they are pinned
    # by the readers and copied on a side stream.
    target = torch.device(device) if device is not None else next(model.parameters()).device
    read = TileReader(
        slide,
        halo,
        ds,
        mean,
        std,
        pin=target.type == "cuda",
        stain=stain,
        appearance={} if heat.appearance is not None else None,
    )

    log = open(work_dir / "tiles.done", "a")  # noqa: SIM115 - closed in finally
    start = time.perf_counter()
    megapixels = sum(t.width * t.height * t.tissue for t in tiles) * ds * ds / 1e6
    stopped = False
    readers = settings.readers
    tiles_read = read_ahead(todo, read, readers)
    dense = {
        "stride": stride,
        "margin": halo,
        "tile": chunk,
        "device": device,
        "bf16": bf16,
        "precision": settings.precision,
    }
    on_device = to_device_ahead(
        ((t, canvas) for t, (canvas, _) in _timed(tiles_read, timings)), target
    )
    try:
        with OrderedWriter(threaded=readers > 0) as writer:
            for k in range(len(todo)):
                if should_stop is not None and should_stop():
                    stopped = True
                    break
                t0 = time.perf_counter()
                t, canvas = next(on_device)
                t1 = time.perf_counter()
                timings.wait += t1 - t0
                if familiarity:  # the logits and, channel C, the distance: one pass
                    *_, (_, values) = iter_logit_bands(model, canvas, familiarity=True, **dense)
                else:
                    values = logit_heatmap(model, canvas, **dense)
                timings.compute += time.perf_counter() - t1
                looks = read.appearance.pop((t.row, t.col)) if read.appearance is not None else None
                writer.submit(_store_tile, heat, log, t, values.numpy(), ts, timings, looks)
                if progress is not None:
                    elapsed = time.perf_counter() - start
                    remaining = len(todo) - k - 1
                    progress(
                        SlideProgress(
                            tiles_done=len(tiles) - remaining,
                            tiles_total=len(tiles),
                            tissue_megapixels=megapixels,
                            elapsed_seconds=elapsed,
                            eta_seconds=elapsed / (k + 1) * remaining,
                        )
                    )
    finally:
        on_device.close()
        tiles_read.close()
        log.close()
    return heat, stopped
