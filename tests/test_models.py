"""Models: exact BagNet definition, heads, baselines, checkpoints, input errors."""

from __future__ import annotations

import pytest
import torch
import torchvision

from milsil.errors import CheckpointError, MilsilError, NotFoundError
from milsil.models import (
    create_model,
    list_models,
    load_checkpoint,
    load_pretrained_backbone,
    save_checkpoint,
)
from milsil.models.bagnet import BAGNET_KERNEL3, BagNet


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_bagnet9_has_the_published_parameter_count():
    assert n_params(create_model("bagnet9", 2)) == 13_643_842


@pytest.mark.parametrize("arch,rf", [("bagnet9", 9), ("bagnet17", 17), ("bagnet33", 33)])
def test_receptive_field_window_gives_one_output(arch, rf):
    model = create_model(arch, 2, width=8).eval()
    assert model.receptive_field == rf
    fmap = model.feature_map(torch.randn(1, 3, rf, rf))
    assert fmap.shape[-2:] == (1, 1)
    # One pixel smaller cannot be processed: there is no padding anywhere.
    with pytest.raises(MilsilError, match=f"at least {rf}x{rf}"):
        model(torch.randn(1, 1, 3, rf - 1, rf))


def test_bagnet_structure_matches_reference():
    net = BagNet(BAGNET_KERNEL3["bagnet9"], width=64)
    assert net.conv1.kernel_size == (1, 1) and net.conv2.kernel_size == (3, 3)
    assert net.conv2.padding == (0, 0)
    assert all(m.bias is None for m in net.modules() if isinstance(m, torch.nn.Conv2d))
    kernels = [
        [b.conv2.kernel_size[0] for b in layer]
        for layer in (net.layer1, net.layer2, net.layer3, net.layer4)
    ]
    assert kernels == [[3, 1, 1], [3, 1, 1, 1], [1] * 6, [1] * 3]
    strides = [
        layer[0].conv2.stride[0] for layer in (net.layer1, net.layer2, net.layer3, net.layer4)
    ]
    assert strides == [2, 2, 2, 1]
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in net.modules())
    # Output stride 8: a 9 + 8k input gives k+1 outputs.
    assert net(torch.randn(1, 3, 9 + 8 * 3, 9 + 8 * 5)).shape[-2:] == (4, 6)


def test_resnet50_matches_torchvision():
    ours = create_model("resnet50", 2)
    theirs = torchvision.models.resnet50(weights=None, num_classes=2)
    assert n_params(ours) == n_params(theirs)
    assert {"backbone." + k for k in theirs.state_dict() if not k.startswith("fc.")} == {
        k for k in ours.state_dict() if not k.startswith("fc.")
    }


@pytest.mark.parametrize("arch", list_models())
def test_forward_contract(arch):
    model = create_model(arch, 3, width=8).eval()
    size = max(model.min_patch_size, 32)
    out = model(torch.randn(2, 4, 3, size, size))
    assert out.mil_logits.shape == (2, 3)
    if arch.startswith("admil"):
        assert out.sil_logits is None
        assert out.attention.shape == (2, 4)
        assert torch.allclose(out.attention.sum(1), torch.ones(2))
    else:
        assert out.sil_logits.shape == (2, 4, 3)
        # One shared linear classifier: the bag logits are the mean of the patch logits.
        assert torch.allclose(out.mil_logits, out.sil_logits.mean(1), atol=1e-5)


@pytest.mark.parametrize("head", ["sil", "mil", "milsil"])
def test_every_bagnet_head_gives_per_patch_logits(head):
    model = create_model("bagnet9", 2, head=head, width=8).eval()
    out = model(torch.randn(1, 1, 3, 9, 9))
    assert out.sil_logits.shape == (1, 1, 2) and model.head == head


def test_model_knows_classes_and_normalization():
    model = create_model("bagnet17", 2, width=8, class_names=["benign", "malignant"])
    assert model.class_names == ["benign", "malignant"]
    mean, std = model.normalization
    assert len(mean) == 3 and len(std) == 3


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"arch": "bagnet10"}, "unknown architecture 'bagnet10'; allowed: admil"),
        ({"arch": "bagnet9", "head": "max"}, "unknown head 'max'; allowed: sil, mil, milsil"),
        ({"arch": "bagnet9", "num_classes": 1}, "num_classes must be an integer >= 2"),
        ({"arch": "bagnet9", "width": 3}, "width must be an integer from 4 to 256"),
        ({"arch": "bagnet9", "class_names": ["a"]}, "1 class names given for num_classes=2"),
    ],
)
def test_bad_model_settings_name_the_problem(kwargs, message):
    with pytest.raises(MilsilError, match=message.replace("(", r"\(")):
        create_model(**kwargs)


def test_not_rgb_input_is_rejected():
    model = create_model("bagnet9", 2, width=8)
    with pytest.raises(MilsilError, match=r"\[B, N, 3, h, w\]"):
        model(torch.randn(1, 1, 4, 9, 9))


def test_checkpoint_round_trip(tmp_path):
    model = create_model(
        "bagnet9", 2, head="mil", width=8, class_names=["benign", "malignant"]
    ).eval()
    path = save_checkpoint(model, tmp_path / "m.pt", provenance={"epochs": 3, "note": "test"})
    loaded = load_checkpoint(path)
    assert loaded.config == model.config
    assert loaded.provenance == {"epochs": 3, "note": "test"}
    x = torch.randn(1, 2, 3, 16, 16)
    assert torch.equal(loaded(x).sil_logits, model(x).sil_logits)
    # Atomic write: no temporary file is left behind.
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]


def test_checkpoint_loads_with_weights_only(tmp_path):
    model = create_model("bagnet9", 2, width=8)
    path = save_checkpoint(model, tmp_path / "m.pt")
    payload = torch.load(path, weights_only=True)
    assert payload["config"]["arch"] == "bagnet9"


def test_bad_checkpoints_give_one_clear_error(tmp_path):
    with pytest.raises(NotFoundError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "missing.pt")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x80\x02garbage" * 10)
    with pytest.raises(CheckpointError, match="not a readable milsil checkpoint"):
        load_checkpoint(corrupt)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(CheckpointError, match="not a milsil checkpoint"):
        load_checkpoint(foreign)
    good = save_checkpoint(create_model("bagnet9", 2, width=8), tmp_path / "good.pt")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:2000])
    with pytest.raises(CheckpointError):
        load_checkpoint(truncated)
    # A pickle that would run code is refused by weights_only loading.
    evil = tmp_path / "evil.pt"
    torch.save({"format": "milsil-checkpoint", "obj": ValueError("x")}, evil)
    with pytest.raises(CheckpointError):
        load_checkpoint(evil)


def test_pretrained_backbone_from_reference_layout(tmp_path):
    reference = BagNet(BAGNET_KERNEL3["bagnet9"], width=8)
    state = dict(reference.state_dict())
    state["fc.weight"] = torch.zeros(1000, 256)  # the ImageNet classifier is dropped
    state["fc.bias"] = torch.zeros(1000)
    path = tmp_path / "bagnet9_imagenet.pth"
    torch.save(state, path)
    model = create_model("bagnet9", 2, width=8, pretrained=path)
    for k, v in reference.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[k], v)
    with pytest.raises(CheckpointError, match="does not match bagnet17"):
        load_pretrained_backbone(create_model("bagnet17", 2, width=8), path)
    with pytest.raises(MilsilError, match="downloads are never attempted"):
        create_model("bagnet9", 2, width=8, pretrained=tmp_path / "nope.pth")
