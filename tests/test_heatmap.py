"""Logit heatmaps: dense == naive at every pixel, locality, tiling without seams, CAM."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from milsil.errors import MilsilError
from milsil.inference.cam import cam, gradcam
from milsil.inference.heatmap import logit_heatmap, probabilities
from milsil.inference.reference import naive_logit_heatmap
from milsil.models import create_model


@pytest.mark.parametrize("arch", ["bagnet9", "bagnet17", "bagnet33"])
@pytest.mark.parametrize("stride", [1, 2, 4, 8])
def test_dense_equals_naive(small_bagnet, arch, stride):
    model = small_bagnet(arch, width=8, seed=stride)
    rf = model.receptive_field
    image = torch.randn(
        3, rf + 6, rf + 4, generator=torch.Generator().manual_seed(1)
    )  # odd-ish sizes
    dense = logit_heatmap(model, image, stride=stride)
    naive = naive_logit_heatmap(model, image, stride=stride)
    h, w = image.shape[1:]
    assert dense.shape == (3, -(-h // stride), -(-w // stride)) == naive.shape
    assert dense.dtype == torch.float32
    assert (dense - naive).abs().max().item() < 1e-4


def test_dense_equals_naive_odd_sizes_and_other_strides(small_bagnet):
    model = small_bagnet("bagnet9", seed=3)
    image = torch.randn(3, 21, 13)
    for stride in (1, 3, 5, 16):
        diff = logit_heatmap(model, image, stride=stride) - naive_logit_heatmap(
            model, image, stride=stride
        )
        assert diff.abs().max().item() < 1e-4, stride


@pytest.mark.parametrize("arch", ["bagnet9", "bagnet17"])
def test_pixel_logit_depends_exactly_on_its_window(small_bagnet, arch):
    """Changing one pixel moves exactly the logits whose window contains it."""
    model = small_bagnet(arch, seed=5)
    with torch.no_grad():
        model.fc.weight *= 1000  # make the (small, random-init) effects easy to see
    half = model.receptive_field // 2
    image = torch.randn(3, 37, 41, generator=torch.Generator().manual_seed(5))
    base = logit_heatmap(model, image)
    for y, x in [(18, 20), (0, 0), (36, 3), (10, 40)]:
        changed = image.clone()
        changed[:, y, x] += torch.tensor([3.0, -3.0, 3.0])
        delta = (logit_heatmap(model, changed) - base).abs().amax(dim=0)
        window = torch.zeros_like(delta, dtype=torch.bool)
        window[max(0, y - half) : y + half + 1, max(0, x - half) : x + half + 1] = True
        assert (delta[window] > 0).all(), (y, x)
        assert (delta[~window] == 0).all(), (y, x)


def test_tiles_equal_one_pass_without_seams(small_bagnet):
    model = small_bagnet("bagnet17", seed=7)
    image = torch.randn(3, 57, 43)
    whole = logit_heatmap(model, image, stride=1, tile=1000)
    for tile in (5, 16):
        tiled = logit_heatmap(model, image, stride=1, tile=tile)
        assert (tiled - whole).abs().max().item() < 1e-5
    assert (
        logit_heatmap(model, image, stride=2, tile=3) - logit_heatmap(model, image, stride=2)
    ).abs().max() < 1e-5


def test_margin_uses_real_context(small_bagnet):
    """A region cut with a margin of real pixels gives exactly the big image's values."""
    model = small_bagnet("bagnet9", seed=9)
    image = torch.randn(3, 40, 48)
    full = logit_heatmap(model, image)
    margin = 4
    region = image[:, 10 - margin : 30 + margin, 8 - margin : 40 + margin]
    part = logit_heatmap(model, region, margin=margin)
    assert part.shape == (3, 20, 32)
    assert (part - full[:, 10:30, 8:40]).abs().max().item() < 1e-5


def test_uint8_image_is_normalized_with_the_models_statistics(small_bagnet):
    model = small_bagnet("bagnet9")
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(15, 12, 3), dtype=np.uint8)
    mean, std = model.normalization
    manual = (
        torch.from_numpy(pixels).permute(2, 0, 1).float() / 255 - torch.tensor(mean)[:, None, None]
    ) / torch.tensor(std)[:, None, None]
    assert (logit_heatmap(model, pixels) - logit_heatmap(model, manual)).abs().max() < 1e-4


def test_bf16_close_to_fp32(small_bagnet):
    model = small_bagnet("bagnet9")
    image = torch.randn(3, 24, 24)
    ref = logit_heatmap(model, image)
    approx = logit_heatmap(model, image, bf16=True)
    assert approx.dtype == torch.float32
    assert (approx - ref).abs().max().item() < 0.1 * ref.abs().max().item() + 0.05


