"""``create_model(arch, ...)``: the one entry to every model (timm-style registry)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from milsil.errors import CheckpointError, MilsilError
from milsil.models.bagnet import BAGNET_KERNEL3, BagNet, ResNet50
from milsil.models.mil import (
    HEADS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    AttentionMIL,
    ConfiguredModel,
    DenseNetFeatures,
    MilSilNet,
    ModelConfig,
)

_BUILDERS: dict[str, Callable[[ModelConfig], ConfiguredModel]] = {}


def register_model(name: str) -> Callable:
    def wrap(fn: Callable[[ModelConfig], ConfiguredModel]) -> Callable:
        _BUILDERS[name] = fn
        return fn

    return wrap


def list_models() -> list[str]:
    return sorted(_BUILDERS)


def _bagnet_builder(name: str) -> Callable[[ModelConfig], ConfiguredModel]:
    def build(config: ModelConfig) -> ConfiguredModel:
        backbone = BagNet(BAGNET_KERNEL3[name], width=config.width)
        return MilSilNet(backbone, backbone.out_channels, config)

    build.__name__ = name
    build.__doc__ = (
        f"{name}: BagNet with receptive field {BagNet(BAGNET_KERNEL3[name], 4).receptive_field}."
    )
    return build


for _name in BAGNET_KERNEL3:
    register_model(_name)(_bagnet_builder(_name))


@register_model("resnet50")
def resnet50(config: ModelConfig) -> ConfiguredModel:
    """ResNet-50 with SIL/MIL heads (the paper's RN-50 baseline)."""
    backbone = ResNet50(width=config.width)
    return MilSilNet(backbone, backbone.out_channels, config)


@register_model("densenet161")
def densenet161(config: ModelConfig) -> ConfiguredModel:
    """DenseNet-161 with SIL/MIL heads (the paper's DN-161 baseline)."""
    backbone = DenseNetFeatures(width=config.width)
    return MilSilNet(backbone, backbone.out_channels, config)


@register_model("admil")
def admil(config: ModelConfig) -> ConfiguredModel:
    """Attention-based deep MIL (Ilse et al. 2018)."""
    return AttentionMIL(config, gated=False)


@register_model("admil_gated")
def admil_gated(config: ModelConfig) -> ConfiguredModel:
    """Gated attention-based deep MIL (Ilse et al. 2018)."""
    return AttentionMIL(config, gated=True)


def create_model(
    arch: str,
    num_classes: int = 2,
    head: str = "milsil",
    width: int = 64,
    class_names: Sequence[str] | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    pretrained: str | Path | None = None,
) -> ConfiguredModel:
    """Build a model by name.

    ``arch``: one of :func:`list_models`. ``head``: ``sil``, ``mil`` or ``milsil`` (ignored
    for attention MIL, which has only a MIL output: it is recorded as ``mil``). ``width``
    scales every stage (64 = the published size). ``pretrained``: a local file holding the
    official BagNet ImageNet state dict; nothing is ever downloaded.
    """
    config = make_config(arch, num_classes, head, width, class_names, mean, std)
    model = _BUILDERS[config.arch](config)
    if pretrained is not None:
        load_pretrained_backbone(model, pretrained)
    return model


def make_config(
    arch: str,
    num_classes: int = 2,
    head: str = "milsil",
    width: int = 64,
    class_names: Sequence[str] | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> ModelConfig:
    """Validate model settings, naming what was wrong and what is allowed."""
    if arch not in _BUILDERS:
        raise MilsilError(f"unknown architecture {arch!r}; allowed: {', '.join(list_models())}")
    if arch.startswith("admil"):
        head = "mil"
    if head not in HEADS:
        raise MilsilError(f"unknown head {head!r}; allowed: {', '.join(HEADS)}")
    if not isinstance(num_classes, int) or num_classes < 2:
        raise MilsilError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    if not isinstance(width, int) or width < 4 or width > 256:
        raise MilsilError(
            f"width must be an integer from 4 to 256 (64 = published size), got {width!r}"
        )
    names = list(class_names) if class_names else [f"class_{i}" for i in range(num_classes)]
    if len(names) != num_classes:
        raise MilsilError(f"{len(names)} class names given for num_classes={num_classes}")
    if len(mean) != 3 or len(std) != 3 or any(s <= 0 for s in std):
        raise MilsilError("normalization needs 3 means and 3 positive standard deviations")
    return ModelConfig(arch, num_classes, head, width, names, tuple(mean), tuple(std))


def load_pretrained_backbone(model: ConfiguredModel, path: str | Path) -> None:
    """Load a local copy of the official BagNet/ResNet ImageNet weights into the backbone.

    The file holds the reference repository's state dict (``conv1.weight``,
    ``layer1.0.conv2.weight``, ..., ``fc.*``); the ImageNet classifier is dropped since our
    classifier has the task's classes.
    """
    path = Path(path)
    if not path.is_file():
        raise MilsilError(
            f"pretrained weights file not found: {path} (downloads are never attempted)"
        )
    backbone = getattr(model, "backbone", None)
    if backbone is None:
        raise MilsilError(f"{model.config.arch} has no pretrained ImageNet backbone")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"cannot read pretrained weights {path}: {exc}") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} does not hold a state dict")
    state = {k.removeprefix("module."): v for k, v in state.items() if not k.startswith("fc.")}
    own = backbone.state_dict()
    bad = [k for k, v in state.items() if k not in own or own[k].shape != v.shape]
    missing = [k for k in own if k not in state]
    if bad or missing:
        raise CheckpointError(
            f"{path} does not match {model.config.arch} width {model.config.width}: "
            f"{len(bad)} unexpected/mis-shaped and {len(missing)} missing tensors "
            f"(e.g. {(bad + missing)[:3]})"
        )
    backbone.load_state_dict(state)
