"""The tiled-inference engine: context, mirroring and bands, each checked on its own."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from milsil.errors import MilsilError
from milsil.inference.heatmap import iter_logit_bands, logit_heatmap
from milsil.inference.tiling import (
    BandCanvas,
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


# --------------------------------------------------------------------------- streamed bands


def _bagnet(width=4, seed=0):
    torch.manual_seed(seed)
    model = create_model("bagnet9", num_classes=2, width=width, class_names=["a", "b"]).eval()
    with torch.no_grad():  # logits of a few units that vary: absolute tolerances mean something
        model.fc.weight.mul_(1000.0)
    return model


def _stream(model, image, region, tile, stride, band, order=None):
    """Stream ``image`` (all of it is sent: region plus whatever context it has) in tiles
    of ``tile`` px, in row order (or ``order``), through a BandCanvas of ``region``."""
    c = context_pixels(model)
    rx, ry, w, h = region
    canvas = BandCanvas(w, h, c, band)
    out = {}

    def compute(b):
        out[b.row0] = logit_heatmap(model, b.pixels, stride=stride, margin=c)

    pieces = [
        (x, y, image[y : y + tile, x : x + tile])
        for y in range(0, image.shape[0], tile)
        for x in range(0, image.shape[1], tile)
    ]
    for x, y, piece in order(pieces) if order else pieces:
        box = canvas.clip(x - rx, y - ry, piece.shape[1], piece.shape[0])
        if box is None:
            continue
        for b in canvas.make_room(box):
            compute(b)
        canvas.place(piece, x - rx, y - ry)
    for b in canvas.finish():
        compute(b)
    return torch.cat([out[k] for k in sorted(out)], dim=1)


@pytest.mark.parametrize("stride", [1, 3, 4])
def test_bands_of_a_streamed_region_equal_the_whole_image(stride):
    model = _bagnet()
    image = np.random.default_rng(stride).integers(0, 256, (90, 70, 3), dtype=np.uint8)
    for band in (stride, 3 * stride, 1000):
        # The whole image (no context: mirrored at every border).
        got = _stream(model, image, (0, 0, 70, 90), 16, stride, band)
        np.testing.assert_allclose(got, logit_heatmap(model, image, stride=stride), atol=1e-4)
        # An inner region with its real context (and a wider margin, ignored).
        got = _stream(model, image, (10, 12, 50, 60), 13, stride, band)
        ref = logit_heatmap(model, image[8:76, 6:64], stride=stride, margin=4)
        np.testing.assert_allclose(got, ref, atol=1e-4)
        # A region at the image's corner with 2 px of context: real, then mirrored.
        got = _stream(model, image[:52, :42], (0, 0, 40, 50), 11, stride, band)
        full = logit_heatmap(model, image[:52, :42], stride=stride)
        np.testing.assert_allclose(got, full[:, : -(-50 // stride), : -(-40 // stride)], atol=1e-4)


def test_band_canvas_tiles_in_any_order_within_its_window_and_row_order_beyond():
    model = _bagnet()
    image = np.random.default_rng(5).integers(0, 256, (64, 40, 3), dtype=np.uint8)
    ref = logit_heatmap(model, image, stride=2)
    shuffled = lambda pieces: pieces[::-1]  # noqa: E731 - bottom row first
    # A window that holds the whole region: any order.
    got = _stream(model, image, (0, 0, 40, 64), 8, 2, 1000, order=shuffled)
    np.testing.assert_allclose(got, ref, atol=1e-4)
    # Bands of 4 rows: the bottom row first needs room, so the top bands are computed
    # and found missing; a tile reaching rows a computed band used is refused.
    with pytest.raises(MilsilError, match="in row order"):
        _stream(model, image, (0, 0, 40, 64), 8, 2, 4, order=shuffled)
    late = lambda pieces: pieces + pieces[:1]  # noqa: E731 - the first tile again, at the end
    with pytest.raises(MilsilError, match="in row order"):
        _stream(model, image, (0, 0, 40, 64), 8, 2, 4, order=late)


def test_band_canvas_refuses_gaps_and_tiny_regions():
    from milsil.inference.tiling import UncoveredError

    canvas = BandCanvas(20, 20, 4, 4)
    piece = np.zeros((8, 20, 3), dtype=np.uint8)
    list(canvas.make_room(canvas.clip(0, 0, 20, 8)))
    canvas.place(piece, 0, 0)
    with pytest.raises(UncoveredError) as info:
        list(canvas.finish())
    assert (info.value.x, info.value.y) == (0, 8)
    tiny = BandCanvas(3, 3, 4, 4)
    list(tiny.make_room(tiny.clip(0, 0, 3, 3)))
    tiny.place(np.zeros((3, 3, 3), dtype=np.uint8), 0, 0)
    with pytest.raises(MilsilError, match="at least 9x9"):
        list(tiny.finish())
    with pytest.raises(MilsilError, match="no tiles"):
        list(BandCanvas(5, 5, 4, 4).finish())


def test_band_canvas_mirrors_sides_whose_corners_were_not_sent():
    """Context above and below across the region, left and right only beside it (no
    corners): the rows count as real, the columns are mirrored; a pixel nobody sent is
    never used."""
    model = _bagnet()
    big = np.random.default_rng(3).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    p = context_pixels(model)
    canvas = BandCanvas(48 - 2 * p, 40 - 2 * p, p, 1000)
    for piece, x, y in ((big[:, p:-p], 0, -p), (big[p:-p, :], -p, 0)):  # row order
        list(canvas.make_room(canvas.clip(x, y, piece.shape[1], piece.shape[0])))
        canvas.place(piece, x, y)
    (band,) = list(canvas.finish())
    got = logit_heatmap(model, band.pixels, margin=p)
    expected = np.pad(big[:, p:-p], ((0, 0), (p, p), (0, 0)), mode="reflect")
    assert (got - logit_heatmap(model, expected, margin=p)).abs().max().item() < 1e-5


def test_band_canvas_memory_is_bounded_by_its_width():
    reserved = []
    canvas = BandCanvas(1000, 100_000, 4, 32, reserve=reserved.append)
    piece = np.zeros((64, 1000, 3), dtype=np.uint8)
    for y in range(0, 100_000, 64):
        for _ in canvas.make_room(canvas.clip(0, y, 1000, 64)):
            pass
        canvas.place(piece, 0, y)
        if y > 1000:
            break
    assert canvas.capacity <= 32 + 8 + 64
    assert max(reserved) == canvas.nbytes(canvas.capacity) < 1008 * 200 * 4 + 1008 * 40 * 3
