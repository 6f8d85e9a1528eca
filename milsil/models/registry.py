"""``create_model(arch, ...)``: the one entry to every model (timm-style registry)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from milsil.errors import MilsilError, compact
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
from milsil.models.pretrained import load_pretrained

_BUILDERS: dict[str, Callable[[ModelConfig], ConfiguredModel]] = {}

# Bounds on what a config may ask for (a checkpoint's config is untrusted input: it is
# checked against these before anything is allocated).
MAX_CLASSES = 10_000
MIN_WIDTH, MAX_WIDTH = 4, 256


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
    scales every stage (64 = the published size). ``pretrained``: ``"imagenet"`` (the
    published ImageNet weights, downloaded once into the torch hub cache and checked), a
    local copy of them in any published key layout, or ``"none"``/None
    (:mod:`milsil.models.pretrained`).
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
    if not isinstance(arch, str) or arch not in _BUILDERS:
        raise MilsilError(
            f"unknown architecture {compact(arch)}; allowed: {', '.join(list_models())}"
        )
    if arch.startswith("admil"):
        head = "mil"
    if head not in HEADS:
        raise MilsilError(f"unknown head {compact(head)}; allowed: {', '.join(HEADS)}")
    if not isinstance(num_classes, int) or not 2 <= num_classes <= MAX_CLASSES:
        raise MilsilError(
            f"num_classes must be an integer from 2 to {MAX_CLASSES}, got {compact(num_classes)}"
        )
    if not isinstance(width, int) or not MIN_WIDTH <= width <= MAX_WIDTH:
        raise MilsilError(
            f"width must be an integer from {MIN_WIDTH} to {MAX_WIDTH} (64 = published size), "
            f"got {compact(width)}"
        )
    names = list(class_names) if class_names else [f"class_{i}" for i in range(num_classes)]
    if len(names) != num_classes:
        raise MilsilError(f"{len(names)} class names given for num_classes={num_classes}")
    if len(mean) != 3 or len(std) != 3 or any(s <= 0 for s in std):
        raise MilsilError("normalization needs 3 means and 3 positive standard deviations")
    return ModelConfig(arch, num_classes, head, width, names, tuple(mean), tuple(std))


def load_pretrained_backbone(model: ConfiguredModel, pretrained: str | Path | None) -> str:
    """Initialise ``model``'s backbone from ``pretrained``: ``"imagenet"`` (the published
    weights, downloaded once and checked), a local file in any published key layout, or
    ``"none"``/None. Returns what was done, in words (:mod:`milsil.models.pretrained`)."""
    return load_pretrained(model, pretrained)
