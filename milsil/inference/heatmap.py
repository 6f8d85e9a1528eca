"""Per-pixel class-logit heatmaps (the paper's visualisation); CAM and Grad-CAM, the
maps the paper compares them with, are in :mod:`milsil.inference.cam`.

The paper defines the logit heatmap window by window: for every pixel, crop the
receptive-field window centred on it, run the network with the MIL branch off, and put the
class logits at that pixel. :func:`milsil.inference.reference.naive_logit_heatmap` does exactly that (it is the
reference the tests and the benchmark compare against).

:func:`logit_heatmap` computes the same numbers densely. A BagNet is a stack of valid
(unpadded) convolutions, so running it on a whole region gives the logits of every window
on an 8-pixel grid. To get a finer grid, strides are turned into dilations (the
"a trous" trick): a conv that had stride 2 now has stride 1, and every later kxk conv
has its dilation doubled, so each output still sees exactly the pixels of its window.
The residual crop at the bottom/right keeps the same top-left alignment. BatchNorm is
folded into the convolutions and the classifier is a 1x1 conv, so the whole heatmap is
one convolutional pass per tile, with no windows cropped and no work repeated.

Border policy: pixels outside the given image are its mirror image (reflection without
repeating the edge pixel), so a window at the border still sees tissue-like texture. A
constant pad (e.g. the mean colour) would show the model flat patches it never saw in
training and light the frame up with extreme logits. A caller who has real context
pixels around the region of interest passes them in and says how many with ``margin``:
the heatmap then covers only the interior, and windows at its border see the real
neighbours (this is how tiles and slide regions are stitched without seams).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from milsil.errors import MilsilError
from milsil.inference.precision import check_precision, fp32_precision
from milsil.inference.tiling import (
    Band,
    BandCanvas,
    band_height,
    context_pixels,
    iter_chunks,
    mirror_pad,
    mirror_pad_pixels,
)
from milsil.models.bagnet import BagNet, Bottleneck
from milsil.models.familiarity import model_familiarity
from milsil.models.mil import ConfiguredModel, MilSilNet

# Largest intermediate activation one tile may hold (bytes). On CPUs a tile whose widest
# map fits the last-level cache is fastest: the 1x1 expansion convs are bound by writing
# their outputs (measured on a 2-core Xeon: 48x48-sample tiles of full-width BagNet-9 gave
# 1.4x the pixels/s of 192x192 ones). GPUs want large tiles to fill their cores. Either way
# memory stays bounded for regions of any size.
TILE_ACTIVATION_BUDGET = {"cpu": 20 * 2**20, "cuda": 1024 * 2**20}
# Largest band of a streamed region (tiling.BandCanvas, uint8 pixels; normalized chunk by
# chunk): bands as high as one tile where the region is narrow enough.
BAND_INPUT_BUDGET = {"cpu": 32 * 2**20, "cuda": 256 * 2**20}
STREAM_CHUNK_SIDE = 512  # input pixels a side of a streamed region's chunk, on a CPU


# --------------------------------------------------------------------------- inputs


def prepare_image(model: ConfiguredModel, image: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Validate ``image`` and return it as a normalized float32 tensor ``[3, H, W]``.

    Accepts a uint8 ``H x W x 3`` array/tensor (stain-normalized when the model has a
    target, estimated from the whole image: :mod:`milsil.data.stain`; then normalized with
    the model's own mean/std) or an already normalized float ``[3, H, W]`` tensor.
    """
    if isinstance(image, np.ndarray) or (
        isinstance(image, torch.Tensor) and image.dtype == torch.uint8
    ):
        pixels = np.asarray(image)
        if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
            raise MilsilError(
                "image must be RGB: an H x W x 3 uint8 array or a normalized float tensor "
                f"[3, H, W]; got an array of shape {tuple(pixels.shape)} and dtype {pixels.dtype}"
            )
        from milsil.data import to_tensor
        from milsil.data.stain import apply_stain, region_stain

        mean, std = model.normalization
        return to_tensor(apply_stain(pixels, region_stain(model, pixels)), mean, std)
    if not isinstance(image, torch.Tensor):
        raise MilsilError(
            f"image must be a numpy array or a torch tensor, got {type(image).__name__}"
        )
    if image.ndim != 3 or image.shape[0] != 3 or not image.is_floating_point():
        raise MilsilError(
            "image must be RGB: a normalized float tensor [3, H, W] or an H x W x 3 uint8 "
            f"array; got a tensor of shape {tuple(image.shape)} and dtype {image.dtype}"
        )
    if not torch.isfinite(image).all():
        raise MilsilError("image contains NaN or infinite values")
    return image.float()


