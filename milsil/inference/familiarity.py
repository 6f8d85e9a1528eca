"""How familiar an input is to the model: per-sample distance maps and region scores.

The statistic and why it was chosen are in :mod:`milsil.models.familiarity` (the
reference a checkpoint carries). Here it is computed where the answers are:

* :func:`distance_map`: the per-sample distance on the :func:`~milsil.inference.heatmap.
  logit_heatmap` grid (same rows, columns, stride and margin rules). It comes from the
  same dense pass as the logits (``familiarity=True`` on ``iter_logit_bands`` /
  ``band_logits`` / ``iter_region_bands``: channel ``C``), so a caller that already
  computes a heatmap gets it at the cost of ``K`` more 1x1 output channels.
* :func:`region_score` / :class:`FamiliarityAccumulator`: a region's score comes from the
  mean distance of its samples (NaN samples and those outside ``mask`` never count), whole
  or band by band: how many training-image spreads it lies above the typical training
  image; above the reference's threshold the region is *unlike the training data*.
* :func:`images_familiarity`: ClassifyBag's tiles and their bag, from each tile's own
  feature map (the valid windows, as at fit time).

Every function returns ``None`` for a model without a reference (trained before the
reference existed, or attention MIL).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from milsil.data.appearance import appearance_sums
from milsil.errors import MilsilError
from milsil.inference.heatmap import iter_logit_bands
from milsil.inference.precision import fp32_precision
from milsil.inference.tiling import Band
from milsil.models.familiarity import model_familiarity
from milsil.models.mil import ConfiguredModel


@dataclass(frozen=True)
class FamiliarityScore:
    """A region's score and the model's threshold: above it, unlike the training data."""

    score: float
    threshold: float

    @property
    def unlike_training(self) -> bool:
        return self.score > self.threshold

    def warning(self, where: str) -> str | None:
        """The CLI's warning line for ``where`` (e.g. an image's name), or None when familiar."""
        if not self.unlike_training:
            return None
        return (
            f"milsil: {where}: unlike the training data "
            f"(score {self.score:.3g}, threshold {self.threshold:.3g})"
        )

    def to_dict(self) -> dict[str, float | bool]:
        """Plain values for run metadata."""
        return {
            "score": float(self.score),
            "threshold": float(self.threshold),
            "unlike_training": self.unlike_training,
        }


def distance_map(
    model: ConfiguredModel,
    image: torch.Tensor | np.ndarray,
    stride: int = 1,
    margin: int = 0,
    tile: int | None = None,
    device: torch.device | str | None = None,
    precision: str = "exact",
) -> torch.Tensor | None:
    """Per-sample distance ``[rows, cols]`` float32 on the ``logit_heatmap`` grid; None
    without a reference. Arguments as :func:`~milsil.inference.heatmap.logit_heatmap`."""
    if model_familiarity(model) is None:
        return None
    bands = iter_logit_bands(
        model, image, stride, margin, tile, device, familiarity=True, precision=precision
    )
    *_, (_, result) = bands  # the last band's result is the whole map
    return result[-1].contiguous()


class FamiliarityAccumulator:
    """A region's score from its distance rows, band by band (streamed regions, slides).

    The mean is summed in float64, so the order of the bands does not matter beyond
    rounding.
    """

    def __init__(self, model: ConfiguredModel) -> None:
        self.reference = model_familiarity(model)
        self.total = 0.0
        self.count = 0
        self.appearance: np.ndarray | None = None  # the pixels' sums, when given any

    def add_pixels(self, rgb: np.ndarray | torch.Tensor) -> None:
        """Count uint8 RGB pixels ``[h, w, 3]`` of the region (each pixel once: a band's
        own rows, not its context) in its appearance (a reference with an appearance
        part; nothing otherwise)."""
        if self.reference is not None and self.reference.appearance is not None:
            self.add_appearance(appearance_sums(rgb))

    def add_appearance(self, sums: np.ndarray | None) -> None:
        """Add appearance sums computed elsewhere (:func:`milsil.data.appearance.
        appearance_sums` of pixels this accumulator has not seen)."""
        if sums is not None:
            sums = np.asarray(sums, dtype=np.float64)
            self.appearance = sums.copy() if self.appearance is None else self.appearance + sums

    def add(
        self,
        distance_rows: torch.Tensor | np.ndarray,
        mask: torch.Tensor | np.ndarray | None = None,
    ) -> None:
        """Count the samples of ``distance_rows`` (``[rows, cols]``) where ``mask`` (same shape,
        True = counts) holds and the distance is a number."""
        d = _as_numpy(distance_rows, "distance_rows").astype(np.float64)
        valid = np.isfinite(d)
        if mask is not None:
            m = _as_numpy(mask, "mask").astype(bool)
            if m.shape != d.shape:
                raise MilsilError(
                    f"mask has shape {m.shape}; it must match the distance rows' {d.shape}"
                )
            valid &= m
        self.total += float(d[valid].sum())
        self.count += int(valid.sum())

    def result(self) -> FamiliarityScore | None:
        """The region's score (its mean distance, in spreads above the typical training
        image) against the threshold; None without a reference or samples."""
        if self.reference is None or self.count == 0:
            return None
        features = self.reference.region_score(self.total / self.count)
        score = self.reference.combined(features, self.appearance)
        return FamiliarityScore(score, self.reference.threshold)


def piece_appearance(model: ConfiguredModel, pixels: np.ndarray) -> np.ndarray | None:
    """The appearance sums of uint8 pixels ``[h, w, 3]`` of a region (a band's own rows, a
    tile's part of the region), for a :class:`FamiliarityAccumulator`; None when the
    model's reference has no appearance part (or the model no reference): nothing to do."""
    reference = model_familiarity(model)
    if reference is None or reference.appearance is None:
        return None
    return appearance_sums(pixels)


def band_appearance(model: ConfiguredModel, band: Band, margin: int) -> np.ndarray | None:
    """:func:`piece_appearance` of a streamed band's own pixels (its rows of the region,
    not its ``margin`` of context)."""
    rows = band.row1 - band.row0
    width = band.pixels.shape[1] - 2 * margin
    return piece_appearance(model, band.pixels[margin : margin + rows, margin : margin + width])


def region_score(
    model: ConfiguredModel,
    distance: torch.Tensor | np.ndarray | None,
    mask: torch.Tensor | np.ndarray | None = None,
    pixels: np.ndarray | torch.Tensor | None = None,
    appearance: np.ndarray | None = None,
) -> FamiliarityScore | None:
    """One region's score from its whole distance map (``[rows, cols]``); ``mask``: the
    samples that count; ``pixels`` (uint8 ``[h, w, 3]``, the region itself) or their
    ``appearance`` sums: the appearance part. None without a reference, a map or any
    sample."""
    if distance is None:
        return None
    accumulator = FamiliarityAccumulator(model)
    accumulator.add(distance, mask)
    if pixels is not None:
        accumulator.add_pixels(pixels)
    accumulator.add_appearance(appearance)
    return accumulator.result()


@dataclass
class BagPass:
    """One backbone pass over a bag of equally sized tiles (:func:`bag_pass`): each tile's
    pooled features (``patch_features``, bit for bit: what the classifier takes) and, for a
    model with a reference, its windows' distances ``[tiles, h, w]``."""

    features: torch.Tensor
    distances: torch.Tensor | None


def bag_pass(
    model: ConfiguredModel,
    tiles: Sequence[np.ndarray],
    stain: object = None,
    chunk: int = 64,
    should_stop: Callable[[], bool] | None = None,
    precision: str = "exact",
) -> BagPass:
    """The features and (with a reference) window distances of uint8 tiles ``[h, w, 3]`` of
    one size, ``chunk`` tiles a pass, under the bag's ``stain`` transform
    (:func:`milsil.data.stain.bag_stain`); ``should_stop`` is polled between chunks and a
    stop raises :class:`Stopped`. Each pass runs under :func:`~milsil.inference.precision.
    fp32_precision` (``precision``: exact by default, so CUDA's default TF32 never applies
    unasked). Needs a model with per-window features (a BagNet)."""
    from milsil.data import to_tensor
    from milsil.data.stain import apply_stain

    reference = model_familiarity(model)
    device = next(model.parameters()).device
    mean, std = model.normalization
    model.eval()
    features, distances = [], []
    with torch.inference_mode():
        for k in range(0, len(tiles), chunk):
            if should_stop is not None and should_stop():
                raise Stopped("stopped between chunks of a bag")
            x = to_tensor(apply_stain(np.stack(tiles[k : k + chunk]), stain), mean, std)
            with fp32_precision(precision):
                maps = model.feature_map(x.to(device))  # [n, D, h, w]
                features.append(maps.mean(dim=(2, 3)).float())
                if reference is not None:
                    d = reference.distances(reference.project(maps, dim=1), dim=1)
                    distances.append(d.cpu())
    return BagPass(torch.cat(features), torch.cat(distances) if distances else None)


class Stopped(MilsilError):
    """A :func:`bag_pass` its caller asked to stop."""


def bag_familiarity(
    model: ConfiguredModel,
    tiles: Sequence[np.ndarray],
    distances: torch.Tensor | None,
    source: np.ndarray | None = None,
) -> tuple[list[FamiliarityScore], FamiliarityScore] | None:
    """Each tile's score and the bag's from :attr:`BagPass.distances` (every valid window
    of each tile, as the reference was fitted) and the tiles' pixels (their appearance).
    ``source``: the image the bag was cut from, whose pixels then give the bag's
    appearance (as the training images were judged: whole). None without a reference."""
    if model_familiarity(model) is None or distances is None:
        return None
    bag = FamiliarityAccumulator(model)
    scores = []
    for tile, d in zip(tiles, distances, strict=True):
        judge = FamiliarityAccumulator(model)
        judge.add(d)
        judge.add_pixels(tile)
        bag.add(d)
        if source is None:
            bag.add_appearance(judge.appearance)
        score = judge.result()
        assert score is not None  # a reference and at least one window
        scores.append(score)
    if source is not None:
        bag.add_pixels(source)
    whole = bag.result()
    assert whole is not None
    return scores, whole


def images_familiarity(
    model: ConfiguredModel, images: Sequence[np.ndarray], source: np.ndarray | None = None
) -> tuple[list[FamiliarityScore], FamiliarityScore] | None:
    """A bag of uint8 tiles judged as ClassifyBag judges it: one :func:`bag_pass` under the
    bag's stain transform, then :func:`bag_familiarity`. None without a reference."""
    from milsil.data.stain import bag_stain

    if model_familiarity(model) is None:
        return None
    model.check_tiles(images)
    passed = bag_pass(model, images, bag_stain(model, images))
    return bag_familiarity(model, images, passed.distances, source)


def slide_familiarity(
    name: str, whole: FamiliarityScore | None, tiles: Mapping[object, FamiliarityScore]
) -> tuple[dict[str, object] | None, list[str]]:
    """A slide's run metadata (the whole slide's score, how many of its slide tiles are
    unlike the training data, the highest tile score) and its warning lines: the whole
    slide when unlike, and the count of unlike slide tiles when there are any (a slide can
    be familiar as a whole with a few unlike tiles: pen marks, a bubble, a fold)."""
    if whole is None:
        return None, []
    unlike = sum(score.unlike_training for score in tiles.values())
    highest = max((score.score for score in tiles.values()), default=whole.score)
    meta = {**whole.to_dict(), "tiles": len(tiles), "unlike_tiles": unlike, "highest_tile": highest}
    lines = [line for line in [whole.warning(name)] if line]
    if unlike:
        lines.append(
            f"milsil: {name}: {unlike} of {len(tiles)} slide tiles unlike the training data "
            f"(highest score {highest:.3g}, threshold {whole.threshold:.3g})"
        )
    return meta, lines


def _as_numpy(values: torch.Tensor | np.ndarray, what: str) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    if not isinstance(values, np.ndarray) or values.ndim != 2:
        shape = getattr(values, "shape", type(values).__name__)
        raise MilsilError(f"{what} must be a [rows, cols] array or tensor, got {shape}")
    return values
