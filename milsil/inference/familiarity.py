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

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from milsil.errors import MilsilError
from milsil.inference.heatmap import iter_logit_bands, prepare_image
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
        score = self.reference.region_score(self.total / self.count)
        return FamiliarityScore(score, self.reference.threshold)


def region_score(
    model: ConfiguredModel,
    distance: torch.Tensor | np.ndarray | None,
    mask: torch.Tensor | np.ndarray | None = None,
) -> FamiliarityScore | None:
    """One region's score from its whole distance map (``[rows, cols]``); ``mask``: the
    samples that count. None without a reference, a map or any sample."""
    if distance is None:
        return None
    accumulator = FamiliarityAccumulator(model)
    accumulator.add(distance, mask)
    return accumulator.result()


def images_familiarity(
    model: ConfiguredModel, images: Sequence[np.ndarray]
) -> tuple[list[FamiliarityScore], FamiliarityScore] | None:
    """ClassifyBag's tiles: one score per tile and one for the bag (all tiles' samples).

    Each tile's samples are its valid windows (the feature map of the tile alone, no
    mirrored border), as the reference was fitted. None without a reference."""
    reference = model_familiarity(model)
    if reference is None:
        return None
    if not images:
        raise MilsilError("images_familiarity needs at least one image")
    device = next(model.parameters()).device
    model.eval()
    bag = FamiliarityAccumulator(model)
    tiles = []
    for image in images:
        x = prepare_image(model, image)
        if min(x.shape[1:]) < model.min_patch_size:
            raise MilsilError(
                f"a tile of {x.shape[2]}x{x.shape[1]} pixels is smaller than the "
                f"{model.config.arch} window ({model.min_patch_size} pixels a side)"
            )
        with torch.inference_mode():
            features = model.feature_map(x.unsqueeze(0).to(device))[0]
        distances = reference.distances(reference.project(features, dim=0)).cpu()
        tile = FamiliarityAccumulator(model)
        tile.add(distances)
        bag.add(distances)
        score = tile.result()
        assert score is not None  # a reference and at least one window
        tiles.append(score)
    whole = bag.result()
    assert whole is not None
    return tiles, whole


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
