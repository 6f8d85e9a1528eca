"""A region's appearance, as sums that add up band by band: colour and detail per scale.

The model's own features miss some shifts a pathologist would reject at a glance: a
blurred scan, the wrong magnification, a stain much stronger or paler than the lab's
(``bench/ood_bench.py``: windows of a blurred image sit *nearer* the class centres than
sharp ones). The appearance statistic looks at the pixels themselves instead:

* colour: the mean optical density ``-log((I + 1) / 256)`` of each RGB channel and their
  covariance (stain, counterstain, glass, grayscale, pen ink);
* detail per scale: the mean squared Laplacian of the summed optical density at four
  octaves (the image averaged over 1, 2, 4 and 8 pixel squares), i.e. how much structure
  the region has at each size (blur removes the fine octaves; a x2 or x0.5 magnification
  moves the energy one octave down or up).

Both are taken over the region's *tissue* pixels (absorbing and coloured: ``TISSUE_OD``,
``TISSUE_COLOUR``): a region or slide tile that is half glass is judged by its tissue,
as the training images were (a quarter of glass added to held-out images flagged half of
them when all pixels counted). A region with under ``TISSUE_MIN_SHARE`` tissue is judged
on all its pixels, so empty glass is still unlike the training data. Detail counts the
positions whose centre (pooled at that octave) is mostly in the pixel set.

:func:`appearance_sums` turns pixels into plain sums (float64, :data:`SUMS` values) so a
region given band by band, tile by tile or as a whole adds them up; the descriptor those
sums make and the training distribution it is judged against are in
:mod:`milsil.models.familiarity` (``AppearanceReference``). Laplacians use each piece's
own pixels only (no padding), so a region summed band by band misses the few seam
pixels a whole-image computation counts: its descriptor differs slightly, never by
more than those pixels' share.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from milsil.errors import MilsilError
from milsil.models.familiarity import OCTAVES, OD_PAIRS, PART, SUMS, TISSUE_COLOUR, TISSUE_OD

# Sums layout (SUMS values): the tissue pixels' part, then all pixels' (PART values each):
# pixel count, sum of OD per channel (3), sum of OD products (6: 00, 01, 02, 11, 12, 22),
# then per octave (OCTAVES: detail at 1, 2, 4 and 8 pixel squares) the sum of squared
# Laplacians, then per octave how many were summed.
_LAPLACIAN = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]).view(1, 1, 3, 3)


def optical_density(rgb: torch.Tensor) -> torch.Tensor:
    """uint8-valued ``[3, h, w]`` -> optical density ``-log((I + 1) / 256)`` (0 = white)."""
    return -torch.log((rgb.double() + 1.0) / 256.0)


def appearance_sums(rgb: np.ndarray | torch.Tensor) -> np.ndarray:
    """The appearance sums of uint8 RGB pixels ``[h, w, 3]`` (float64 ``[SUMS]``).

    Sums of several pieces (bands, tiles) add: ``appearance_sums(a) + appearance_sums(b)``
    is the two pieces' sums. An octave a piece is too small for (under 3 pooled pixels a
    side) adds nothing to that octave.
    """
    if isinstance(rgb, np.ndarray):
        writable = rgb.flags.writeable and rgb.flags.c_contiguous
        rgb = torch.from_numpy(rgb if writable else np.array(rgb, order="C"))
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != torch.uint8:
        raise MilsilError(
            f"appearance needs uint8 RGB pixels [height, width, 3], got {rgb.dtype} "
            f"{tuple(rgb.shape)}"
        )
    out = np.zeros(SUMS, dtype=np.float64)
    h, w = rgb.shape[:2]
    if h == 0 or w == 0:
        return out
    od = optical_density(rgb.permute(2, 0, 1))  # [3, h, w] float64
    colour = od.max(dim=0).values - od.min(dim=0).values
    tissue = ((od.sum(dim=0) > TISSUE_OD) & (colour > TISSUE_COLOUR)).double()
    sets = torch.stack([tissue, torch.ones_like(tissue)])  # the two parts' pixels, [2, h, w]
    flat = od.reshape(3, -1)
    base = 4 + len(OD_PAIRS)
    for part, weight in enumerate(sets):
        w, at = weight.reshape(-1), part * PART
        out[at] = float(w.sum())
        out[at + 1 : at + 4] = (flat * w).sum(dim=1).numpy()
        for k, (i, j) in enumerate(OD_PAIRS):
            out[at + 4 + k] = float((flat[i] * flat[j] * w).sum())
    # Detail: one pyramid and one Laplacian per octave for both parts; each part counts the
    # positions whose (pooled) centre is mostly in its pixel set.
    detail = od.sum(dim=0)[None, None].float()  # [1, 1, h, w]
    inside = sets[:, None].float()  # [2, 1, h, w]
    for octave in range(OCTAVES):
        if octave:
            detail, inside = F.avg_pool2d(detail, 2), F.avg_pool2d(inside, 2)
        if min(detail.shape[-2:]) < 3:
            break
        energy = F.conv2d(detail, _LAPLACIAN).double().pow(2)  # [1, 1, h', w']
        centre = (inside[..., 1:-1, 1:-1] >= 0.5).double()  # [2, 1, h', w']
        for part in range(2):
            at = part * PART + base
            out[at + octave] = float((energy * centre[part]).sum())
            out[at + OCTAVES + octave] = float(centre[part].sum())
    return out
