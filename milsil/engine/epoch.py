"""One training epoch's batches and running metrics, and the rule that picks the best epoch."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from milsil.engine.config import TrainConfig
from milsil.engine.group import OneProcess, ProcessGroup
from milsil.engine.seeding import epoch_seed
from milsil.models import BagOutput


class EpochStats:
    """Running sums for one epoch's training loss and accuracies (restorable on resume)."""

    def __init__(self, state: dict[str, float] | None = None) -> None:
        s = state or {}
        self.loss_sum = float(s.get("loss_sum", 0.0))
        self.bags = int(s.get("bags", 0))
        self.mil_correct = int(s.get("mil_correct", 0))
        self.patches = int(s.get("patches", 0))
        self.sil_correct = int(s.get("sil_correct", 0))

    @classmethod
    def merged(cls, states: Sequence[dict[str, float]]) -> EpochStats:
        """The sums of several ranks' epochs as one."""
        return cls({key: sum(s[key] for s in states) for key in states[0]})

    def update(self, loss: float, output: BagOutput, labels: torch.Tensor) -> None:
        b = labels.numel()
        self.loss_sum += loss * b
        self.bags += b
        self.mil_correct += int((output.mil_logits.argmax(1) == labels).sum())
        if output.sil_logits is not None:
            n = output.sil_logits.shape[1]
            pred = output.sil_logits.argmax(2)
            self.sil_correct += int((pred == labels[:, None]).sum())
            self.patches += b * n

    def state(self) -> dict[str, float]:
        return dict(vars(self))

    @property
    def loss(self) -> float:
        return self.loss_sum / self.bags if self.bags else math.nan

    @property
    def mil_accuracy(self) -> float:
        return self.mil_correct / self.bags if self.bags else math.nan

    @property
    def sil_accuracy(self) -> float:
        return self.sil_correct / self.patches if self.patches else math.nan


def epoch_loader(
    records: Sequence[Any],
    config: TrainConfig,
    mean: Sequence[float],
    std: Sequence[float],
    epoch: int,
    skip: int = 0,
    group: ProcessGroup | OneProcess | None = None,
) -> tuple[torch.utils.data.DataLoader, int]:
    """This process's training batches of ``epoch`` (0-based) from batch ``skip`` on, and
    how many batches it has in the epoch.

    Bags in a batch have equal size. Batch order comes from the epoch's seed and
    augmentation from ``(seed, epoch, bag)`` on a fresh dataset, so epoch ``e`` is the same
    whether or not the run was interrupted before it (a resumed epoch skips the batches it
    had done). In a process group each rank takes its share of the epoch's batches. Workers
    (if any) are started with forkserver/spawn: forking a process that runs a gRPC server
    is unsafe.
    """
    from milsil.data import BagDataset, bucket_batches, collate_bags

    dataset = BagDataset(
        records,
        config.patch_size,
        mean,
        std,
        augment=config.augment,
        color_jitter=config.color_jitter,
        seed=config.seed,
    )
    dataset.set_epoch(epoch)
    batches = bucket_batches(
        dataset.bag_sizes, config.batch_size, True, epoch_seed(config.seed, epoch)
    )
    if group is not None:
        batches = group.rank_batches(batches)
    kwargs: dict[str, Any] = {}
    if config.num_workers > 0:
        import multiprocessing as mp

        methods = mp.get_all_start_methods()
        kwargs["multiprocessing_context"] = "forkserver" if "forkserver" in methods else "spawn"
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_sampler=batches[skip:],
        collate_fn=collate_bags,
        num_workers=config.num_workers,
        generator=torch.Generator().manual_seed(epoch_seed(config.seed, epoch)),
        **kwargs,
    )
    return loader, len(batches)


def is_better(metrics: dict[str, Any], best: dict[str, Any] | None) -> bool:
    """Higher validation MIL accuracy wins; at equal accuracy, lower validation loss."""
    if best is None:
        return True
    acc, best_acc = metrics.get("val_mil_accuracy"), best.get("val_mil_accuracy")
    acc = -1.0 if acc is None or math.isnan(acc) else acc
    best_acc = -1.0 if best_acc is None or math.isnan(best_acc) else best_acc
    if acc != best_acc:
        return acc > best_acc
    loss, best_loss = metrics.get("val_loss"), best.get("val_loss")
    loss = math.inf if loss is None or math.isnan(loss) else loss
    best_loss = math.inf if best_loss is None or math.isnan(best_loss) else best_loss
    return loss < best_loss
