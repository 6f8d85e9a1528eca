"""The tiled-inference engine: how much context a region needs, how missing context is
filled, and how a large region is computed band by band.

These three rules are what make a heatmap computed in pieces equal the heatmap of the whole
image, so they live here once; :func:`milsil.inference.heatmap.logit_heatmap`, whole-slide
heatmaps (:mod:`milsil.wsi`) and the server (``milsil_server``) all use them, and the
server tells its clients the context through ``Model.context_pixels``.

* **Context.** A BagNet logit at pixel ``p`` depends on the ``receptive_field`` window
  centred on ``p``, so a region needs ``receptive_field // 2`` pixels of real context on
  every side (:func:`context_pixels`).
* **Missing context is mirrored.** Where no real pixels exist (an image border, a client
  that sent none), the image is reflected: the border policy of ``logit_heatmap``.
* **Bands.** A region is computed in square chunks, each with its context, so memory stays
  bounded and the chunks join without seams.
"""

from __future__ import annotations

from typing import Any

from milsil.errors import MilsilError


def context_for_receptive_field(receptive_field: int) -> int:
    """Pixels of context needed on each side of a region, given the receptive field."""
    return int(receptive_field) // 2


def context_pixels(model: Any) -> int:
    """Pixels of context a client must send around a region for seamless output.

    Refused for models without a bounded receptive field (ResNet-50, DenseNet-161, attention
    MIL): their logits depend on the whole image, so no finite context makes tiles exact.
    """
    rf = getattr(model, "receptive_field", None)
    if not rf:
        arch = getattr(getattr(model, "config", None), "arch", type(model).__name__)
        raise MilsilError(
            f"per-pixel logit heatmaps need a BagNet (bagnet9, bagnet17, bagnet33); "
            f"{arch} has no bounded receptive field: use cam() or gradcam()"
        )
    return context_for_receptive_field(rf)