def _bagnet_of(model: ConfiguredModel) -> BagNet:
    backbone = getattr(model, "backbone", None)
    if not isinstance(model, MilSilNet) or not isinstance(backbone, BagNet):
        raise MilsilError(
            f"per-pixel logit heatmaps need a BagNet (bagnet9, bagnet17, bagnet33); "
            f"{model.config.arch} has no bounded receptive field: use cam() or gradcam()"
        )
    return backbone


def _check_stride(stride: int) -> int:
    if not isinstance(stride, (int, np.integer)) or isinstance(stride, bool) or stride < 1:
        raise MilsilError(
            f"stride must be a positive integer (1 = every pixel, 8 = preview), got {stride!r}"
        )
    return int(stride)


# ------------------------------------------------------------------ the dense network


def _onednn_pointwise():
    """oneDNN's fused conv+ReLU / conv+add+ReLU (what torch.compile uses on CPUs), if present.

    Fusing saves a full read and write of every activation map; the dense network is
    otherwise bound by those memory passes rather than by its matrix products.
    """
    if not torch.backends.mkldnn.is_available():
        return None
    return getattr(torch.ops.mkldnn, "_convolution_pointwise", None)


_POINTWISE = _onednn_pointwise()


@dataclass
class _Conv:
    """A convolution with BatchNorm folded in, and the stride/dilation it runs with."""

    weight: torch.Tensor
    bias: torch.Tensor
    stride: int
    dilation: int

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, self.bias, stride=self.stride, dilation=self.dilation)

    def _fusable(self, x: torch.Tensor) -> bool:
        return _POINTWISE is not None and x.device.type == "cpu"

    def relu(self, x: torch.Tensor) -> torch.Tensor:
        if self._fusable(x):
            geometry = ([0, 0], [self.stride] * 2, [self.dilation] * 2, 1)
            return _POINTWISE(x, self.weight, self.bias, *geometry, "relu", [], "")
        return torch.relu_(self(x))

    def add_relu(self, x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        """``relu(conv(x) + other)``; ``other`` must have the output's shape."""
        if self._fusable(x):
            other = other.contiguous(memory_format=torch.channels_last)
            geometry = ([0, 0], [self.stride] * 2, [self.dilation] * 2, 1)
            return _POINTWISE(
                x, other, self.weight, self.bias, *geometry, "add", 1.0, "relu", [], ""
            )
        return torch.relu_(self(x).add_(other))


def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d | None) -> tuple[torch.Tensor, torch.Tensor]:
    weight = conv.weight.detach()
    bias = torch.zeros(weight.shape[0], device=weight.device, dtype=weight.dtype)
    if bn is not None:
        scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
        weight = weight * scale[:, None, None, None]
        bias = bn.bias.detach() - bn.running_mean * scale
    return weight, bias


class _StrideSchedule:
    """Tracks which strides are kept and the dilation that replaces the others.

    Strides are kept, first to last, while their product divides ``base``; a removed
    stride multiplies the dilation of every later kxk conv instead.
    """

    def __init__(self, base: int) -> None:
        self.remaining = base
        self.dilation = 1

    def conv(self, weight: torch.Tensor, bias: torch.Tensor, stride: int) -> _Conv:
        # A 1x1 conv needs no dilation (and oneDNN runs it on a slower path if given one).
        dilation = self.dilation if weight.shape[-1] > 1 else 1
        keep = stride > 1 and self.remaining % stride == 0
        return _Conv(weight, bias, stride if keep else 1, dilation)

    def advance(self, stride: int) -> None:
        if stride == 1:
            return
        if self.remaining % stride == 0:
            self.remaining //= stride
        else:
            self.dilation *= stride


