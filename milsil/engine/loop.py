"""Training: the paper's recipe (cross-entropy, Adam, lr 1e-4 with exponential decay).

One function, :func:`train_model`, does everything a run needs and is what the CLI and the
gRPC server call:

* the loss follows ``model.head``: ``sil`` = cross-entropy on every patch with its bag's
  label (BagNet), ``mil`` = cross-entropy on the bag logits (MILBagNet, and attention MIL),
  ``milsil`` = the sum of both (the proposed model);
* bags in one batch have the same number of patches (``bucket_batches``), so a batch is a
  plain ``[B, N, 3, p, p]`` tensor and the MIL mean needs no masking;
* every epoch ends with an atomic ``last.pt`` holding optimizer, scheduler, RNG states and
  history, so an interrupted run (crash, Ctrl-C, a cancelled server job) resumes where it
  stopped and reaches the same weights as an uninterrupted one;
* ``best.pt`` is the epoch with the highest validation MIL accuracy (ties: lower validation
  loss); without validation data it is simply the last epoch;
* ``log.jsonl`` gets one line per epoch, ``run.json`` the config, versions and data summary.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import random
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from milsil import atomic
from milsil.errors import CheckpointError, MilsilError
from milsil.models import (
    HEADS,
    BagOutput,
    create_model,
    list_models,
    read_checkpoint,
    save_checkpoint,
)

# The smallest patch each architecture can take (BagNets: their receptive field; the
# strided ResNet/DenseNet stems need 32; the attention-MIL LeNet extractor 16).
MIN_PATCH = {"bagnet9": 9, "bagnet17": 17, "bagnet33": 33, "resnet50": 32, "densenet161": 32}
MIN_PATCH_DEFAULT = 16

# Settings that may change between a run and its resumption; anything else changes the
# experiment, so resuming with it would silently mix two experiments.
RESUMABLE_CHANGES = ("epochs", "device", "num_workers")


@dataclass
class TrainConfig:
    """Everything that defines a training run; stored in every checkpoint and run.json.

    Defaults are the paper's optimiser (Adam, lr 1e-4, exponential decay per epoch). A
    small model trained from scratch for a few epochs (tests, demos) needs a larger lr.
    """

    arch: str = "bagnet9"
    head: str = "milsil"
    width: int = 16
    epochs: int = 10
    lr: float = 1e-4
    lr_decay: float = 0.9
    batch_size: int = 8
    weight_decay: float = 0.0
    patch_size: int = 64
    augment: bool = True
    color_jitter: float = 0.0
    seed: int = 0
    device: str = "auto"
    num_workers: int = 0
    amp: bool = True
    pretrained: str | None = None

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise MilsilError naming the bad field and what is allowed."""
        if self.arch not in list_models():
            raise MilsilError(f"unknown arch {self.arch!r}; allowed: {', '.join(list_models())}")
        if self.head not in HEADS:
            raise MilsilError(f"unknown head {self.head!r}; allowed: {', '.join(HEADS)}")
        _check_int(self, "width", 4, 256)
        _check_int(self, "epochs", 1, 100_000)
        _check_float(self, "lr", 0.0, 10.0, low_open=True)
        _check_float(self, "lr_decay", 0.0, 1.0, low_open=True)
        _check_int(self, "batch_size", 1, 4096)
        _check_float(self, "weight_decay", 0.0, 1.0)
        _check_float(self, "color_jitter", 0.0, 1.0)
        _check_int(self, "patch_size", MIN_PATCH.get(self.arch, MIN_PATCH_DEFAULT), 4096)
        _check_int(self, "seed", 0, 2**63 - 1)
        _check_int(self, "num_workers", 0, 64)
        for name in ("augment", "amp"):
            if not isinstance(getattr(self, name), bool):
                raise MilsilError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if not isinstance(self.device, str) or not _device_syntax_ok(self.device):
            raise MilsilError(
                f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {self.device!r}"
            )
        if self.pretrained is not None:
            if not isinstance(self.pretrained, str) or not self.pretrained:
                raise MilsilError(
                    f"pretrained must be a local file path or None, got {self.pretrained!r}"
                )
            self.pretrained = str(self.pretrained)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Build from a mapping (JSON, gRPC request); unknown keys are an error, not ignored."""
        if not isinstance(d, dict):
            raise MilsilError(f"a training config must be a mapping, got {type(d).__name__}")
        allowed = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(d) - set(allowed))
        if unknown:
            raise MilsilError(
                f"unknown training setting(s) {unknown}; allowed: {', '.join(allowed)}"
            )
        return cls(**d)


def _check_int(cfg: TrainConfig, name: str, lo: int, hi: int) -> None:
    value = getattr(cfg, name)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise MilsilError(f"{name} must be an integer from {lo} to {hi}, got {value!r}")
    if not lo <= value <= hi:
        extra = f" (the smallest patch {cfg.arch} accepts)" if name == "patch_size" else ""
        raise MilsilError(f"{name} must be an integer from {lo}{extra} to {hi}, got {value!r}")
    setattr(cfg, name, int(value))


def _check_float(cfg: TrainConfig, name: str, lo: float, hi: float, low_open: bool = False) -> None:
    value = getattr(cfg, name)
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise MilsilError(f"{name} must be a number, got {value!r}")
    value = float(value)
    bad_low = value <= lo if low_open else value < lo
    if not math.isfinite(value) or bad_low or value > hi:
        bound = f"> {lo}" if low_open else f">= {lo}"
        raise MilsilError(f"{name} must be {bound} and <= {hi}, got {value!r}")
    setattr(cfg, name, value)


def _device_syntax_ok(spec: str) -> bool:
    if spec in ("auto", "cpu", "cuda"):
        return True
    return spec.startswith("cuda:") and spec[5:].isdigit()


def resolve_device(spec: str) -> torch.device:
    """``auto`` -> CUDA when present, else CPU; asking for absent CUDA is an error."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not _device_syntax_ok(spec):
        raise MilsilError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {spec!r}")
    device = torch.device(spec)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise MilsilError(f"device {spec!r} requested but CUDA is not available here; use cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise MilsilError(
                f"device {spec!r}: only {torch.cuda.device_count()} CUDA device(s) present"
            )
    return device


