"""The reference heatmap: the paper's definition computed literally, window by window.

Kept apart from :mod:`milsil.inference.heatmap` (the fast dense path) because it is only
the yardstick that tests and benchmarks hold the dense path to.
"""

from __future__ import annotations

import numpy as np
import torch

from milsil.inference.heatmap import _bagnet_of, _check_stride, prepare_image
from milsil.inference.tiling import context_pixels, mirror_pad
from milsil.models.mil import ConfiguredModel


def naive_logit_heatmap(
    model: ConfiguredModel,
    image: torch.Tensor | np.ndarray,
    stride: int = 1,
    batch_size: int = 1000,
) -> torch.Tensor:
    """The paper's definition, literally: crop every window, run it as an image.

    Slow (it repeats every shared computation); the reference for tests and benchmarks.
    """
    model.eval()
    stride = _check_stride(stride)
    rf = _bagnet_of(model).receptive_field
    x = prepare_image(model, image)
    half = context_pixels(model)
    height, width = x.shape[1:]
    x = mirror_pad(x, half, half, half, half)
    ys = range(0, height, stride)
    xs = range(0, width, stride)
    windows = [(i, j) for i in ys for j in xs]
    device = next(model.parameters()).device
    out = []
    with torch.inference_mode():
        for k in range(0, len(windows), batch_size):
            batch = torch.stack(
                [x[:, i : i + rf, j : j + rf] for i, j in windows[k : k + batch_size]]
            )
            out.append(model(batch.unsqueeze(1).to(device)).sil_logits[:, 0].float().cpu())
    logits = torch.cat(out)
    return logits.T.reshape(model.config.num_classes, len(ys), len(xs)).contiguous()