class _DenseBlock:
    def __init__(self, block: Bottleneck, schedule: _StrideSchedule) -> None:
        stride = block.conv2.stride[0]
        self.conv1 = schedule.conv(*_fold(block.conv1, block.bn1), 1)
        self.conv2 = schedule.conv(*_fold(block.conv2, block.bn2), stride)
        self.downsample = None
        if block.downsample is not None:
            self.downsample = schedule.conv(
                *_fold(block.downsample[0], block.downsample[1]), stride
            )
        schedule.advance(stride)
        self.conv3 = schedule.conv(*_fold(block.conv3, block.bn3), 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        out = self.conv2.relu(self.conv1.relu(x))
        # The shortcut keeps each window's top-left pixel: crop it at the bottom/right.
        h, w = out.shape[-2:]
        return self.conv3.add_relu(out, residual[..., :h, :w])


class DenseLogitNet:
    """A BagNet + classifier turned into one fully convolutional logit map at ``base`` stride.

    ``base`` must divide the BagNet's output stride (1, 2, 4 or 8). The input is a padded
    region; output ``[i, j]`` is the logits of the window whose top-left input pixel is
    ``(i*base, j*base)``.
    """

    def __init__(self, model: MilSilNet, base: int, dtype: torch.dtype = torch.float32) -> None:
        bagnet = _bagnet_of(model)
        if bagnet.output_stride % base:
            raise ValueError(f"base stride {base} must divide {bagnet.output_stride}")
        self.base = base
        self.receptive_field = bagnet.receptive_field
        schedule = _StrideSchedule(base)
        # The stem's 1x1 (no bias, no BN) and 3x3 convs compose into one 3x3 conv.
        w1 = bagnet.conv1.weight.detach()[:, :, 0, 0]
        w2, b2 = _fold(bagnet.conv2, bagnet.bn1)
        stem = torch.einsum("omhw,mi->oihw", w2, w1)
        self.stem = schedule.conv(stem, b2, 1)
        self.blocks = [
            _DenseBlock(block, schedule)
            for layer in (bagnet.layer1, bagnet.layer2, bagnet.layer3, bagnet.layer4)
            for block in layer
        ]
        fc = model.fc
        self.classifier = _Conv(fc.weight.detach()[:, :, None, None], fc.bias.detach(), 1, 1)
        # The familiarity projection (milsil.models.familiarity): its own conv, same logits.
        self.reference = ref = model_familiarity(model)
        on = fc.weight.device
        self.projector = ref and _Conv(ref.weight[:, :, None, None].to(on), ref.bias.to(on), 1, 1)
        if dtype != torch.float32:
            for conv in self._convs():
                conv.weight = conv.weight.to(dtype)
                conv.bias = conv.bias.to(dtype)
        for conv in self._convs():
            conv.weight = conv.weight.contiguous(memory_format=torch.channels_last)

    def _convs(self) -> Iterator[_Conv]:
        yield self.stem
        for block in self.blocks:
            yield from (c for c in (block.conv1, block.conv2, block.conv3, block.downsample) if c)
        yield from (c for c in (self.classifier, self.projector) if c)

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor, project: bool = False) -> torch.Tensor:
        """``[B, 3, H, W]`` padded input -> ``[B, C, (H-RF)//base+1, (W-RF)//base+1]``;
        with ``project`` (and a reference) ``C + K`` channels, the whitened features last."""
        x = x.to(self.stem.weight.dtype).contiguous(memory_format=torch.channels_last)
        x = self.stem.relu(x)
        for block in self.blocks:
            x = block(x)
        if project and self.projector:
            return torch.cat([self.classifier(x), self.projector(x)], dim=1)
        return self.classifier(x)


