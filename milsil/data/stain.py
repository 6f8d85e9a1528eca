"""Optional stain normalization (``--stain-normalize macenko|reinhard|none``), with torchstain.

A model trained on one lab's H&E sees another lab's stain as a different image. With a
method chosen at training, the model carries a *target* (:class:`milsil.models.stain.
StainTarget`, in the checkpoint under ``"stain_normalization"``) and every input is mapped
onto it before it becomes a tensor. torchstain (numpy backend: no torch or TensorFlow in
the path, the same numbers on every device) estimates the stains; this module decides which
pixels it estimates them from, and applies the result.

**The target** (:func:`fit_stain_target`) is fitted from up to :data:`FIT_IMAGES` training
bags spread evenly over the training records: torchstain's estimate of each (Macenko: the
H and E optical-density vectors ``HERef`` and their 99th-percentile concentrations
``maxCRef``; Reinhard: LAB means and standard deviations), then the element-wise median,
Macenko's vectors rescaled to unit length. The median rather than one "representative"
image: no image has to be chosen by hand, and a few atypical images (mostly background,
a fold, a pen mark) cannot pull it.

**One region, one transform.** torchstain's ``normalize`` re-estimates the source stain
from whatever array it is given, so calling it chunk by chunk would change the colours at
every chunk and band seam. Instead the source stain is estimated ONCE per region, and a
fixed per-pixel :class:`StainTransform` is then applied to each chunk (chunks therefore
join exactly). Which pixels a region's source stain is estimated from (library, CLI and
server follow the same rule, so they give the same numbers):

* an image given to ``logit_heatmap`` / ``iter_logit_bands`` (also ``milsil heatmap``,
  ``measure_objects``) and a streamed region (the server's Heatmap, Annotate,
  MeasureObjects, ``iter_region_bands``): the region's *first band*, i.e. its first
  ``stream_band_rows(model, width, stride, device)`` interior rows (all of it when it is
  shorter), the band a streamed region computes first, before later rows have arrived;
* a bag (training, validation, ClassifyBag): all its patches together;
* ``prepare_image`` on its own (CAM, the naive reference): the whole image;
* a whole slide (``slide_heatmap``: ``annotate-slide``, ``batch``, the server's slide
  RPCs): the slide, from :data:`SLIDE_SAMPLE_TILES` tissue tiles (:func:`slide_sample`).

**No tissue, no normalization.** Macenko has nothing to measure on glass. A region where
fewer than :data:`MIN_TISSUE_FRACTION` of the sampled pixels (at least
:data:`MIN_TISSUE_PIXELS`) are stained (optical density >= :data:`BETA` in every
channel, torchstain's own filter), or whose estimate is not finite, is left as it is, and a warning says so once for
that region.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from milsil.errors import MilsilError
from milsil.models.stain import STAIN_METHODS, StainTarget, check_stain_method, model_stain

log = logging.getLogger("milsil.stain")

# Transmitted light (torchstain's default) and the optical density below which a pixel
# counts as unstained (torchstain's default is 0.15). 0.04 by measurement: on the synthetic
# H&E, whose stain vectors are known, 0.15 keeps 1-20% of the pixels, almost no eosin,
# and torchstain's eosin vector came out 16.5 degrees off (median, 12 strongly varied
# patients); with 0.04: 2.9 degrees (haematoxylin 2.4, was 2.8), and no image failed.
IO, BETA = 240.0, 0.04
SAMPLE_PIXELS = 2**18  # at most this many pixels (evenly strided) estimate a source stain
MIN_TISSUE_FRACTION, MIN_TISSUE_PIXELS = 0.01, 64
MAX_STAIN_COSINE = math.cos(math.radians(3))  # H and E closer than 3 degrees: no estimate
FIT_IMAGES = 64  # training bags the target is fitted from
SLIDE_SAMPLE_TILES, SLIDE_SAMPLE_SIDE = 16, 256  # tissue tiles (centre crops) per slide
AUTO = "auto"  # iter_logit_bands: estimate from the image's first band


def _sample(pixels: np.ndarray) -> np.ndarray:
    """The pixels an estimate uses: ``uint8 [M, 3]``, every k-th row and column when there
    are more than :data:`SAMPLE_PIXELS` (deterministic: the same region gives the same
    sample; strided before copying, so a band is never copied whole)."""
    a = np.asarray(pixels, dtype=np.uint8)
    if a.ndim != 3:  # a bag [N, h, w, 3]: its tiles' rows one under another
        a = a.reshape(-1, *a.shape[-2:])
    rows, cols = a.shape[0], a.shape[1]
    k = max(1, math.ceil(rows * cols / SAMPLE_PIXELS))
    k_rows = min(k, max(1, rows))
    k_cols = math.ceil(k / k_rows)
    return np.ascontiguousarray(a[::k_rows, ::k_cols]).reshape(-1, 3)


def _has_tissue(flat: np.ndarray) -> bool:
    """Enough stained pixels (OD >= BETA in every channel, torchstain's own filter)."""
    stained = int((flat.astype(np.float64) + 1 <= IO * math.exp(-BETA)).all(axis=1).sum())
    return stained >= max(MIN_TISSUE_PIXELS, MIN_TISSUE_FRACTION * len(flat))


def estimate_stain(method: str, pixels: np.ndarray) -> dict[str, np.ndarray] | None:
    """torchstain's estimate of the stain of ``pixels`` (uint8 ``[..., 3]``), or None when
    they hold too little tissue (or the estimate is not finite).

    Macenko: ``{"vectors": [3, 2], "maxima": [2]}`` (torchstain's ``HERef``/``maxCRef``
    after ``fit``); Reinhard: ``{"means": [3], "stds": [3]}`` (LAB, its ``fit``)."""
    from torchstain.numpy.normalizers import NumpyMacenkoNormalizer, NumpyReinhardNormalizer

    check_stain_method(method)
    flat = _sample(pixels)
    if len(flat) == 0 or not _has_tissue(flat):
        return None
    try:
        with np.errstate(all="ignore"):
            if method == "macenko":
                fitted = NumpyMacenkoNormalizer()
                fitted.fit(flat, Io=IO, beta=BETA)  # its defaults otherwise (alpha 1)
                out = {"vectors": np.asarray(fitted.HERef), "maxima": np.asarray(fitted.maxCRef)}
                # Two distinct stains (grey or black pixels give one vector twice).
                cosine = abs(float(out["vectors"][:, 0] @ out["vectors"][:, 1]))
                ok = out["maxima"].min() > 0 and cosine < MAX_STAIN_COSINE
            else:
                fitted = NumpyReinhardNormalizer()
                fitted.fit(flat)
                out = {
                    "means": np.asarray(fitted.target_means),
                    "stds": np.asarray(fitted.target_stds),
                }
                ok = out["stds"].min() > 1e-6
    except (ValueError, IndexError, np.linalg.LinAlgError):
        return None
    if not ok or not all(np.isfinite(v).all() for v in out.values()):
        return None
    return {k: v.astype(np.float64) for k, v in out.items()}


# --------------------------------------------------------------------------- the target


def fit_stain_target(method: str, images: Iterable[np.ndarray], rule: str = "") -> StainTarget:
    """The median of torchstain's per-image estimates (see the module docstring)."""
    method = check_stain_method(method)
    if method == "none":
        raise MilsilError("fit_stain_target needs a method: macenko or reinhard")
    estimates = [e for e in (estimate_stain(method, im) for im in images) if e is not None]
    if not estimates:
        raise MilsilError(
            f"no training image has enough tissue to fit a {method} stain target "
            f"(each needs {MIN_TISSUE_FRACTION:.0%} stained pixels); train without "
            "--stain-normalize"
        )
    median = {k: np.median(np.stack([e[k] for e in estimates]), axis=0) for k in estimates[0]}
    common = {"method": method, "images": len(estimates), "rule": rule or "median per image"}
    if method == "macenko":
        vectors = median["vectors"] / np.linalg.norm(median["vectors"], axis=0, keepdims=True)
        return StainTarget(
            stain_vectors=tuple(tuple(float(v) for v in row) for row in vectors),
            max_concentrations=tuple(float(v) for v in median["maxima"]),
            **common,
        )
    return StainTarget(
        lab_means=tuple(float(v) for v in median["means"]),
        lab_stds=tuple(float(v) for v in median["stds"]),
        **common,
    )


def fit_records_target(
    method: str, records: Sequence[Any], load: Callable[[Any], np.ndarray]
) -> StainTarget:
    """:func:`fit_stain_target` on up to :data:`FIT_IMAGES` of ``records``' bags
    (``load(record)``: its uint8 pixels), evenly spaced over them (deterministic: a resumed
    run fits the same target)."""
    records = list(records)
    count = min(FIT_IMAGES, len(records))
    picks = sorted({int(i) for i in np.linspace(0, len(records) - 1, count)})
    rule = f"median of per-bag estimates over {len(picks)} evenly spaced training bags"
    return fit_stain_target(method, (load(records[i]) for i in picks), rule)


# --------------------------------------------------------------------------- applying it


@dataclass(frozen=True)
class StainTransform:
    """A fixed per-pixel map from one region's stain to the target: uint8 in, uint8 out.

    Per pixel, so applying it to chunks gives exactly what applying it to the whole region
    gives. Macenko: optical density ``-log((I + 1) / Io)`` is unmixed with the region's
    vectors, the concentrations rescaled by the target's over the region's maxima and
    remixed with the target's vectors: one 3 x 3 matrix on optical density, evaluated
    through 256-entry tables (``table[k, c, v]``). Reinhard: torchstain's LAB conversion,
    each channel standardized with the region's mean and deviation and given the target's.
    """

    method: str
    table: np.ndarray | None = None  # macenko: float32 [3, 3, 256]
    scale: np.ndarray | None = None  # reinhard: LAB out = (lab - shift) * scale + target
    shift: np.ndarray | None = None
    target: np.ndarray | None = None

    @classmethod
    def between(cls, target: StainTarget, source: dict[str, np.ndarray]) -> StainTransform:
        if target.method == "macenko":
            ref = np.asarray(target.stain_vectors, dtype=np.float64)
            gain = np.asarray(target.max_concentrations) / source["maxima"]
            matrix = ref @ np.diag(gain) @ np.linalg.pinv(source["vectors"])
            od = -np.log((np.arange(256, dtype=np.float64) + 1.0) / IO)
            return cls("macenko", table=(matrix[:, :, None] * od).astype(np.float32))
        return cls(
            "reinhard",
            scale=np.asarray(target.lab_stds) / source["stds"],
            shift=source["means"],
            target=np.asarray(target.lab_means),
        )

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        pixels = np.asarray(pixels)
        if pixels.dtype != np.uint8 or pixels.shape[-1:] != (3,):
            raise MilsilError(
                f"stain normalization needs uint8 [..., 3] pixels, got {pixels.dtype} {pixels.shape}"
            )
        if self.method == "macenko":
            t = self.table
            channels = [pixels[..., c] for c in range(3)]
            od = [
                t[k, 0][channels[0]] + t[k, 1][channels[1]] + t[k, 2][channels[2]] for k in range(3)
            ]
            out = IO * np.exp(-np.stack(od, axis=-1))
        else:
            from torchstain.numpy.utils import lab2rgb, lab_merge, lab_split, rgb2lab

            labs = lab_split(rgb2lab(pixels.astype(np.float32) / 255.0))
            mapped = [
                ((x - m) * s + t).astype(np.float32)
                for x, m, s, t in zip(labs, self.shift, self.scale, self.target, strict=True)
            ]
            out = lab2rgb(lab_merge(*mapped)) * 255.0
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def apply_stain(pixels: np.ndarray, stain: StainTransform | None) -> np.ndarray:
    """THE function every place that turns pixels into model input calls (training bags,
    ``prepare_image``, the chunks of ``iter_logit_bands``, ClassifyBag, slide tiles):
    ``pixels`` mapped by the region's transform, or unchanged when there is none."""
    return pixels if stain is None else stain(pixels)


def region_stain(model: Any, sample: np.ndarray, what: str = "a region") -> StainTransform | None:
    """The transform for one region of ``model``'s input, estimated from ``sample`` (the
    pixels the module docstring's rule names). None: the model has no target, or the
    sample has no tissue (a warning says so, once for the region)."""
    return target_transform(model_stain(model), sample, what)


def target_transform(
    target: StainTarget | None, sample: np.ndarray, what: str = "a region"
) -> StainTransform | None:
    """:func:`region_stain` for a target rather than a model (training bags)."""
    if target is None:
        return None
    source = estimate_stain(target.method, sample)
    if source is None:
        log.warning(
            "milsil: %s has too little tissue to estimate its stain; stain normalization "
            "(%s) skipped for it",
            what,
            target.method,
        )
        return None
    return StainTransform.between(target, source)


def first_band_stain(
    model: Any, pixels: np.ndarray, margin: int, band_rows: Callable[[], int]
) -> StainTransform | None:
    """The transform of an image given whole (uint8 ``[H, W, 3]`` with ``margin`` pixels of
    context on every side): estimated from its first ``band_rows()`` interior rows, the
    band a streamed region of the same width computes first (:func:`band_stain`)."""
    if model_stain(model) is None:
        return None
    h, w = pixels.shape[:2]
    interior = pixels[margin : h - margin, margin : w - margin]
    return region_stain(model, interior[: band_rows()], "an image's first band")


def band_stain(model: Any, band: Any, margin: int) -> StainTransform | None:
    """The transform of a streamed region's band (:class:`milsil.inference.tiling.Band`):
    estimated from the interior of the first band computed, then shared by every band of
    that region (``band.shared``)."""
    if model_stain(model) is None:
        return None
    if "stain" not in band.shared:
        h, w = band.pixels.shape[:2]
        interior = band.pixels[margin : h - margin, margin : w - margin]
        band.shared["stain"] = region_stain(model, interior, "a streamed region's first band")
    return band.shared["stain"]


def bag_stain(model: Any, tiles: Sequence[np.ndarray]) -> StainTransform | None:
    """The transform of a bag of uint8 tiles (ClassifyBag): estimated from all its tiles
    together, as a training bag is from all its patches."""
    if model_stain(model) is None:
        return None
    return region_stain(model, np.stack(tiles), "a bag")


def slide_sample(tiles: Sequence[Any], read: Any) -> np.ndarray:
    """The pixels a slide's stain is estimated from: centre crops
    (:data:`SLIDE_SAMPLE_SIDE`) of up to :data:`SLIDE_SAMPLE_TILES` tiles, the most tissue
    first (ties in grid order); ``read(tile, x, y, w, h)`` gives a crop's uint8 pixels."""
    ranked = sorted(range(len(tiles)), key=lambda i: (-float(getattr(tiles[i], "tissue", 1)), i))
    crops = []
    for i in ranked[:SLIDE_SAMPLE_TILES]:
        t = tiles[i]
        w, h = min(t.width, SLIDE_SAMPLE_SIDE), min(t.height, SLIDE_SAMPLE_SIDE)
        crops.append(read(t, (t.width - w) // 2, (t.height - h) // 2, w, h).reshape(-1, 3))
    return np.concatenate(crops) if crops else np.zeros((0, 3), dtype=np.uint8)


__all__ = [
    "AUTO",
    "STAIN_METHODS",
    "StainTransform",
    "apply_stain",
    "bag_stain",
    "band_stain",
    "estimate_stain",
    "fit_records_target",
    "fit_stain_target",
    "first_band_stain",
    "region_stain",
    "slide_sample",
    "target_transform",
]
