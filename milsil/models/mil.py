"""Bag models: a patch feature extractor, bag pooling, and one linear classifier.

The paper's three BagNet variants differ only in which outputs are trained:

* ``sil``    -- BagNet: every patch is classified with its bag's label.
* ``mil``    -- MILBagNet: the mean of a bag's patch feature vectors is classified.
* ``milsil`` -- the proposed model: both, through ONE shared Linear layer.

Because the classifier is linear, the MIL logits equal the mean of the SIL logits; every
head can therefore give both outputs at inference, and the head only decides the loss.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from milsil.errors import MilsilError

HEADS = ("sil", "mil", "milsil")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Dropout of Ilse et al.'s histology network (their paper gives no rate: PyTorch's default).
ADMIL_DROPOUT = 0.5


@dataclass
class BagOutput:
    """What every model returns for ``bags`` of shape ``[B, N, 3, h, w]``.

    ``sil_logits`` ``[B, N, C]`` (None only for models without per-patch outputs),
    ``mil_logits`` ``[B, C]``, ``attention`` ``[B, N]`` for attention MIL, else None.
    """

    sil_logits: torch.Tensor | None
    mil_logits: torch.Tensor
    attention: torch.Tensor | None = None


@dataclass
class ModelConfig:
    """Everything needed to rebuild a model: stored in every checkpoint."""

    arch: str
    num_classes: int = 2
    head: str = "milsil"
    width: int = 64
    class_names: list[str] = field(default_factory=list)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def to_dict(self) -> dict[str, Any]:
        return {
            "arch": self.arch,
            "num_classes": self.num_classes,
            "head": self.head,
            "width": self.width,
            "class_names": list(self.class_names),
            "mean": list(self.mean),
            "std": list(self.std),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        return cls(
            arch=str(d["arch"]),
            num_classes=int(d["num_classes"]),
            head=str(d["head"]),
            width=int(d["width"]),
            class_names=[str(c) for c in d["class_names"]],
            mean=tuple(float(v) for v in d["mean"]),
            std=tuple(float(v) for v in d["std"]),
        )


def target_class_index(class_names: Sequence[str], wanted: str | None = None) -> int:
    """The class a heatmap, annotation or localization is about, as an index.

    ``wanted`` when given (it must be one of ``class_names``); else "malignant" when the
    model has that class, else the last class. Every CLI, the server and the evaluation use
    this one rule, so an empty class setting means the same thing everywhere.
    """
    names = list(class_names)
    if not wanted:
        return names.index("malignant") if "malignant" in names else len(names) - 1
    if wanted not in names:
        raise MilsilError(f"unknown class {wanted!r}; this model's classes: {', '.join(names)}")
    return names.index(wanted)


class ConfiguredModel(nn.Module):
    """Base for all milsil models: knows its config, classes, normalization, receptive field."""

    config: ModelConfig
    # Smallest patch side the architecture accepts (BagNets: their receptive field).
    min_patch_size: int = 32

    def check_bags(self, bags: torch.Tensor) -> None:
        """Reject malformed input with a message naming the expected layout."""
        if not isinstance(bags, torch.Tensor) or bags.ndim != 5 or bags.shape[2] != 3:
            shape = tuple(bags.shape) if isinstance(bags, torch.Tensor) else type(bags).__name__
            raise MilsilError(
                f"bags must be a float tensor [B, N, 3, h, w] (B bags of N RGB patches), got {shape}"
            )
        if not bags.is_floating_point():
            raise MilsilError(f"bags must be normalized floats, got dtype {bags.dtype}")
        if min(bags.shape[-2:]) < self.min_patch_size:
            raise MilsilError(
                f"patches are {bags.shape[-1]}x{bags.shape[-2]} pixels; {self.config.arch} needs "
                f"at least {self.min_patch_size}x{self.min_patch_size}"
            )

    def check_tiles(self, tiles: Sequence[Any]) -> None:
        """Reject a bag of uint8 RGB tiles (``[h, w, 3]`` arrays, ClassifyBag's and
        :func:`milsil.inference.familiarity.images_familiarity`'s input) that is empty,
        not uint8 RGB, of more than one size or smaller than :attr:`min_patch_size`, with a
        message naming the tile and what is allowed."""
        if not len(tiles):
            raise MilsilError("a bag needs at least one tile; none was given")
        for i, tile in enumerate(tiles):
            shape = getattr(tile, "shape", None)
            if (
                getattr(tile, "dtype", None) != "uint8"
                or shape is None
                or len(shape) != 3
                or shape[2] != 3
            ):
                what = f"{getattr(tile, 'dtype', type(tile).__name__)} {shape}"
                raise MilsilError(f"tiles[{i}] must be an H x W x 3 uint8 RGB array, got {what}")
        h, w = tiles[0].shape[:2]
        for i, tile in enumerate(tiles):
            if tile.shape[:2] != (h, w):
                raise MilsilError(
                    f"tiles[{i}] is {tile.shape[1]}x{tile.shape[0]} but tiles[0] is {w}x{h}: "
                    "all tiles of a bag must have the same size"
                )
        if min(h, w) < self.min_patch_size:
            raise MilsilError(
                f"tiles are {w}x{h}; {self.config.arch} needs tiles of at least "
                f"{self.min_patch_size}x{self.min_patch_size}"
            )

    @property
    def class_names(self) -> list[str]:
        return list(self.config.class_names)

    @property
    def head(self) -> str:
        return self.config.head

    @property
    def normalization(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        return tuple(self.config.mean), tuple(self.config.std)

    @property
    def receptive_field(self) -> int | None:
        """Side of the square input window one output sees; None when it is the whole image."""
        return None


class MilSilNet(ConfiguredModel):
    """Feature extractor + global average pool + one shared linear classifier."""

    def __init__(self, backbone: nn.Module, feature_dim: int, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = backbone
        self.fc = nn.Linear(feature_dim, config.num_classes)

    @property
    def receptive_field(self) -> int | None:
        return getattr(self.backbone, "receptive_field", None)

    @property
    def min_patch_size(self) -> int:  # type: ignore[override]
        return self.receptive_field or 32

    def feature_map(self, images: torch.Tensor) -> torch.Tensor:
        """``[M, 3, h, w] -> [M, D, h', w']``: the last convolutional feature map."""
        return self.backbone(images)

    def patch_features(self, images: torch.Tensor) -> torch.Tensor:
        """``[M, 3, h, w] -> [M, D]``: spatial mean of the feature map (BagNet's pooling)."""
        return self.feature_map(images).mean(dim=(2, 3))

    def forward(self, bags: torch.Tensor) -> BagOutput:
        self.check_bags(bags)
        b, n = bags.shape[:2]
        features = self.patch_features(bags.flatten(0, 1)).view(b, n, -1)
        return BagOutput(sil_logits=self.fc(features), mil_logits=self.fc(features.mean(dim=1)))


class DenseNetFeatures(nn.Module):
    """torchvision's DenseNet-161 body with a final ReLU, scaled by ``width`` (64 = original)."""

    def __init__(self, width: int = 64) -> None:
        super().__init__()
        from torchvision.models.densenet import DenseNet

        growth = max(4, 48 * width // 64)
        net = DenseNet(
            growth_rate=growth,
            block_config=(6, 12, 36, 24),
            num_init_features=2 * growth,
            num_classes=1,
        )
        self.features = net.features
        self.out_channels = net.classifier.in_features
        self.receptive_field = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.features(x))


class AttentionMIL(ConfiguredModel):
    """Attention-based deep MIL (Ilse, Tomczak & Welling, ICML 2018), plain or gated, with
    their network for histology (27x27 patches of the colon cancer data, the paper's CRC):

    conv 4x4 -> 36, ReLU, max-pool 2; conv 3x3 -> 48, ReLU, max-pool 2; fc 512, ReLU,
    dropout; fc 512, ReLU, dropout; attention ``a_i = softmax(w^T tanh(V h_i))`` with 128
    hidden units (gated: ``* sigmoid(U h_i)``); a linear classifier of the pooled bag.

    At width 64 the sizes are exactly those; ``width`` scales them. A 27x27 patch leaves
    a 5x5x48 map; other sizes are average-pooled to 5x5 first (the identity at 27x27).
    Ilse et al. do not state the dropout rate: PyTorch's default 0.5 is used
    (:data:`ADMIL_DROPOUT`); their single sigmoid output is a softmax over the classes
    here. It has no per-patch classifier, so ``sil_logits`` is None.
    """

    def __init__(self, config: ModelConfig, gated: bool) -> None:
        super().__init__()
        self.config = config
        w = config.width
        c1, c2 = max(4, 36 * w // 64), max(4, 48 * w // 64)
        embed, attn = max(16, 512 * w // 64), max(8, 128 * w // 64)
        self.extractor = nn.Sequential(
            nn.Conv2d(3, c1, 4),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 3),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(5),
            nn.Flatten(),
            nn.Linear(c2 * 25, embed),
            nn.ReLU(inplace=True),
            nn.Dropout(ADMIL_DROPOUT),
            nn.Linear(embed, embed),
            nn.ReLU(inplace=True),
            nn.Dropout(ADMIL_DROPOUT),
        )
        self.attention_v = nn.Linear(embed, attn)
        self.attention_u = nn.Linear(embed, attn) if gated else None
        self.attention_w = nn.Linear(attn, 1)
        self.fc = nn.Linear(embed, config.num_classes)

    min_patch_size = 16  # the 4x4 and 3x3 convs and two 2x2 pools need at least 11

    def forward(self, bags: torch.Tensor) -> BagOutput:
        self.check_bags(bags)
        b, n = bags.shape[:2]
        h = self.extractor(bags.flatten(0, 1)).view(b, n, -1)
        gate = torch.tanh(self.attention_v(h))
        if self.attention_u is not None:
            gate = gate * torch.sigmoid(self.attention_u(h))
        attention = torch.softmax(self.attention_w(gate).squeeze(-1), dim=1)
        pooled = (attention.unsqueeze(-1) * h).sum(dim=1)
        return BagOutput(sil_logits=None, mil_logits=self.fc(pooled), attention=attention)