def dense_net(model: MilSilNet, base: int, dtype: torch.dtype = torch.float32) -> DenseLogitNet:
    """The model's :class:`DenseLogitNet`, built once and reused while its weights are unchanged.

    Folding BatchNorm and converting weights costs tens of milliseconds at full width, which
    would dominate small tiles. The cache is checked against every parameter's and
    buffer's storage and version counter, which optimizer steps and ``load_state_dict``
    bump; (edits through ``tensor.data`` bypass the counter: call :func:`clear_dense_cache`.)
    """
    tensors = list(model.parameters()) + list(model.buffers())
    fingerprint = tuple((t.data_ptr(), t._version, t.device) for t in tensors)
    cache: dict = model.__dict__.setdefault("_dense_cache", {})
    key = (base, dtype, id(model_familiarity(model)))
    hit = cache.get(key)
    if hit is not None and hit[0] == fingerprint:
        return hit[1]
    net = DenseLogitNet(model, base, dtype=dtype)
    cache[key] = (fingerprint, net)
    return net


def clear_dense_cache(model: MilSilNet) -> None:
    model.__dict__.pop("_dense_cache", None)


def output_size(length: int, stride: int) -> int:
    """Number of heatmap samples along an axis of ``length`` pixels: ceil(length / stride)."""
    return -(-length // stride)


# ------------------------------------------------------------------ the public API


def logit_heatmap(
    model: ConfiguredModel,
    image: torch.Tensor | np.ndarray,
    stride: int = 1,
    margin: int = 0,
    tile: int | None = None,
    device: torch.device | str | None = None,
    bf16: bool = False,
    precision: str = "exact",
) -> torch.Tensor:
    """Class-logit heatmap: ``[C, ceil(H'/stride), ceil(W'/stride)]`` float32 on the CPU.

    Element ``[c, i, j]`` is the class-``c`` logit of the receptive-field window centred on
    interior pixel ``(i*stride, j*stride)``; ``H' = H - 2*margin`` (see the module
    docstring for the border policy). ``tile`` is the output side of one tile (default:
    chosen to keep activations within :data:`TILE_ACTIVATION_BUDGET`); the result does not
    depend on it. ``bf16`` runs under bfloat16 autocast (about 2x faster on CPUs with
    AVX-512 BF16, logits within about 1e-2). ``precision`` is the float32 mode on CUDA
    (:mod:`milsil.inference.precision`): ``exact`` by default, ``tf32`` the fast mode.
    """
    bands = iter_logit_bands(
        model,
        image,
        stride=stride,
        margin=margin,
        tile=tile,
        device=device,
        bf16=bf16,
        precision=precision,
    )
    *_, (_, result) = bands
    return result


def iter_logit_bands(
    model: ConfiguredModel,
    image: torch.Tensor | np.ndarray,
    stride: int = 1,
    margin: int = 0,
    tile: int | None = None,
    device: torch.device | str | None = None,
    bf16: bool = False,
    target_seconds: float | None = None,
    should_stop: Callable[[], bool] | None = None,
    precision: str = "exact",
    familiarity: bool = False,
    stain: object = "auto",
) -> Iterator[tuple[int, torch.Tensor]]:
    """:func:`logit_heatmap` band by band: yields ``(rows_done, result)`` after each band.

    ``result`` is the whole ``[C, rows, cols]`` map, filled up to ``rows_done``. The chunks
    come from :func:`milsil.inference.tiling.iter_chunks` (``target_seconds``: adapt their
    side to the device); ``should_stop`` is polled before each chunk, and a stop ends the
    iteration early (``rows_done`` then stays below ``rows``). Each chunk's pass runs under
    :func:`~milsil.inference.precision.fp32_precision` (``precision``), so the caller's TF32
    settings hold again between bands. With ``familiarity`` the result has ``C + 1``
    channels, channel ``C`` the per-sample distance (:mod:`milsil.inference.familiarity`).
    ``stain``: the region's stain transform (uint8 input
    of a model with a target), ``"auto"``: from the first band (:mod:`milsil.data.stain`).
    """
    model.eval()
    stride = _check_stride(stride)
    check_precision(precision)
    bagnet = _bagnet_of(model)
    # uint8 pixels are normalized chunk by chunk (a float copy of a large image would
    # take 4x its size); anything else is checked and normalized at once.
    if isinstance(image, torch.Tensor) and image.dtype == torch.uint8:
        image = image.cpu().numpy()  # the same rule (and numbers) as a uint8 array
    lazy = isinstance(image, np.ndarray) and image.dtype == np.uint8
    if lazy and (image.ndim != 3 or image.shape[2] != 3):
        prepare_image(model, image)  # the one message for a wrong shape
    x = image if lazy else prepare_image(model, image)
    full_h, full_w = (x.shape[0], x.shape[1]) if lazy else (x.shape[1], x.shape[2])
    rf = bagnet.receptive_field
    margin = int(margin)
    height, width = full_h - 2 * margin, full_w - 2 * margin
    if margin < 0 or height < 1 or width < 1:
        raise MilsilError(
            f"margin {margin} leaves no interior in a {full_h}x{full_w} image; "
            "margin must be >= 0 and less than half the image side"
        )
    if min(full_h, full_w) < rf:
        raise MilsilError(
            f"image is {full_w}x{full_h} pixels; a {model.config.arch} heatmap needs at "
            f"least {rf}x{rf} (its receptive field)"
        )
    if device is None:
        device = next(model.parameters()).device
    device = torch.device(device)
    base = math.gcd(stride, bagnet.output_stride)
    step = stride // base
    dtype = torch.bfloat16 if bf16 else torch.float32
    net = dense_net(model.to(device), base, dtype=dtype)

    # Mirror what is missing so every interior pixel has its context; real context (the
    # margin) replaces mirroring.
    context = context_pixels(bagnet)
    pad = max(0, context - margin)
    if lazy:
        from milsil.data import to_tensor
        from milsil.data.stain import apply_stain, first_band_stain

        if stain == "auto":  # estimated from the first band, as a streamed region's
            rows = lambda: stream_band_rows(model, width, stride, device)  # noqa: E731
            stain = first_band_stain(model, x, margin, rows)
        x = mirror_pad_pixels(x, pad, pad, pad, pad)
        mean, std = model.normalization
    else:
        x = mirror_pad(x, pad, pad, pad, pad)
    origin = margin + pad - context  # padded-image offset of the window of interior pixel (0, 0)
    out_h, out_w = output_size(height, stride), output_size(width, stride)
    if tile is None:
        tile = default_tile(model, base, step, device)

    classes = model.config.num_classes
    result = torch.full((classes + familiarity, out_h, out_w), math.nan, dtype=torch.float32)
    # Adapting to a slow device shrinks chunks by at most 4x a side (tiny chunks waste
    # most of their work on context).
    chunks = iter_chunks(out_h, out_w, tile, target_seconds, min_side=max(8, tile // 4))
    for r0, r1, c0, c1 in chunks:
        if should_stop is not None and should_stop():
            return
        # Window top-lefts of this chunk, in padded-image pixels.
        y0, x0 = origin + r0 * stride, origin + c0 * stride
        y1 = y0 + (r1 - r0 - 1) * stride + rf
        x1 = x0 + (c1 - c0 - 1) * stride + rf
        if lazy:
            crop = to_tensor(apply_stain(x[y0:y1, x0:x1], stain), mean, std).unsqueeze(0).to(device)
        else:
            crop = x[:, y0:y1, x0:x1].unsqueeze(0).to(device)
        with fp32_precision(precision):
            logits = net(crop, familiarity)[0, :, ::step, ::step][:, : r1 - r0, : c1 - c0]
            if familiarity and net.projector:
                logits = net.reference.distance_channel(logits, classes)
        result[: len(logits), r0:r1, c0:c1] = logits.float().cpu()
        if c1 == out_w:
            yield r1, result


def band_logits(
    model: ConfiguredModel,
    band: Band,
    margin: int,
    stride: int = 1,
    tile: int | None = None,
    device: torch.device | str | None = None,
    target_seconds: float | None = None,
    should_stop: Callable[[], bool] | None = None,
    precision: str = "exact",
    familiarity: bool = False,
    bf16: bool = False,
) -> torch.Tensor | None:
    """The map rows of one band of a streamed region (:class:`milsil.inference.tiling.
    BandCanvas`): ``[C, ceil((row1 - row0) / stride), cols]``, or ``None`` when
    ``should_stop`` ended the computation early. ``margin``: the canvas's context;
    ``precision``/``bf16`` as :func:`iter_logit_bands`."""
    from milsil.data.stain import band_stain

    rows = output_size(band.row1 - band.row0, stride)
    done, result = 0, None
    steps = iter_logit_bands(
        model,
        band.pixels,
        stride=stride,
        margin=margin,
        tile=tile,
        device=device,
        target_seconds=target_seconds,
        should_stop=should_stop,
        precision=precision,
        familiarity=familiarity,
        bf16=bf16,
        stain=band_stain(model, band, margin),  # the first band's, for every band
    )
    for step in steps:
        done, result = step
    if result is None or done < rows:
        return None
    return result


def iter_region_bands(
    model: ConfiguredModel,
    width: int,
    height: int,
    pieces: Iterable[tuple[int, int, np.ndarray]],
    stride: int = 1,
    device: torch.device | str | None = None,
    familiarity: bool = False,
) -> Iterator[tuple[int, torch.Tensor]]:
    """The map of a ``width x height`` region given as pixel pieces in row order, band by
    band: yields ``(first map row, logits [C, rows, cols])``.

    ``pieces``: ``(x, y, uint8 [h, w, 3])`` with ``(x, y)`` the region pixel of the piece's
    top-left (negative in the context), in non-decreasing order of ``y``; context that no
    piece supplies is mirrored (:class:`milsil.inference.tiling.BandCanvas`). Memory is
    bounded by the region's width, not its area.
    """
    if device is None:
        device = next(model.parameters()).device
    context = context_pixels(_bagnet_of(model))
    band_rows = stream_band_rows(model, width, stride, device)
    canvas = BandCanvas(width, height, context, band_rows)

    def compute(band: Band) -> tuple[int, torch.Tensor]:
        logits = band_logits(model, band, context, stride, device=device, familiarity=familiarity)
        assert logits is not None  # nothing asks it to stop
        return band.row0 // stride, logits

    try:
        for x, y, pixels in pieces:
            box = canvas.clip(x, y, pixels.shape[1], pixels.shape[0])
            if box is None:
                continue
            for band in canvas.make_room(box):
                yield compute(band)
            canvas.place(pixels, x, y)
        for band in canvas.finish():
            yield compute(band)
    finally:
        canvas.close()


def default_tile(
    model: ConfiguredModel, base: int, step: int, device: torch.device | str = "cpu"
) -> int:
    """Output side of one tile: its widest map (the last stage's) within the device budget."""
    kind = torch.device(device).type
    budget = TILE_ACTIVATION_BUDGET.get(kind, TILE_ACTIVATION_BUDGET["cuda"])
    widest = model.config.width * 32 * 4  # channels x bytes of the last stage
    side = int(math.sqrt(budget / widest))  # positions at the base stride
    return max(8, side // step)


def chunk_side(model: ConfiguredModel, stride: int, device: torch.device | str = "cpu") -> int:
    """Output side (samples) of one chunk of a streamed region: :func:`logit_heatmap`'s
    default tile, at most :data:`STREAM_CHUNK_SIDE` input pixels a side on a CPU (the tile
    rule bounds the last stage's map; for narrow models the full-resolution maps of the
    first stage are the largest, and a server holds one chunk's per call)."""
    stride = _check_stride(stride)
    base = math.gcd(stride, _bagnet_of(model).output_stride)
    tile = default_tile(model, base, stride // base, device)
    if torch.device(device).type == "cpu":
        tile = min(tile, max(8, STREAM_CHUNK_SIDE // stride))
    return tile


def stream_band_rows(
    model: ConfiguredModel, width: int, stride: int, device: torch.device | str = "cpu"
) -> int:
    """Region rows per band when a region ``width`` pixels wide is streamed
    (:class:`milsil.inference.tiling.BandCanvas`): one tile of :func:`logit_heatmap` high,
    lower for wide regions (:data:`BAND_INPUT_BUDGET`); a multiple of ``stride``."""
    stride = _check_stride(stride)
    bagnet = _bagnet_of(model)
    kind = torch.device(device).type
    budget = BAND_INPUT_BUDGET.get(kind, BAND_INPUT_BUDGET["cuda"])
    tile = chunk_side(model, stride, device)
    return band_height(width, context_pixels(bagnet), stride, tile, budget, bytes_per_pixel=3)


def probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over the class axis (axis 0) of a logit heatmap."""
    return torch.softmax(logits, dim=0)
