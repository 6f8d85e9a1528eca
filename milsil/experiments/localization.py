"""How well a model's maps point at the annotated malignant nuclei.

:func:`localization` compares the logit heatmap, CAM and Grad-CAM of a model (ADMIL: its
attention) with the masks (pixel AUROC, pointing game, Dice) and, where the dataset has
per-nucleus instance masks, nucleus by nucleus (:mod:`milsil.experiments.nuclei`: nucleus
AUROC malignant vs benign, nucleus pointing game). The paper shows this only as pictures
(its Fig. 1); with synthetic data the masks are exact, so it can be measured.

Maps compared:
  * logit heatmap -- log-odds of the target class per pixel, ``l_t - logsumexp(l_others)``
    (for two classes: the malignant-minus-benign logit difference), stride 1;
  * CAM -- the target class's classifier applied to the last feature map, upsampled;
  * Grad-CAM -- of the target class on the last feature map, upsampled;
  * attention (attention MIL) -- each patch's attention weight over its pixels (pixels of
    no patch, the strips the exhaustive grid drops, get 0).
Dice thresholds each map after min-max scaling to [0, 1], so one threshold serves all.

Scores are taken over the image's *valid* interior by default: pixels whose receptive-field
window lies inside the image (a border of half the receptive field). Border windows of the
logit heatmap see mirrored, partly invented context (the border policy of
:mod:`milsil.inference.heatmap`), and CAM/Grad-CAM are smeared at borders by upsampling; all maps are
cropped alike to compare fairly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from milsil.engine.metrics import dice, mean_std, normalize_map, pixel_auroc, pointing_game
from milsil.errors import MilsilError
from milsil.experiments.nuclei import NucleusScores, score_nuclei
from milsil.inference.tiling import context_for_receptive_field
from milsil.models.mil import ConfiguredModel, target_class_index

MAP_NAMES = {
    "logit": "Logit heatmap",
    "cam": "CAM",
    "gradcam": "Grad-CAM",
    "attention": "Attention",
}
# Patch side of an attention-MIL model whose checkpoint does not record one (Ilse et al.'s 27).
DEFAULT_ATTENTION_PATCH = 27


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
    from milsil.inference.cam import cam, gradcam
    from milsil.inference.heatmap import logit_heatmap

    out: dict[str, np.ndarray] = {}
    for name in maps:
        if name == "logit":
            out[name] = class_log_odds(logit_heatmap(model, image), target).numpy()
        elif name == "cam":
            out[name] = cam(model, image)[target].numpy()
        elif name == "gradcam":
            out[name] = gradcam(model, image, target).numpy()
        elif name == "attention":
            out[name] = attention_map(model, image)
        else:
            raise MilsilError(f"unknown map {name!r}; allowed: {', '.join(MAP_NAMES)}")
    return out


def attention_map(
    model: ConfiguredModel, image: np.ndarray, patch_size: int | None = None
) -> np.ndarray:
    """An attention-MIL model's attention weights painted over their patches: ``H x W``.

    The image is cut into the bag the model was trained on (the exhaustive grid of
    ``patch_size``, default: the checkpoint's training patch size, else 27); pixels in no
    patch get 0 attention.
    """
    from milsil.data import image_to_bag, patch_origins, to_tensor
    from milsil.data.stain import apply_stain, bag_stain
    from milsil.models.mil import AttentionMIL

    if not isinstance(model, AttentionMIL):
        raise MilsilError(f"attention maps need an attention-MIL model, not {model.config.arch}")
    if patch_size is None:
        config = (getattr(model, "provenance", None) or {}).get("config", {})
        patch_size = int(config.get("patch_size", DEFAULT_ATTENTION_PATCH))
    bag = image_to_bag(image, patch_size)
    bag = apply_stain(bag, bag_stain(model, bag))  # as a training bag
    mean, std = model.normalization
    x = torch.stack([to_tensor(p, mean, std) for p in bag]).unsqueeze(0)
    device = next(model.parameters()).device
    model.eval()
    with torch.inference_mode():
        weights = model(x.to(device)).attention[0].float().cpu().numpy()
    out = np.zeros(image.shape[:2], dtype=np.float32)
    for (y, x0), a in zip(patch_origins(*image.shape[:2], patch_size), weights, strict=True):
        out[y : y + patch_size, x0 : x0 + patch_size] = a
    return out


def available_maps(model: ConfiguredModel) -> list[str]:
    """Logit heatmaps need a BagNet; CAM/Grad-CAM a conv feature map with a linear head;
    attention maps an attention-MIL model."""
    from milsil.models.mil import AttentionMIL, MilSilNet

    if isinstance(model, AttentionMIL):
        return ["attention"]
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
    instances: Mapping[str, Any] | None = None,
    min_pixels: int = 4,
) -> dict[str, Any]:
    """Compare maps with the masks on the target-class images that have a non-empty mask,
    and, for the images in ``instances``, nucleus by nucleus.

    Returns ``{map: {"pixel_auroc", "pointing_game", "dice", "images"}}`` (means over
    images; ``pointing_game`` is the hit rate). With ``instances``
    (:func:`milsil.data.instances.read_instance_index`: image path -> instance files), each
    map's entry also holds ``object_auroc``, ``object_auroc_within``, ``object_pointing``,
    ``nuclei``, ``target_nuclei`` and ``object_images`` (:mod:`milsil.experiments.nuclei`),
    over every image with instances (benign images too), counting nuclei with at least
    ``min_pixels`` pixels inside the border. ``border`` pixels are left out on each side
    (default: half the receptive field, see the module docstring). Bags stored as ``.npz``
    tiles are skipped: they have no image to map. ``max_images`` caps the images of each
    kind (pixel-level, nucleus-level).
    """
    from milsil.data import load_mask, load_rgb
    from milsil.data.instances import load_instances

    target = target_class(class_names)
    maps = list(maps) if maps is not None else available_maps(model)
    if border is None:
        border = context_for_receptive_field(model.receptive_field or 0)
    if not isinstance(border, int) or border < 0:
        raise MilsilError(f"border must be a non-negative number of pixels, got {border!r}")
    instances = instances or {}
    inner = (slice(border, -border or None), slice(border, -border or None))
    per: dict[str, dict[str, list[float]]] = {
        m: {"pixel_auroc": [], "pointing_game": [], "dice": []} for m in maps
    }
    nuclei = NucleusScores()
    used = used_objects = 0
    for r in records:
        if str(r.path).lower().endswith(".npz"):
            continue
        files = instances.get(str(Path(r.path).resolve()))
        if max_images is not None and used_objects >= max_images:
            files = None
        mask = None
        if r.label == target and r.mask and (max_images is None or used < max_images):
            mask = load_mask(r.mask)
            if not mask[inner].any():
                mask = None
        if mask is None and files is None:
            continue
        image = load_rgb(r.path)
        if min(image.shape[:2]) <= 2 * border:
            raise MilsilError(f"{r.path}: a {border}-pixel border leaves no interior")
        if mask is not None and image.shape[:2] != mask.shape:
            raise MilsilError(
                f"mask {r.mask} is {mask.shape[::-1]}, image {r.path} is {image.shape[1::-1]}"
            )
        heats = image_maps(model, image, target, maps)
        if mask is not None:
            used += 1
            for name, heat in heats.items():
                heat, inside = heat[inner], mask[inner]
                per[name]["pixel_auroc"].append(pixel_auroc(heat, inside))
                per[name]["pointing_game"].append(float(pointing_game(heat, inside)))
                per[name]["dice"].append(dice(normalize_map(heat), inside, dice_threshold))
        if files is not None:
            labels, table = load_instances(files)
            if labels.shape != image.shape[:2]:
                raise MilsilError(
                    f"instances {files.labels} are {labels.shape[::-1]}, image {r.path} is "
                    f"{image.shape[1::-1]}"
                )
            used_objects += 1
            for name, heat in heats.items():
                nuclei.add(
                    name,
                    *score_nuclei(
                        heat[inner], labels[inner], table, class_names[target], min_pixels
                    ),
                )
    objects = nuclei.summary()
    return {
        m: {k: mean_std(v)[0] for k, v in vals.items()}
        | {"images": used}
        | (objects[m] | {"object_images": used_objects} if m in objects else {})
        for m, vals in per.items()
    }
