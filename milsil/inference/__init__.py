"""Inference on images and regions: what a trained model says about each pixel and object.

One module per job; import from the module (this package re-exports nothing, so
``import milsil.inference`` costs nothing):

* :mod:`~milsil.inference.tiling`: the tiled engine's rules, kept in one place because
  they make a heatmap computed in pieces equal the heatmap of the whole image: the context
  a region needs (:func:`~milsil.inference.tiling.context_pixels`), missing context
  mirrored, output chunks, and :class:`~milsil.inference.tiling.BandCanvas` for regions
  streamed in row order.
* :mod:`~milsil.inference.heatmap`: :func:`~milsil.inference.heatmap.logit_heatmap`, the
  paper's per-pixel class logits computed densely (a trous convolutions, folded
  BatchNorm), its band-by-band forms for regions of any size, and
  :func:`~milsil.inference.reference.naive_logit_heatmap`, the window-by-window reference
  it must equal.
* :mod:`~milsil.inference.cam`: CAM and Grad-CAM, the coarse maps the paper contrasts with.
* :mod:`~milsil.inference.objects`: per-object (nucleus) measurements from a logit
  heatmap, fed band by band.
* :mod:`~milsil.inference.render`: colour maps and overlays in the paper's figure style.

It sits above :mod:`milsil.models` and :mod:`milsil.data` and below :mod:`milsil.wsi`
(whole slides) and the server, which both compute through it.
"""
