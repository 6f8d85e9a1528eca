"""One training epoch's batches and running metrics, and the rule that picks the best epoch."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
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


class EpochClock:
    """Where an epoch's wall time went: waiting for batches (``data``; they are assembled
    in the background, so this is only what the step did not hide), optimisation steps
    (``step``, which ends by reading the loss, so device work is inside it), ``validation``,
    and ``checkpoint``: waiting for the previous epoch's background writes and copying the
    weights to write; and how many bags were trained on. The per-epoch log row carries it,
    so a slow run says which of them to fix."""

    PARTS = ("data", "step", "validation", "checkpoint")

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(self.PARTS, 0.0)
        self.bags = 0

    @contextmanager
    def timing(self, part: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[part] += time.perf_counter() - start

    def row(self, epoch_seconds: float) -> dict[str, float]:
        """``bags_per_second`` over the whole epoch and the seconds of each part, rounded
        to the millisecond; ``other`` is what the parts do not account for."""
        parts = {k: round(v, 3) for k, v in self.seconds.items()}
        parts["other"] = round(max(epoch_seconds - sum(self.seconds.values()), 0.0), 3)
        rate = self.bags / epoch_seconds if epoch_seconds > 0 else math.nan
        return {"bags": self.bags, "bags_per_second": round(rate, 2), "seconds": parts}


class _EpochBatches:
    """A ``batch_sampler`` that one DataLoader keeps for the whole run: each epoch it is
    given that epoch's batches, and it yields ``(epoch, index)`` pairs so persistent
    workers augment for the right epoch (:class:`milsil.data.BagDataset`)."""

    def __init__(self) -> None:
        self.epoch, self.batches = 0, []

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for batch in self.batches:
            yield [(self.epoch, i) for i in batch]

    def __len__(self) -> int:
        return len(self.batches)


class TrainBatches:
    """A run's training batches, epoch by epoch, from one dataset and one DataLoader.

    Bags in a batch have equal size. Batch order comes from the epoch's seed and
    augmentation from ``(seed, epoch, bag)``, so epoch ``e`` is the same whether or not the
    run was interrupted before it (a resumed epoch skips the batches it had done). In a
    process group each rank takes its share of the epoch's batches.

    What used to be paid every epoch is paid once: bag sizes are read from the files' headers
    when the run starts, and workers (``num_workers > 0``) persist across epochs. They are
    started with forkserver/spawn: forking a process that runs a gRPC server is unsafe.
    Without workers and with ``prefetch`` (training on a GPU) the next batches are
    assembled on a background thread while the device runs the current step
    (:class:`Prefetch`), in the same order, so the result is identical. Not on a CPU: there
    the step already uses every core, and a thread beside it slowed a 3-epoch run by 12%
    (2 vCPUs) while hiding only 1% of data time.
    """

    def __init__(
        self,
        records: Sequence[Any],
        config: TrainConfig,
        mean: Sequence[float],
        std: Sequence[float],
        group: ProcessGroup | OneProcess | None = None,
        prefetch: bool = False,
        stain: Any = None,
    ) -> None:
        from milsil.data import BagDataset, collate_bags

        self.config, self.group, self.prefetch = config, group, prefetch
        self.dataset = BagDataset(
            records,
            config.patch_size,
            mean,
            std,
            augment=config.augment,
            color_jitter=config.color_jitter,
            seed=config.seed,
            stain=stain,  # the model's stain target (milsil.data.stain), or None
        )
        self.sampler = _EpochBatches()
        kwargs: dict[str, Any] = {}
        if config.num_workers > 0:
            import multiprocessing as mp

            methods = mp.get_all_start_methods()
            kwargs["multiprocessing_context"] = "forkserver" if "forkserver" in methods else "spawn"
            kwargs["persistent_workers"] = True
        self.loader = torch.utils.data.DataLoader(
            self.dataset,
            batch_sampler=self.sampler,
            collate_fn=collate_bags,
            num_workers=config.num_workers,
            generator=torch.Generator().manual_seed(config.seed),
            **kwargs,
        )

    def epoch(self, epoch: int, skip: int = 0) -> tuple[Iterator[Any], int]:
        """This process's batches of ``epoch`` (0-based) from batch ``skip`` on, and how
        many batches it has in the whole epoch. Close the iterator (or run it to its end)
        before asking for the next epoch."""
        from milsil.data import bucket_batches

        batches = bucket_batches(
            self.dataset.bag_sizes,
            self.config.batch_size,
            True,
            epoch_seed(self.config.seed, epoch),
        )
        if self.group is not None:
            batches = self.group.rank_batches(batches)
        self.sampler.epoch, self.sampler.batches = epoch, batches[skip:]
        if self.config.num_workers > 0 or not self.prefetch:
            return iter(self.loader), len(batches)
        from milsil.engine.background import Prefetch

        return Prefetch(iter(self.loader)), len(batches)


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