@dataclass
class TrainProgress:
    """A snapshot of a running training, sent to the ``progress`` callback.

    ``event`` is ``step`` (after every optimisation step), ``epoch`` (after an epoch's
    validation; the val_* fields are then current) or ``end`` (state finished/cancelled).
    ``epoch`` counts from 1; ``step`` is the step within the epoch (1..steps_per_epoch).
    """

    state: str = "running"
    epoch: int = 0
    epochs: int = 0
    step: int = 0
    steps_per_epoch: int = 0
    loss: float = math.nan
    sil_accuracy: float = math.nan
    mil_accuracy: float = math.nan
    val_sil_accuracy: float = math.nan
    val_mil_accuracy: float = math.nan
    val_mil_auroc: float = math.nan
    eta_seconds: float = math.nan
    elapsed_seconds: float = 0.0
    event: str = "step"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class TrainResult:
    """Where a run left its checkpoints, its per-epoch history, and whether it was stopped."""

    best_checkpoint: Path
    last_checkpoint: Path
    history: list[dict[str, Any]] = field(default_factory=list)
    stopped: bool = False
    best_epoch: int = 0
    out_dir: Path | None = None


def bag_loss(
    output: BagOutput, labels: torch.Tensor, head: str
) -> tuple[torch.Tensor, dict[str, float]]:
    """Cross-entropy for ``head``; returns the loss and its parts (for logging).

    ``sil`` gives every patch its bag's label; ``mil`` uses only the bag logits (so the
    per-patch logits receive gradient only through the bag mean); ``milsil`` sums both, as
    the paper trains its proposed model.
    """
    if head not in HEADS:
        raise MilsilError(f"unknown head {head!r}; allowed: {', '.join(HEADS)}")
    parts: dict[str, float] = {}
    total = None
    if head in ("sil", "milsil"):
        if output.sil_logits is None:
            raise MilsilError(
                f"head {head!r} needs per-patch logits; this model has none (use head 'mil')"
            )
        b, n, c = output.sil_logits.shape
        sil = F.cross_entropy(
            output.sil_logits.reshape(b * n, c).float(), labels.repeat_interleave(n)
        )
        parts["sil_loss"] = float(sil.detach())
        total = sil
    if head in ("mil", "milsil"):
        mil = F.cross_entropy(output.mil_logits.float(), labels)
        parts["mil_loss"] = float(mil.detach())
        total = mil if total is None else total + mil
    assert total is not None
    return total, parts


