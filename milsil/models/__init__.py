"""Models: BagNet-9/17/33 with SIL, MIL or MIL-SIL heads, and the paper's baselines.

``create_model(arch, num_classes, head="milsil", width=64)`` is the one entry point.
"""

from milsil.models.bagnet import BagNet, Bottleneck, ResNet50
from milsil.models.checkpoint import (
    atomic_torch_save,
    checkpoint_payload,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from milsil.models.familiarity import (
    FAMILIARITY_KEY,
    FamiliarityReference,
    model_familiarity,
    set_model_familiarity,
)
from milsil.models.mil import (
    HEADS,
    AttentionMIL,
    BagOutput,
    ConfiguredModel,
    MilSilNet,
    ModelConfig,
    target_class_index,
)
from milsil.models.registry import create_model, list_models, load_pretrained_backbone, make_config

__all__ = [
    "FAMILIARITY_KEY",
    "FamiliarityReference",
    "model_familiarity",
    "set_model_familiarity",
    "HEADS",
    "AttentionMIL",
    "BagNet",
    "BagOutput",
    "Bottleneck",
    "ConfiguredModel",
    "MilSilNet",
    "ModelConfig",
    "ResNet50",
    "create_model",
    "list_models",
    "load_checkpoint",
    "load_pretrained_backbone",
    "make_config",
    "read_checkpoint",
    "save_checkpoint",
    "checkpoint_payload",
    "atomic_torch_save",
    "target_class_index",
]
