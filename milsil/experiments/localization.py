"""How well a model's maps point at the annotated malignant nuclei.

:func:`localization` compares the logit heatmap, CAM and Grad-CAM of a model with the masks
(pixel AUROC, pointing game, Dice). The paper shows this only as pictures (its Fig. 1);
with synthetic data the masks are exact, so it can be measured.

Maps compared:
  * logit heatmap -- log-odds of the target class per pixel, ``l_t - logsumexp(l_others)``
    (for two classes: the malignant-minus-benign logit difference), stride 1;
  * CAM -- the target class's classifier applied to the last feature map, upsampled;
  * Grad-CAM -- of the target class on the last feature map, upsampled.
Dice thresholds each map after min-max scaling to [0, 1], so one threshold serves all.

Scores are taken over the image's *valid* interior by default: pixels whose receptive-field
window lies inside the image (a border of half the receptive field). Border windows of the
logit heatmap see mirrored, partly invented context (the border policy of
:mod:`milsil.inference.heatmap`), and CAM/Grad-CAM are smeared at borders by upsampling; all maps are
cropped alike to compare fairly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from milsil.engine.metrics import dice, mean_std, normalize_map, pixel_auroc, pointing_game
from milsil.errors import MilsilError
from milsil.inference.tiling import context_for_receptive_field
from milsil.models.mil import ConfiguredModel, target_class_index

MAP_NAMES = {"logit": "Logit heatmap", "cam": "CAM", "gradcam": "Grad-CAM"}


def target_class(class_names: Sequence[str]) -> int:
    """The class the masks mark (:func:`milsil.models.target_class_index`'s default)."""
    return target_class_index(class_names)


def class_log_odds(logits: torch.Tensor, target: int) -> torch.Tensor:
    """``l_t - logsumexp(l_others)`` over axis 0: for two classes the logit difference."""
    others = torch.cat([logits[:target], logits[target + 1 :]])
    return logits[target] - torch.logsumexp(others, dim=0)


def image_maps(
    model: ConfiguredModel, image: np.ndarray, target: int, maps: Sequence[str] = tuple(MAP_NAMES)
) -> dict[str, np.ndarray]:
    """The requested maps of one uint8 image, each ``H x W`` float (see module docstring)."""
    from milsil.inference.heatmap import cam, gradcam, logit_heatmap

    out: dict[str, np.ndarray] = {}
    for name in maps:
        if name == "logit":
            out[name] = class_log_odds(logit_heatmap(model, image), target).numpy()
        elif name == "cam":
            out[name] = cam(model, image)[target].numpy()
        elif name == "gradcam":
            out[name] = gradcam(model, image, target).numpy()
        else:
            raise MilsilError(f"unknown map {name!r}; allowed: {', '.join(MAP_NAMES)}")
    return out


def available_maps(model: ConfiguredModel) -> list[str]:
    """Logit heatmaps need a BagNet; CAM/Grad-CAM a conv feature map with a linear head."""
    from milsil.models.mil import MilSilNet

    if not isinstance(model, MilSilNet):
        return []
    maps = ["cam", "gradcam"]
    if model.receptive_field is not None:
        maps.insert(0, "logit")
    return maps


def localization(
    model: ConfiguredModel,
    records: Sequence[Any],
    class_names: Sequence[str],
    dice_threshold: float = 0.5,
    maps: Sequence[str] | None = None,
    max_images: int | None = None,
    border: int | None = None,
) -> dict[str, Any]:
    """Compare maps with the masks on the target-class images that have a non-empty mask.

    Returns ``{map: {"pixel_auroc", "pointing_game", "dice", "images"}}`` (means over
    images; ``pointing_game`` is the hit rate). ``border`` pixels are left out on each side
    (default: half the receptive field, see the module docstring). Bags stored as ``.npz``
    tiles are skipped: they have no image to map.
    """
    from milsil.data import load_mask, load_rgb

    target = target_class(class_names)
    maps = list(maps) if maps is not None else available_maps(model)
    if border is None:
        border = context_for_receptive_field(model.receptive_field or 0)
    if not isinstance(border, int) or border < 0:
        raise MilsilError(f"border must be a non-negative number of pixels, got {border!r}")
    inner = (slice(border, -border or None), slice(border, -border or None))
    per: dict[str, dict[str, list[float]]] = {
        m: {"pixel_auroc": [], "pointing_game": [], "dice": []} for m in maps
    }
    used = 0
    for r in records:
        if r.label != target or not r.mask or str(r.path).lower().endswith(".npz"):
            continue
        if max_images is not None and used >= max_images:
            break
        mask = load_mask(r.mask)
        if not mask[inner].any():
            continue
        image = load_rgb(r.path)
        if image.shape[:2] != mask.shape:
            raise MilsilError(
                f"mask {r.mask} is {mask.shape[::-1]}, image {r.path} is {image.shape[1::-1]}"
            )
        if min(mask.shape) <= 2 * border:
            raise MilsilError(f"{r.path}: a {border}-pixel border leaves no interior")
        used += 1
        mask = mask[inner]
        for name, heat in image_maps(model, image, target, maps).items():
            heat = heat[inner]
            per[name]["pixel_auroc"].append(pixel_auroc(heat, mask))
            per[name]["pointing_game"].append(float(pointing_game(heat, mask)))
            per[name]["dice"].append(dice(normalize_map(heat), mask, dice_threshold))
    return {
        m: {k: mean_std(v)[0] for k, v in vals.items()} | {"images": used}
        for m, vals in per.items()
    }