# ---------------------------------------------------------------------------------------
# Reproducibility helpers


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch so that a run is a function of its config."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    """Global RNG states as plain values/tensors (loadable with ``weights_only=True``)."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            n["keys"].numpy().astype(np.uint32),
            n["pos"],
            n["has_gauss"],
            n["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        try:
            torch.cuda.set_rng_state_all(state["cuda"])
        except RuntimeError:  # different number of GPUs now: not worth failing a resume
            pass


def _epoch_seed(seed: int, epoch: int) -> int:
    """The seed of epoch ``epoch`` (0-based): batch order and augmentation depend only on it,
    so a resumed run replays exactly the epochs an uninterrupted run would have seen."""
    return (seed * 1_000_003 + epoch * 7919 + 17) % 2**31


# ---------------------------------------------------------------------------------------
# Small I/O helpers


def _clean(value: Any) -> Any:
    """JSON cannot hold NaN: write null instead (and plain floats for numpy scalars)."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return None if not math.isfinite(float(value)) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, (Path, str)):
        return str(value)  # also plain str from str subclasses (torch's TorchVersion)
    return value


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON (NaN-free) so that readers never see a half-written file."""
    atomic.write_json_atomic(path, _clean(obj))


def _rewrite_log(path: Path, history: list[dict[str, Any]]) -> None:
    """On resume the log is rebuilt from the checkpoint's history, so an epoch logged but
    not checkpointed before a crash does not appear twice."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w") as fh:
        for row in history:
            fh.write(json.dumps(_clean(row), sort_keys=True) + "\n")
    os.replace(tmp, path)


def versions() -> dict[str, str]:
    import milsil

    out = {
        "milsil": milsil.__version__,
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "numpy": str(np.__version__),
        "platform": platform.platform(),
    }
    if torch.cuda.is_available():
        out["cuda"] = str(torch.version.cuda)
        out["gpu"] = torch.cuda.get_device_name(0)
    return out


def data_summary(records: Sequence[Any], class_names: Sequence[str]) -> dict[str, Any]:
    """Bags, patients and bags per class: enough to tell two datasets apart in provenance."""
    counts = {name: 0 for name in class_names}
    for r in records:
        counts[class_names[r.label]] += 1
    return {
        "bags": len(records),
        "patients": len({r.patient for r in records}),
        "class_counts": counts,
    }


def _check_records(records: Sequence[Any], class_names: Sequence[str], what: str) -> None:
    for r in records:
        if not isinstance(r.label, int) or not 0 <= r.label < len(class_names):
            raise MilsilError(
                f"{what} record {r.path} has label {r.label!r}; allowed 0..{len(class_names) - 1} "
                f"({', '.join(class_names)})"
            )


# ---------------------------------------------------------------------------------------
# Training


class _EpochStats:
    """Running sums for one epoch's training loss and accuracies (restorable on resume)."""

    def __init__(self, state: dict[str, float] | None = None) -> None:
        s = state or {}
        self.loss_sum = float(s.get("loss_sum", 0.0))
        self.bags = int(s.get("bags", 0))
        self.mil_correct = int(s.get("mil_correct", 0))
        self.patches = int(s.get("patches", 0))
        self.sil_correct = int(s.get("sil_correct", 0))

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


def _make_loader(
    records: Sequence[Any],
    config: TrainConfig,
    mean: Sequence[float],
    std: Sequence[float],
    epoch: int,
    skip: int = 0,
) -> tuple[torch.utils.data.DataLoader, int]:
    """The training batches of ``epoch`` (0-based) from batch ``skip`` on, and the epoch's
    total number of batches.

    Bags in a batch have equal size. Batch order comes from the epoch's seed and
    augmentation from ``(seed, epoch, bag)`` on a fresh dataset, so epoch ``e`` is the same
    whether or not the run was interrupted before it (a resumed epoch skips the batches it
    had done). Workers (if any) are started with forkserver/spawn: forking a process that
    runs a gRPC server is unsafe.
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
        dataset.bag_sizes, config.batch_size, True, _epoch_seed(config.seed, epoch)
    )
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
        generator=torch.Generator().manual_seed(_epoch_seed(config.seed, epoch)),
        **kwargs,
    )
    return loader, len(batches)


def _is_better(metrics: dict[str, Any], best: dict[str, Any] | None) -> bool:
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


def _config_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    return [
        f"{k}: {old.get(k)!r} -> {new.get(k)!r}"
        for k in sorted(set(old) | set(new))
        if k not in RESUMABLE_CHANGES and old.get(k) != new.get(k)
    ]


def train_model(
    config: TrainConfig,
    train_records: Sequence[Any],
    val_records: Sequence[Any],
    class_names: Sequence[str],
    out_dir: str | Path,
    progress: Callable[[TrainProgress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    resume: bool = True,
) -> TrainResult:
    """Train ``config`` on ``train_records``, validating on ``val_records`` each epoch.

    ``progress`` is called after every step and at every epoch end; ``should_stop`` is
    polled before every step: when it returns True the current state (mid-epoch included)
    is checkpointed and the result has ``stopped=True``. With ``resume`` a run already in
    ``out_dir`` continues from ``last.pt`` (or returns at once if it had finished); the
    config must match except for ``epochs``, ``device`` and ``num_workers``, and the data
    must be the same (bags, patients, classes). ``best_checkpoint`` does not exist when the
    run stopped before finishing its first epoch.
    """
    from milsil.experiments.ablation import evaluate_model

    if not isinstance(config, TrainConfig):
        raise MilsilError(f"config must be a TrainConfig, got {type(config).__name__}")
    config.validate()
    class_names = [str(c) for c in class_names]
    if len(class_names) < 2:
        raise MilsilError(f"training needs at least 2 classes, got {class_names}")
    train_records, val_records = list(train_records), list(val_records or [])
    if not train_records:
        raise MilsilError("no training records: the training set is empty")
    _check_records(train_records, class_names, "training")
    _check_records(val_records, class_names, "validation")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    last_path, best_path = out_dir / "last.pt", out_dir / "best.pt"
    log_path, run_path = out_dir / "log.jsonl", out_dir / "run.json"
    device = resolve_device(config.device)
    use_amp = bool(config.amp and device.type == "cuda")

    summary = {
        "train": data_summary(train_records, class_names),
        "val": data_summary(val_records, class_names),
        "class_names": class_names,
    }

    seed_everything(config.seed)
    model = create_model(
        config.arch,
        num_classes=len(class_names),
        head=config.head,
        width=config.width,
        class_names=class_names,
        pretrained=config.pretrained,
    ).to(device)
    head = model.head  # attention MIL forces "mil"
    mean, std = model.normalization
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=config.lr_decay)
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

    start_epoch, start_step = 0, 0
    history: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    partial: dict[str, float] | None = None
    elapsed_before = 0.0

    if resume and last_path.exists():
        payload = read_checkpoint(last_path)
        state = payload.get("training_state")
        if not state:
            raise CheckpointError(f"{last_path} has no training state to resume from")
        diffs = _config_differences(state.get("config", {}), config.to_dict())
        if diffs:
            raise MilsilError(
                f"{out_dir} holds a run with different settings ({'; '.join(diffs)}); "
                "use another output folder or start over without resuming"
            )
        if list(payload["config"]["class_names"]) != class_names:
            raise MilsilError(
                f"{out_dir} was trained on classes {payload['config']['class_names']}, "
                f"not {class_names}; use another output folder"
            )
        if "data" in state and state["data"] != _clean(summary):
            raise MilsilError(
                f"{out_dir} holds a run on different data (was {state['data']['train']} for "
                f"training, now {summary['train']}); use another output folder or start over"
            )
        model.load_state_dict(payload["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler") and use_amp:
            scaler.load_state_dict(state["scaler"])
        _set_rng_state(state["rng"])
        start_epoch, start_step = int(state["epoch"]), int(state["step"])
        history = list(state.get("history", []))
        best = state.get("best")
        partial = state.get("partial")
        elapsed_before = float(state.get("elapsed_seconds", 0.0))
        _rewrite_log(log_path, history)
    else:
        for stale in (last_path, best_path, log_path):
            stale.unlink(missing_ok=True)

    run_info = {
        "config": config.to_dict(),
        "versions": versions(),
        "data": summary,
        "device": str(device),
        "amp": use_amp,
        "head_trained": head,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "resumed_from_epoch": start_epoch if start_epoch or start_step else None,
        "status": "running",
    }
    write_json_atomic(run_path, run_info)

    def provenance(epoch: int, metrics: dict[str, Any] | None) -> dict[str, Any]:
        return _clean(
            {
                "trainer": "milsil.engine.loop",
                "config": config.to_dict(),
                "epoch": epoch,
                "metrics": metrics or {},
                "dataset": summary,
                "versions": versions(),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
        )

    def save_last(epoch: int, step: int, stats: _EpochStats | None, elapsed: float) -> None:
        training_state = {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if use_amp else None,
            "epoch": epoch,
            "step": step,
            "partial": stats.state() if stats is not None and step else None,
            "rng": _rng_state(),
            "best": best,
            "history": _clean(history),
            "config": config.to_dict(),
            "data": _clean(summary),
            "elapsed_seconds": elapsed,
        }
        save_checkpoint(
            model, last_path, provenance(epoch, history[-1] if history else None), training_state
        )

    def finish(stopped: bool, elapsed: float) -> TrainResult:
        best_epoch = int(best["epoch"]) if best else (history[-1]["epoch"] if history else 0)
        run_info.update(
            status="cancelled" if stopped else "finished",
            finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            epochs_completed=len(history),
            best_epoch=best_epoch,
            best_metrics=next((h for h in history if h["epoch"] == best_epoch), None),
            elapsed_seconds=elapsed,
        )
        write_json_atomic(run_path, run_info)
        if progress is not None:
            last = history[-1] if history else {}
            progress(
                TrainProgress(
                    state=run_info["status"],
                    epoch=len(history),
                    epochs=config.epochs,
                    step=0,
                    steps_per_epoch=0,
                    loss=_nan(last.get("train_loss")),
                    sil_accuracy=_nan(last.get("train_sil_accuracy")),
                    mil_accuracy=_nan(last.get("train_mil_accuracy")),
                    val_sil_accuracy=_nan(last.get("val_sil_accuracy")),
                    val_mil_accuracy=_nan(last.get("val_mil_accuracy")),
                    val_mil_auroc=_nan(last.get("val_mil_auroc")),
                    eta_seconds=0.0,
                    elapsed_seconds=elapsed,
                    event="end",
                )
            )
        return TrainResult(
            best_checkpoint=best_path,
            last_checkpoint=last_path,
            history=history,
            stopped=stopped,
            best_epoch=best_epoch,
            out_dir=out_dir,
        )

    if start_epoch >= config.epochs and start_step == 0:
        return finish(False, elapsed_before)

    use_bar = sys.stderr.isatty()
    session_start = time.monotonic()
    session_steps = 0
    model.train()
    for epoch in range(start_epoch, config.epochs):
        epoch_start = time.monotonic()
        skip = start_step if epoch == start_epoch else 0
        loader, steps = _make_loader(train_records, config, mean, std, epoch, skip)
        stats = _EpochStats(partial if skip else None)
        bar = None
        if use_bar:
            from tqdm import tqdm

            bar = tqdm(
                total=steps, initial=skip, desc=f"epoch {epoch + 1}/{config.epochs}", leave=False
            )
        for step, (bags, labels) in enumerate(loader, start=skip):
            if should_stop is not None and should_stop():
                elapsed = elapsed_before + time.monotonic() - session_start
                save_last(epoch, step, stats, elapsed)
                if bar is not None:
                    bar.close()
                return finish(True, elapsed)
            bags = bags.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
                output = model(bags)
            loss, _ = bag_loss(output, labels, head)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            stats.update(float(loss.detach()), output, labels)
            session_steps += 1
            elapsed = elapsed_before + time.monotonic() - session_start
            if bar is not None:
                bar.set_postfix(loss=f"{stats.loss:.3f}", mil_acc=f"{stats.mil_accuracy:.3f}")
                bar.update(1)
            if progress is not None:
                per_step = (time.monotonic() - session_start) / session_steps
                remaining = (config.epochs - epoch - 1) * steps + (steps - step - 1)
                previous = history[-1] if history else {}  # validation of the last epoch
                progress(
                    TrainProgress(
                        state="running",
                        epoch=epoch + 1,
                        epochs=config.epochs,
                        step=step + 1,
                        steps_per_epoch=steps,
                        loss=stats.loss,
                        sil_accuracy=stats.sil_accuracy,
                        mil_accuracy=stats.mil_accuracy,
                        val_sil_accuracy=_nan(previous.get("val_sil_accuracy")),
                        val_mil_accuracy=_nan(previous.get("val_mil_accuracy")),
                        val_mil_auroc=_nan(previous.get("val_mil_auroc")),
                        eta_seconds=per_step * remaining,
                        elapsed_seconds=elapsed,
                        event="step",
                    )
                )
        if bar is not None:
            bar.close()

        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        row: dict[str, Any] = {
            "epoch": epoch + 1,
            "lr": lr,
            "train_loss": stats.loss,
            "train_sil_accuracy": stats.sil_accuracy,
            "train_mil_accuracy": stats.mil_accuracy,
        }
        if val_records:
            val = evaluate_model(model, val_records, config.patch_size, device, config.batch_size)
            model.train()
            row.update({f"val_{k}": v for k, v in val.items() if k in _VAL_KEYS})
        row["epoch_seconds"] = time.monotonic() - epoch_start
        elapsed = elapsed_before + time.monotonic() - session_start
        row["elapsed_seconds"] = elapsed
        is_best = _is_better(row, best) if val_records else True
        row["best"] = is_best
        history.append(_clean(row))
        if is_best:
            best = {
                "epoch": epoch + 1,
                "val_mil_accuracy": row.get("val_mil_accuracy"),
                "val_loss": row.get("val_loss"),
            }
        with open(log_path, "a") as fh:
            fh.write(json.dumps(_clean(row), sort_keys=True) + "\n")
        # best.pt before last.pt: last.pt records which epoch is best, so a crash between
        # the two writes must never leave it pointing at a best.pt not yet written.
        if is_best:
            save_checkpoint(model, best_path, provenance(epoch + 1, history[-1]))
        save_last(epoch + 1, 0, None, elapsed)
        if progress is not None:
            per_step = (time.monotonic() - session_start) / max(session_steps, 1)
            progress(
                TrainProgress(
                    state="running",
                    epoch=epoch + 1,
                    epochs=config.epochs,
                    step=steps,
                    steps_per_epoch=steps,
                    loss=stats.loss,
                    sil_accuracy=stats.sil_accuracy,
                    mil_accuracy=stats.mil_accuracy,
                    val_sil_accuracy=_nan(row.get("val_sil_accuracy")),
                    val_mil_accuracy=_nan(row.get("val_mil_accuracy")),
                    val_mil_auroc=_nan(row.get("val_mil_auroc")),
                    eta_seconds=per_step * (config.epochs - epoch - 1) * steps,
                    elapsed_seconds=elapsed,
                    event="epoch",
                )
            )
    return finish(False, elapsed_before + time.monotonic() - session_start)


_VAL_KEYS = ("loss", "sil_accuracy", "mil_accuracy", "sil_auroc", "mil_auroc")


def _nan(value: Any) -> float:
    return math.nan if value is None else float(value)


# ---------------------------------------------------------------------------------------
# Command line


def add_train_arguments(
    parser: argparse.ArgumentParser, defaults: TrainConfig | None = None
) -> None:
    """The training flags, shared by ``milsil train`` and ``milsil evaluate``."""
    d = defaults or TrainConfig()
    parser.add_argument("--arch", default=d.arch, choices=list_models(), help="model architecture")
    parser.add_argument(
        "--head", default=d.head, choices=HEADS, help="training loss (default %(default)s)"
    )
    parser.add_argument(
        "--width", type=int, default=d.width, help="channel width (64 = published size)"
    )
    parser.add_argument("--epochs", type=int, default=d.epochs)
    parser.add_argument("--lr", type=float, default=d.lr, help="Adam learning rate (paper: 1e-4)")
    parser.add_argument("--lr-decay", type=float, default=d.lr_decay, help="lr factor per epoch")
    parser.add_argument("--batch-size", type=int, default=d.batch_size, help="bags per batch")
    parser.add_argument("--weight-decay", type=float, default=d.weight_decay)
    parser.add_argument(
        "--patch-size", type=int, default=d.patch_size, help="bag patch side in pixels"
    )
    parser.add_argument("--no-augment", action="store_true", help="no flips/rotations")
    parser.add_argument(
        "--color-jitter", type=float, default=d.color_jitter, help="H&E stain jitter strength 0-1"
    )
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--device", default=d.device, help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--num-workers", type=int, default=d.num_workers, help="DataLoader workers")
    parser.add_argument("--no-amp", action="store_true", help="no mixed precision on CUDA")
    parser.add_argument("--pretrained", default=None, help="local file of ImageNet BagNet weights")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        arch=args.arch,
        head=args.head,
        width=args.width,
        epochs=args.epochs,
        lr=args.lr,
        lr_decay=args.lr_decay,
        batch_size=args.batch_size,
        weight_decay=args.weight_decay,
        patch_size=args.patch_size,
        augment=not args.no_augment,
        color_jitter=args.color_jitter,
        seed=args.seed,
        device=args.device,
        num_workers=args.num_workers,
        amp=not args.no_amp,
        pretrained=args.pretrained,
    )


def print_epoch(p: TrainProgress, label: str = "") -> None:
    """A CLI progress callback: one line per epoch (the tqdm bar, on a terminal, does steps)."""
    if p.event != "epoch":
        return
    val = ""
    if not math.isnan(p.val_mil_accuracy):
        val = (
            f"  val: MIL acc {p.val_mil_accuracy:.3f} AUROC {p.val_mil_auroc:.3f}"
            f" SIL acc {p.val_sil_accuracy:.3f}"
        )
    print(
        f"{label}epoch {p.epoch}/{p.epochs}  loss {p.loss:.4f}  MIL acc {p.mil_accuracy:.3f}"
        f"  SIL acc {p.sil_accuracy:.3f}{val}  ({p.elapsed_seconds:.0f}s, eta {p.eta_seconds:.0f}s)",
        flush=True,
    )


def _cmd_train(args: argparse.Namespace) -> int:
    from milsil.data import load_dataset, patient_split

    config = config_from_args(args)
    records, class_names = load_dataset(args.data)
    if not 0.0 <= args.val_fraction < 1.0:
        raise MilsilError(f"--val-fraction must be in [0, 1), got {args.val_fraction}")
    if args.val_fraction > 0:
        train, val = patient_split(records, test_fraction=args.val_fraction, seed=config.seed)
    else:
        train, val = list(records), []
    out = Path(args.out)
    device = resolve_device(config.device)
    ts, vs = data_summary(train, class_names), data_summary(val, class_names)
    print(
        f"milsil train: {args.data}: {len(records)} bags, classes {', '.join(class_names)}\n"
        f"  train {ts['bags']} bags / {ts['patients']} patients {ts['class_counts']}; "
        f"validation {vs['bags']} bags / {vs['patients']} patients {vs['class_counts']}\n"
        f"  {config.arch} width {config.width} head {config.head}, {config.epochs} epochs, "
        f"lr {config.lr:g} (x{config.lr_decay:g}/epoch), batch {config.batch_size}, "
        f"patch {config.patch_size}, seed {config.seed}, device {device}\n"
        f"  output: {out}",
        flush=True,
    )
    if (out / "last.pt").exists() and not args.no_resume:
        state = read_checkpoint(out / "last.pt").get("training_state") or {}
        done, step = int(state.get("epoch", 0)), int(state.get("step", 0))
        if done >= config.epochs and step == 0:
            print(
                f"  {out} already holds a finished run ({done} epochs): nothing to train",
                flush=True,
            )
        else:
            where = f"epoch {done + 1}" + (f", step {step + 1}" if step else "")
            print(f"  resuming the run in {out} at {where} (--no-resume starts over)", flush=True)
    result = train_model(
        config,
        train,
        val,
        class_names,
        out,
        progress=print_epoch,
        resume=not args.no_resume,
    )
    best = next((h for h in result.history if h["epoch"] == result.best_epoch), {})
    acc = best.get("val_mil_accuracy")
    what = f"val MIL accuracy {acc:.3f}" if acc is not None else "no validation set: last epoch"
    print(
        f"milsil train: {'stopped' if result.stopped else 'finished'} after "
        f"{len(result.history)}/{config.epochs} epochs; best epoch {result.best_epoch} ({what})\n"
        f"  best: {result.best_checkpoint}\n  last: {result.last_checkpoint}\n"
        f"  log:  {out / 'log.jsonl'}",
        flush=True,
    )
    return 0


def register_cli(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a MIL-SIL model on a dataset",
        description=(
            "Train a model on DATA (a manifest CSV, a folder with manifest.csv, or a folder of "
            "<class>/*.png). A patient-level validation split picks best.pt (highest bag "
            "accuracy). Checkpoints are written every epoch; running again with the same --out "
            "resumes, or does nothing if the run had finished."
        ),
    )
    parser.add_argument("data", help="dataset: manifest CSV or folder")
    parser.add_argument("--out", required=True, help="output folder (checkpoints, logs)")
    add_train_arguments(parser)
    parser.add_argument(
        "--val-fraction",
        type=float,
        default=0.2,
        help="fraction of patients held out for validation (0 = none; best = last)",
    )
    parser.add_argument(
        "--no-resume", action="store_true", help="start over even if --out has a run"
    )
    parser.set_defaults(func=_cmd_train)
