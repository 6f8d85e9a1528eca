"""CAM and Grad-CAM: the coarse last-layer maps the paper contrasts its logit heatmaps with.

Both work on any model with a convolutional feature map and a linear classifier (BagNets,
ResNet-50, DenseNet-161), unlike :func:`milsil.inference.heatmap.logit_heatmap`, which
needs a BagNet's bounded receptive field. They share the heatmaps' input rule
(:func:`~milsil.inference.heatmap.prepare_image`) and the tiled engine's context
(:func:`~milsil.inference.tiling.context_pixels`), which places a BagNet's map at its
window centres.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from milsil.errors import MilsilError
from milsil.inference.heatmap import prepare_image
from milsil.inference.tiling import context_pixels
from milsil.models.bagnet import BagNet
from milsil.models.mil import ConfiguredModel, MilSilNet


def _feature_model(model: ConfiguredModel) -> MilSilNet:
    if not isinstance(model, MilSilNet):
        raise MilsilError(
            f"CAM and Grad-CAM need a model with a convolutional feature map and a linear "
            f"classifier; {model.config.arch} has none"
        )
    return model


def cam(model: ConfiguredModel, image: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Class activation maps (Zhou et al. 2016): ``[C, H, W]``, upsampled bilinearly.

    The classifier applied to each position of the last feature map, the way CAM is usually
    shown: coarse, and smeared by the upsampling (the paper's Fig. 1 contrast).
    """
    net = _feature_model(model).eval()
    x = prepare_image(model, image)
    device = next(net.parameters()).device
    with torch.inference_mode():
        fmap = net.feature_map(x.unsqueeze(0).to(device))
        maps = F.conv2d(fmap, net.fc.weight[:, :, None, None], net.fc.bias)
        return _upsample(net, maps, x.shape[1:])


def gradcam(
    model: ConfiguredModel, image: torch.Tensor | np.ndarray, class_index: int
) -> torch.Tensor:
    """Grad-CAM (Selvaraju et al. 2017) of one class on the last feature map: ``[H, W]``."""
    net = _feature_model(model).eval()
    if not 0 <= class_index < net.config.num_classes:
        raise MilsilError(
            f"class_index must be in 0..{net.config.num_classes - 1}, got {class_index}"
        )
    x = prepare_image(model, image)
    device = next(net.parameters()).device
    with torch.enable_grad():
        fmap = net.feature_map(x.unsqueeze(0).to(device)).detach().requires_grad_(True)
        score = net.fc(fmap.mean(dim=(2, 3)))[0, class_index]
        (grad,) = torch.autograd.grad(score, fmap)
    weights = grad.mean(dim=(2, 3), keepdim=True)
    heat = torch.relu((weights * fmap.detach()).sum(dim=1, keepdim=True))
    return _upsample(net, heat, x.shape[1:])[0]


def _upsample(net: MilSilNet, maps: torch.Tensor, size: torch.Size) -> torch.Tensor:
    """Bilinear upsampling of a last-layer map to the image, each value at its window.

    For padded networks (ResNet, DenseNet) the map is stretched over the image, as CAM is
    usually drawn. A BagNet's map is unpadded: value ``i`` belongs to the window starting at
    pixel ``8 i``, so the map is enlarged 8x and shifted to the window centres instead of
    stretched (stretching would drift by up to a window's width across the image).
    """
    maps = maps.float()
    bagnet = getattr(net, "backbone", None)
    if not isinstance(bagnet, BagNet):
        return F.interpolate(maps, size=tuple(size), mode="bilinear", align_corners=False)[0].cpu()
    s = bagnet.output_stride
    up = F.interpolate(maps, scale_factor=s, mode="bilinear", align_corners=False)
    shift = context_pixels(bagnet) - s // 2  # cell centre 8i+4 -> window centre
    h, w = size
    pad = (shift, max(0, w - up.shape[-1] - shift), shift, max(0, h - up.shape[-2] - shift))
    up = F.pad(up, pad, mode="replicate")
    return up[0, :, :h, :w].cpu()
