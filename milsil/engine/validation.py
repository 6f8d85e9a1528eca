"""A model's predictions on a set of bags, and the metrics validation and testing report.

* :func:`predict` -- probabilities per bag (MIL) and per patch (SIL), in record order;
* :func:`evaluate_model` -- patch (SIL) and bag (MIL) accuracy and AUROC, and the loss.

Training validates with these every epoch; the experiments test with them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from milsil.engine.config import resolve_device
from milsil.engine.losses import bag_loss
from milsil.engine.metrics import accuracy, auroc
from milsil.errors import MilsilError
from milsil.models.mil import ConfiguredModel


@torch.no_grad()
def predict(
    model: ConfiguredModel,
    records: Sequence[Any],
    patch_size: int,
    device: torch.device | str | None = None,
    batch_size: int = 8,
) -> dict[str, Any]:
    """Run ``model`` on every bag (no augmentation) and collect probabilities.

    Returns numpy arrays in record order: ``labels [B]``, ``mil_probs [B, C]``, and, for
    models with per-patch outputs, ``sil_probs [P, C]`` / ``sil_labels [P]`` / ``sil_bag
    [P]`` (the bag index of each patch); plus ``loss``, the model head's training loss
    averaged over bags.
    """
    from milsil.data import BagDataset, bucket_batches, collate_bags
    from milsil.models.stain import model_stain

    records = list(records)
    if not records:
        raise MilsilError("no records to evaluate")
    if device is None:
        device = next(model.parameters()).device
    device = resolve_device(device) if isinstance(device, str) else torch.device(device)
    was_training = model.training
    model.to(device).eval()
    mean, std = model.normalization
    dataset = BagDataset(records, patch_size, mean, std, augment=False, stain=model_stain(model))
    batches = bucket_batches(dataset.bag_sizes, batch_size, False, 0)
    use_amp = device.type == "cuda"
    c = model.config.num_classes
    labels = np.array([r.label for r in records], dtype=np.int64)
    mil_probs = np.zeros((len(records), c), dtype=np.float64)
    sil: dict[int, np.ndarray] = {}
    loss_sum = 0.0
    try:
        for batch in batches:
            bags, y = collate_bags([dataset[i] for i in batch])
            bags, y = bags.to(device), y.to(device)
            with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
                out = model(bags)
            loss, _ = bag_loss(out, y, model.head)
            loss_sum += float(loss) * len(batch)
            mil_probs[batch] = torch.softmax(out.mil_logits.float(), 1).cpu().numpy()
            if out.sil_logits is not None:
                probs = torch.softmax(out.sil_logits.float(), 2).cpu().numpy()
                for k, i in enumerate(batch):
                    sil[i] = probs[k]
    finally:
        model.train(was_training)
    result: dict[str, Any] = {
        "labels": labels,
        "mil_probs": mil_probs,
        "loss": loss_sum / len(records),
    }
    if sil:
        order = range(len(records))
        result["sil_probs"] = np.concatenate([sil[i] for i in order])
        result["sil_labels"] = np.concatenate([np.full(len(sil[i]), labels[i]) for i in order])
        result["sil_bag"] = np.concatenate([np.full(len(sil[i]), i) for i in order])
    return result


def instance_accuracy(
    model: ConfiguredModel, records: Sequence[Any], patch_size: int, sil_probs: np.ndarray
) -> float:
    """SIL accuracy against each patch's OWN label (from the masks: malignant where the
    patch holds annotated malignant pixels), not its bag's; ``nan`` when some malignant
    bag has no mask or the classes are not two."""
    from milsil.data.dataset import instance_labels
    from milsil.models import target_class_index

    names = model.class_names
    if len(names) != 2:
        return math.nan
    positive = target_class_index(names)
    labels = []
    for r in records:
        own = instance_labels(r, patch_size, positive, 1 - positive)
        if own is None:
            return math.nan
        labels.append(own)
    return accuracy(sil_probs, np.concatenate(labels))


def evaluate_model(
    model: ConfiguredModel,
    records: Sequence[Any],
    patch_size: int,
    device: torch.device | str | None = None,
    batch_size: int = 8,
    own_labels: bool = False,
) -> dict[str, Any]:
    """Bag-level (MIL) and patch-level (SIL) accuracy and AUROC, and the head's loss.

    SIL metrics score every patch against its bag's label, as the paper does; they are
    ``nan`` for models without per-patch outputs (attention MIL). AUROC is ``nan`` when the
    records hold one class only. With ``own_labels``, ``sil_accuracy_own`` scores every
    patch against its own label from the masks instead (:func:`instance_accuracy`).
    """
    p = predict(model, records, patch_size, device, batch_size)
    out: dict[str, Any] = {
        "loss": p["loss"],
        "mil_accuracy": accuracy(p["mil_probs"], p["labels"]),
        "mil_auroc": auroc(p["mil_probs"], p["labels"]),
        "sil_accuracy": math.nan,
        "sil_auroc": math.nan,
        "bags": len(p["labels"]),
        "patches": 0,
    }
    if "sil_probs" in p:
        out["sil_accuracy"] = accuracy(p["sil_probs"], p["sil_labels"])
        out["sil_auroc"] = auroc(p["sil_probs"], p["sil_labels"])
        out["patches"] = len(p["sil_labels"])
    if own_labels:
        out["sil_accuracy_own"] = (
            instance_accuracy(model, records, patch_size, p["sil_probs"])
            if "sil_probs" in p
            else math.nan
        )
    return out
