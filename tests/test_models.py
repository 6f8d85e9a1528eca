"""Models: exact BagNet definition, heads, baselines, checkpoints, input errors."""

from __future__ import annotations

import pytest
import reference_bagnet as ref
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


@pytest.mark.parametrize("arch", ["bagnet9", "bagnet17", "bagnet33"])
def test_bagnet_structure_matches_an_independent_transcription_of_the_reference(arch):
    """Every tensor's name and shape, every conv's kernel/stride/padding, and the forward
    pass, against tests/reference_bagnet.py (written from the official pytorchnet.py)."""
    model = create_model(arch, 1000, width=64)
    ours = {k.removeprefix("backbone."): tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == ref.layout(arch, width=64)
    modules = dict(model.backbone.named_modules())
    for name, cin, cout, k, stride, pad in ref.convs(arch):
        conv = modules[name]
        assert (conv.in_channels, conv.out_channels) == (cin, cout), name
        assert conv.kernel_size == (k, k) and conv.stride == (stride, stride), name
        assert conv.padding == (pad, pad) and conv.bias is None, name
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in model.modules())
    # the reference's BatchNorm momenta: 0.001 on the stem, PyTorch's 0.1 elsewhere
    bns = {n: m for n, m in modules.items() if isinstance(m, torch.nn.BatchNorm2d)}
    assert bns.pop("bn1").momentum == 0.001
    assert {m.momentum for m in bns.values()} == {0.1}


def test_bagnet_forward_equals_the_reference_forward():
    """Same state dict, same input: our logits equal the transcribed reference's."""
    for arch in ("bagnet9", "bagnet33"):
        state = ref.random_state(arch, width=8, classes=3, seed=1)
        model = create_model(arch, 3, width=8).eval()
        model.load_state_dict(
            {("" if k.startswith("fc.") else "backbone.") + k: v for k, v in state.items()}
        )
        x = torch.randn(2, 3, 33 + 8 * 3, 33 + 8 * 2)
        expected = ref.forward(state, arch, x)
        got = model(x[:, None]).sil_logits[:, 0]
        assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4), (got - expected).abs().max()


def test_training_from_scratch_uses_the_reference_he_normal_init():
    """Convs N(0, sqrt(2 / (k*k*out))), BatchNorm weight 1 / bias 0 (reference BagNet and
    torchvision ResNet alike), applied when a run starts from scratch."""
    from milsil.engine.config import TrainConfig
    from milsil.engine.loop import initialise

    torch.manual_seed(0)
    for arch in ("bagnet9", "resnet50"):
        model = create_model(arch, 2, width=64)
        note = initialise(model, TrainConfig(arch=arch, width=64, pretrained="none"))
        assert "He-normal" in note
        conv = dict(model.backbone.named_modules())["layer3.0.conv3"]
        k = conv.kernel_size[0] * conv.kernel_size[1] * conv.out_channels
        assert conv.weight.std().item() == pytest.approx((2.0 / k) ** 0.5, rel=0.03)
        assert abs(conv.weight.mean().item()) < 1e-3
        bn = model.backbone.layer1[0].bn2
        assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0)


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
        ({"arch": "bagnet9", "num_classes": 1}, "num_classes must be an integer from 2 to 10000"),
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
    state = ref.random_state("bagnet9", width=8, classes=1000)  # the ImageNet fc is dropped
    path = tmp_path / "bagnet9_imagenet.pth"
    torch.save(state, path)
    model = create_model("bagnet9", 2, width=8, pretrained=path)
    for k, v in state.items():
        if not k.startswith("fc."):
            assert torch.equal(model.backbone.state_dict()[k], v)
    with pytest.raises(CheckpointError, match="does not match bagnet17"):
        load_pretrained_backbone(create_model("bagnet17", 2, width=8), path)
    with pytest.raises(MilsilError, match="pretrained weights file not found"):
        create_model("bagnet9", 2, width=8, pretrained=tmp_path / "nope.pth")
