"""milsil's one resampling rule (``milsil.data.shrink``: area averaging) and the paths that
use it: image files read at a downsample, slides read between their levels, the levels of
the TIFFs milsil writes. The expected values are worked out by hand here."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from milsil.data import shrink
from milsil.errors import MilsilError
from milsil.wsi.objects import ImageFile
from milsil.wsi.reader import open_slide
from milsil.wsi.tiff import write_pyramidal_tiff

# One row of a grey image: x * x * 7 mod 256 (not linear, so sampling and averaging differ).
ROW = np.array([0, 7, 28, 63, 112, 175, 252, 87, 192, 55, 188, 79], np.uint8)


def _grey(rows: int) -> np.ndarray:
    return np.repeat(ROW[None, :], rows, axis=0)


def test_integer_factors_are_block_means_rounded_half_up():
    img = _grey(12)
    # means of (0, 7), (28, 63), ... = 3.5, 45.5, 143.5, 169.5, 123.5, 133.5
    assert shrink(img, 6, 6, 2)[0].tolist() == [4, 46, 144, 170, 124, 134]
    # (0+7+28)/3 = 11.67, (63+112+175)/3 = 116.67, (252+87+192)/3 = 177, (55+188+79)/3 = 107.33
    assert shrink(img, 4, 4, 3)[0].tolist() == [12, 117, 177, 107]
    # (0+7+28+63)/4 = 24.5, (112+175+252+87)/4 = 156.5, (192+55+188+79)/4 = 128.5
    assert shrink(img, 3, 3, 4)[0].tolist() == [25, 157, 129]
    rgb = np.stack([img, img // 2, img // 4], axis=-1)
    assert shrink(rgb, 4, 4, 3)[2, 1].tolist() == [117, 58, 29]  # each channel on its own
    assert shrink(img, 12, 12, 1).tolist() == img.tolist()


def test_a_fractional_factor_averages_the_pixels_whose_centres_it_covers():
    # factor 1.5 (Pillow's BOX): output j averages the input pixels k whose centres k + 0.5
    # lie in (1.5 j, 1.5 (j + 1)]: j=0 -> k=0, 1 (0.5, 1.5); j=1 -> k=2 (2.5); j=2 -> k=3, 4.
    out = shrink(_grey(6), 3, 4, 1.5)[0].tolist()
    assert out == [4, 28, 88]  # (0 + 7) / 2 = 3.5 -> 4; (63 + 112) / 2 = 87.5 -> 88


def test_bad_arguments_are_named():
    with pytest.raises(MilsilError, match="uint8"):
        shrink(np.zeros((4, 4), np.float32), 2, 2, 2)
    with pytest.raises(MilsilError, match="factor >= 1"):
        shrink(np.zeros((4, 4), np.uint8), 8, 8, 0.5)


def test_image_files_slides_and_written_levels_use_the_rule(tmp_path):
    """A PNG at downsample 2 and 4, a pyramidal TIFF of the same pixels read at its level 1
    (written as 2x2 means) and at downsample 4 (shrunk from level 1, its last level)."""
    img = np.stack([_grey(128)] * 3, axis=-1)
    img = np.tile(img, (1, 11, 1))[:, :128]  # 128 x 128 from the 12-pixel row
    Image.fromarray(img).save(tmp_path / "a.png")
    png = ImageFile(tmp_path / "a.png")
    row = img[0, :, 0].astype(int)
    by2 = [(row[2 * j] + row[2 * j + 1] + 1) // 2 for j in range(64)]  # (2 a + 2 b + 2) // 4
    by4 = [(2 * sum(row[4 * j : 4 * j + 4]) + 4) // 8 for j in range(32)]  # 16-pixel sums
    assert png.read(0, 0, 64, 64, 2)[5, :, 0].tolist() == by2
    assert png.read(0, 0, 32, 32, 4)[7, :, 1].tolist() == by4
    write_pyramidal_tiff(tmp_path / "a.tif", img, tile=64, min_level_side=64)
    with open_slide(tmp_path / "a.tif") as slide:
        assert slide.level_downsamples == [1.0, 2.0]
        assert slide.read(0, 0, 64, 64, 2)[5, :, 0].tolist() == by2
        from_level = [(by2[2 * j] + by2[2 * j + 1] + 1) // 2 for j in range(32)]
        assert slide.read(0, 0, 32, 32, 4)[7, :, 2].tolist() == from_level
        assert max(abs(a - b) for a, b in zip(from_level, by4, strict=True)) <= 1
        # 3 is no whole multiple of level 1's 2: read from level 0, as the PNG is.
        by3 = [(3 * sum(row[3 * j : 3 * j + 3]) + 4) // 9 for j in range(42)]
        assert slide.read(0, 0, 42, 42, 3)[4, :, 0].tolist() == by3
        assert png.read(0, 0, 42, 42, 3)[4, :, 0].tolist() == by3
