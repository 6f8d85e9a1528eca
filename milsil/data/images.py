"""Pixels in, bags out: reading images and masks, cutting images into patch bags, normalising.

The paper crops each image exhaustively into patches without resizing (resizing would throw
away the cellular detail the 9x9 receptive field looks at), so :func:`image_to_bag` is an
exact grid crop and :func:`patch_origins` tells where each patch came from.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from milsil.errors import MilsilError, NotFoundError

# Large but finite: a corrupt header must not make us allocate terabytes; whole slides are
# read region by region elsewhere, never through this function.
Image.MAX_IMAGE_PIXELS = 40_000 * 40_000


def _open(path: str | Path, what: str) -> Image.Image:
    path = Path(path)
    if not path.exists():
        raise NotFoundError(f"{what} not found: {path}")
    if not path.is_file():
        raise MilsilError(f"{what} is not a file: {path}")
    try:
        img = Image.open(path)
        img.load()
    except UnidentifiedImageError:
        raise MilsilError(
            f"{what} {path} is not a readable image (allowed: PNG, JPEG, TIFF and other formats Pillow reads)"
        ) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise MilsilError(f"{what} {path} is corrupt or truncated: {exc}") from None
    except Image.DecompressionBombError as exc:
        raise MilsilError(f"{what} {path} is too large: {exc}") from None
    return img


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    """Scale 16-bit/32-bit/float single-channel data to 0..255 (Pillow's convert would clip)."""
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == bool:
        return arr.astype(np.uint8) * 255
    if np.issubdtype(arr.dtype, np.floating):
        top = 1.0 if float(np.nanmax(arr, initial=0.0)) <= 1.0 else 255.0
        return np.clip(np.nan_to_num(arr) / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
    top = 65535 if int(arr.max(initial=0)) > 255 else 255
    return np.clip(arr.astype(np.float64) / top * 255.0 + 0.5, 0, 255).astype(np.uint8)


def shrink(pixels: np.ndarray, width: int, height: int, factor: float) -> np.ndarray:
    """``uint8`` pixels (``[H, W]`` or ``[H, W, C]``) seen at 1/``factor`` of their size:
    ``[height, width, ...]``, output pixel ``(i, j)`` the mean of the input pixels in
    ``[j*factor, (j+1)*factor) x [i*factor, (i+1)*factor)`` (rounded half up).

    milsil's one resampling rule (area, or box, averaging), used wherever pixels are made at
    a downsample: image files read at a downsample (CLI and server), slides read between
    their pyramid levels, the levels of the TIFFs milsil writes. It is what a slide's pyramid
    holds (each level a block average of the one below), so a cell measured at downsample 2
    gets the same pixels from a PNG as from the same image as a pyramidal TIFF. QuPath 0.6
    shrinks a region with Java2D bilinear sampling instead (AbstractTileableImageServer
    .readRegion): equal to this at downsample 2 of a level, not at 3 or 4 (see the README).
    An integer ``factor`` is an exact block mean; another one is Pillow's BOX filter over the
    covered rectangle (each output pixel the mean of the input pixels whose centres it
    covers). Input beyond ``width*factor`` x ``height*factor`` is not used.
    """
    if pixels.dtype != np.uint8:
        raise MilsilError(f"shrink takes uint8 pixels, got {pixels.dtype}")
    if width < 1 or height < 1 or not factor >= 1:
        raise MilsilError(f"shrink to {width}x{height} by {factor}: size >= 1 and factor >= 1")
    k = round(factor)
    if abs(factor - k) < 1e-9 and pixels.shape[0] >= height * k and pixels.shape[1] >= width * k:
        if k == 1:
            return pixels[:height, :width]
        block = pixels[: height * k, : width * k].reshape(height, k, width, k, *pixels.shape[2:])
        sums = block.sum(axis=(1, 3), dtype=np.uint32)
        return ((sums + k * k // 2) // (k * k)).astype(np.uint8)
    box = (0.0, 0.0, min(width * factor, pixels.shape[1]), min(height * factor, pixels.shape[0]))
    image = Image.fromarray(np.ascontiguousarray(pixels))
    return np.asarray(image.resize((width, height), Image.Resampling.BOX, box=box))


def load_rgb(path: str | Path) -> np.ndarray:
    """Read an image as ``uint8 HxWx3`` RGB.

    Grey, palette, RGBA (alpha dropped: slides are opaque) and 16-bit images are converted,
    so every model sees the same layout. Raises :class:`NotFoundError` for a missing file and
    :class:`MilsilError` for anything that is not a readable image.
    """
    img = _open(path, "image")
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        grey = _to_uint8(np.asarray(img))
        return np.ascontiguousarray(np.repeat(grey[..., None], 3, axis=2))
    if img.mode != "RGB":
        img = img.convert("RGBA").convert("RGB") if img.mode in ("P", "PA") else img.convert("RGB")
    arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise MilsilError(f"image {path} could not be read as RGB (shape {arr.shape})")
    return np.ascontiguousarray(arr)


def load_mask(path: str | Path) -> np.ndarray:
    """Read a region mask as ``bool HxW``: any non-zero pixel is inside.

    Colour masks count a pixel as inside when any colour channel is non-zero (an alpha
    channel is ignored, so a transparent-background PNG with black outside still works).
    """
    img = _open(path, "mask")
    if img.mode == "1":
        return np.asarray(img, dtype=bool).copy()
    arr = np.asarray(img)
    if arr.ndim == 3:
        channels = arr.shape[2]
        if channels in (2, 4):  # LA / RGBA: drop alpha
            arr = arr[..., : channels - 1]
        return np.ascontiguousarray(arr.any(axis=2))
    return np.ascontiguousarray(arr != 0)


def to_tensor(
    pixels: np.ndarray | torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
) -> torch.Tensor:
    """``uint8 [..., H, W, 3]`` -> normalised ``float32 [..., 3, H, W]``: ``(x / 255 - mean) / std``.

    The single place where pixels become model input, so training, evaluation and heatmaps
    cannot disagree about normalisation.
    """
    if isinstance(pixels, np.ndarray):
        if pixels.dtype != np.uint8:
            raise MilsilError(f"pixels must be uint8, got {pixels.dtype}")
        if not pixels.flags.writeable:  # e.g. np.asarray(PIL image): torch wants a writable buffer
            pixels = pixels.copy()
        t = torch.from_numpy(np.ascontiguousarray(pixels))
    elif isinstance(pixels, torch.Tensor):
        if pixels.dtype != torch.uint8:
            raise MilsilError(f"pixels must be uint8, got {pixels.dtype}")
        t = pixels
    else:
        raise MilsilError(
            f"pixels must be a numpy array or torch tensor, got {type(pixels).__name__}"
        )
    if t.ndim < 3 or t.shape[-1] != 3:
        raise MilsilError(f"pixels must have shape [..., H, W, 3], got {tuple(t.shape)}")
    if len(mean) != 3 or len(std) != 3 or any(float(s) <= 0 for s in std):
        raise MilsilError("normalisation needs 3 means and 3 positive standard deviations")
    m = torch.tensor([float(v) for v in mean], dtype=torch.float32)
    s = torch.tensor([float(v) for v in std], dtype=torch.float32)
    out = t.to(torch.float32)
    out.div_(255.0).sub_(m).div_(s)  # in place: one float copy of the pixels, not four
    return out.movedim(-1, -3).contiguous()


def _check_patch_size(patch_size: int) -> int:
    if (
        isinstance(patch_size, bool)
        or not isinstance(patch_size, (int, np.integer))
        or patch_size < 1
    ):
        raise MilsilError(f"patch_size must be a positive integer, got {patch_size!r}")
    return int(patch_size)


def patch_origins(height: int, width: int, patch_size: int) -> list[tuple[int, int]]:
    """Top-left ``(y, x)`` of every patch :func:`image_to_bag` cuts, in the same (row-major) order."""
    p = _check_patch_size(patch_size)
    if height < p or width < p:
        raise MilsilError(
            f"image of {width}x{height} pixels is smaller than one {p}x{p} patch; "
            f"use a smaller patch size or a larger image"
        )
    return [(y, x) for y in range(0, height - p + 1, p) for x in range(0, width - p + 1, p)]


def image_to_bag(image: np.ndarray, patch_size: int) -> np.ndarray:
    """Cut ``uint8 HxWx3`` into a bag ``uint8 [N, p, p, 3]`` on an exact grid, no resizing.

    Patches are row-major (as :func:`patch_origins`); a strip narrower than a patch at the
    right or bottom is dropped rather than padded, so no patch holds made-up pixels.
    """
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
        shape = getattr(image, "shape", None)
        raise MilsilError(f"image must be an HxWx3 array, got shape {shape}")
    p = _check_patch_size(patch_size)
    h, w = image.shape[:2]
    if h < p or w < p:
        raise MilsilError(
            f"image of {w}x{h} pixels is smaller than one {p}x{p} patch; "
            f"use a smaller patch size or a larger image"
        )
    ny, nx = h // p, w // p
    grid = image[: ny * p, : nx * p].reshape(ny, p, nx, p, 3).transpose(0, 2, 1, 3, 4)
    return np.ascontiguousarray(grid.reshape(ny * nx, p, p, 3))