@pytest.mark.parametrize(
    "image,message",
    [
        (np.zeros((20, 20, 4), np.uint8), "image must be RGB"),
        (np.zeros((20, 20), np.uint8), "image must be RGB"),
        (torch.zeros(1, 20, 20), "image must be RGB"),
        (np.zeros((5, 30, 3), np.uint8), "needs at least 9x9"),
        (torch.full((3, 12, 12), float("nan")), "NaN"),
    ],
)
def test_bad_images_name_the_problem(small_bagnet, image, message):
    with pytest.raises(MilsilError, match=message):
        logit_heatmap(small_bagnet("bagnet9"), image)


def test_bad_stride_and_non_bagnet(small_bagnet):
    with pytest.raises(MilsilError, match="stride must be a positive integer"):
        logit_heatmap(small_bagnet("bagnet9"), torch.zeros(3, 12, 12), stride=0)
    with pytest.raises(MilsilError, match="need a BagNet"):
        logit_heatmap(create_model("resnet50", 2, width=8), torch.zeros(3, 40, 40))


def test_probabilities_sum_to_one(small_bagnet):
    probs = probabilities(logit_heatmap(small_bagnet("bagnet9"), torch.randn(3, 12, 12)))
    assert torch.allclose(probs.sum(0), torch.ones(12, 12), atol=1e-6)


@pytest.mark.parametrize("arch", ["bagnet9", "resnet50", "densenet161"])
def test_cam_and_gradcam_shapes(arch):
    model = create_model(arch, 2, width=8).eval()
    image = torch.randn(3, 64, 48)
    maps = cam(model, image)
    assert maps.shape == (2, 64, 48)
    grad = gradcam(model, image, 1)
    assert grad.shape == (64, 48) and (grad >= 0).all()
    with pytest.raises(MilsilError, match="class_index must be in 0..1"):
        gradcam(model, image, 2)


def test_cam_of_bagnet_is_the_coarse_logit_grid(small_bagnet):
    """For a BagNet, CAM before upsampling is the stride-8 logit map of top-left-aligned windows."""
    model = small_bagnet("bagnet9", num_classes=2)
    image = torch.randn(3, 41, 41)
    fmap = model.feature_map(image[None])
    grid = torch.einsum("cd,dhw->chw", model.fc.weight, fmap[0]) + model.fc.bias[:, None, None]
    window = image[:, 8:17, 16:25]
    direct = model(window[None, None]).sil_logits[0, 0]
    assert torch.allclose(grid[:, 1, 2], direct, atol=1e-5)
    assert cam(model, image).shape == (2, 41, 41)


def test_dense_network_cache_follows_weight_updates(small_bagnet):
    model = small_bagnet("bagnet9")
    image = torch.randn(3, 16, 16)
    before = logit_heatmap(model, image)
    with torch.no_grad():
        model.fc.bias += 1.0  # what an optimizer step does: an in-place update
    after = logit_heatmap(model, image)
    assert torch.allclose(after, before + 1.0, atol=1e-5)
    model.load_state_dict(create_model("bagnet9", 3, width=8).state_dict())
    assert torch.allclose(logit_heatmap(model, image), naive_logit_heatmap(model, image), atol=1e-4)


def test_unfused_path_gives_the_same_logits(small_bagnet, monkeypatch):
    """The plain conv/ReLU/add path (GPUs, builds without oneDNN) matches the fused one."""
    import milsil.inference.heatmap as heatmap_module

    model = small_bagnet("bagnet17", seed=11)
    image = torch.randn(3, 30, 26)
    fused = logit_heatmap(model, image, stride=2)
    monkeypatch.setattr(heatmap_module, "_POINTWISE", None)
    heatmap_module.clear_dense_cache(model)
    plain = logit_heatmap(model, image, stride=2)
    assert (plain - fused).abs().max().item() < 1e-5
    assert (plain - naive_logit_heatmap(model, image, stride=2)).abs().max().item() < 1e-4


def test_border_windows_see_mirrored_tissue(small_bagnet):
    """Border policy: outside pixels are the image's mirror image, not a constant."""
    model = small_bagnet("bagnet9", seed=13)
    image = torch.randn(3, 20, 20)
    mirrored = torch.nn.functional.pad(image[None], (4, 4, 4, 4), mode="reflect")[0]
    inner = logit_heatmap(model, mirrored, margin=4)
    assert (logit_heatmap(model, image) - inner).abs().max().item() < 1e-5
    window = mirrored[:, 0:9, 0:9]  # the window centred on pixel (0, 0)
    direct = model(window[None, None]).sil_logits[0, 0]
    assert torch.allclose(logit_heatmap(model, image)[:, 0, 0], direct, atol=1e-5)
