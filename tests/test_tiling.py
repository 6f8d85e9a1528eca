"""The tiled-inference engine: context, mirroring and bands, each checked on its own."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from milsil.errors import MilsilError
from milsil.inference.heatmap import iter_logit_bands, logit_heatmap
from milsil.inference.tiling import (
    ContextCanvas,
    context_box,
    context_pixels,
    iter_chunks,
    mirror_pad,
)
from milsil.models import create_model


def test_context_is_half_the_receptive_field_for_each_bagnet():
    for arch, rf in (("bagnet9", 9), ("bagnet17", 17), ("bagnet33", 33)):
        assert context_pixels(create_model(arch, width=4)) == (rf - 1) // 2


def test_models_without_a_receptive_field_have_no_context():
    with pytest.raises(MilsilError, match="no bounded receptive field"):
        context_pixels(create_model("admil"))


def test_context_box_clips_to_the_image_and_mirrors_the_rest():
    box = context_box(2, 0, 10, 5, 4, image_width=14, image_height=100)
    assert (box.x0, box.y0, box.x1, box.y1) == (0, 0, 14, 9)
    assert (box.left, box.top, box.right, box.bottom) == (2, 4, 2, 0)
    assert box.width + box.left + box.right == 10 + 2 * 4


def test_mirror_pad_reflects_without_repeating_the_edge():
    row = torch.arange(5.0).view(1, 1, 5).expand(3, 1, 5)
    out = mirror_pad(row, 2, 1, 0, 0)
    assert out[0, 0].tolist() == [2.0, 1.0, 0.0, 1.0, 2.0, 3.0, 4.0, 3.0]
    with pytest.raises(MilsilError, match="cannot be mirrored"):
        mirror_pad(row, 5, 0, 0, 0)


def test_canvas_without_context_equals_mirroring_the_region():
    rng = torch.Generator().manual_seed(0)
    region = torch.randn(3, 12, 17, generator=rng)
    canvas = ContextCanvas(width=17, height=12, context=4)
    # Two pieces that together cover the region exactly.
    assert canvas.place(region[:, :, :9], 0, 0) == (0, 0, 9, 12)
    assert canvas.place(region[:, :, 9:], 9, 0) == (9, 0, 17, 12)
    assert canvas.covered.all()
    canvas.mirror_missing_context()
    expected = F.pad(region[None], (4, 4, 4, 4), mode="reflect")[0]
    assert torch.equal(canvas.canvas, expected)


def test_canvas_keeps_real_context_where_it_was_supplied():
    rng = torch.Generator().manual_seed(1)
    image = torch.randn(3, 30, 30, generator=rng)
    canvas = ContextCanvas(width=10, height=10, context=4)
    # The region is image[10:20, 10:20]; send it with all its real context at once.
    canvas.place(image[:, 6:24, 6:24], -4, -4)
    canvas.mirror_missing_context()
    assert torch.equal(canvas.canvas, image[:, 6:24, 6:24])
    # A piece wholly beyond the context lands nowhere.
    assert canvas.clip(40, 40, 5, 5) is None


def test_chunks_cover_the_map_once_in_row_order():
    seen = np.zeros((23, 41), dtype=int)
    order = []
    for r0, r1, c0, c1 in iter_chunks(23, 41, 8):
        seen[r0:r1, c0:c1] += 1
        order.append((r0, c0))
    assert (seen == 1).all()
    assert order == sorted(order)


def test_adaptive_chunks_shrink_on_a_slow_device_and_still_cover_once():
    seen = np.zeros((40, 40), dtype=int)
    sides = []
    for r0, r1, c0, c1 in iter_chunks(40, 40, 32, target_seconds=0.0, min_side=8):
        seen[r0:r1, c0:c1] += 1
        sides.append(c1 - c0)
    assert (seen == 1).all()
    assert min(sides) == 8 and sides[0] == 32


def test_bands_fill_the_same_map_as_one_call_and_stop_when_asked():
    torch.manual_seed(0)
    model = create_model("bagnet9", width=4).eval()
    image = np.random.default_rng(0).integers(0, 256, (40, 33, 3), dtype=np.uint8)
    whole = logit_heatmap(model, image, stride=2)
    bands = list(iter_logit_bands(model, image, stride=2, tile=4))
    assert [done for done, _ in bands] == [4, 8, 12, 16, 20]
    torch.testing.assert_close(bands[-1][1], whole, rtol=0, atol=1e-5)
    calls = []
    stopped = list(
        iter_logit_bands(
            model, image, stride=2, tile=4, should_stop=lambda: len(calls) > 0 or calls.append(1)
        )
    )
    assert stopped == []
