"""Training: the paper's recipe (cross-entropy, Adam, lr 1e-4 with exponential decay).

One function, :func:`train_model`, does everything a run needs and is what the CLI, the
experiments and the gRPC server call:

* the loss follows ``model.head`` (:func:`milsil.engine.losses.bag_loss`): ``sil`` =
  cross-entropy on every patch with its bag's label (BagNet), ``mil`` = cross-entropy on
  the bag logits (MILBagNet, and attention MIL), ``milsil`` = the sum of both (the
  proposed model);
* bags in one batch have the same number of patches (``bucket_batches``), so a batch is a
  plain ``[B, N, 3, p, p]`` tensor and the MIL mean needs no masking;
* every epoch ends with an atomic ``last.pt`` holding optimizer, scheduler, RNG states and
  history, so an interrupted run (crash, Ctrl-C, a cancelled server job) resumes where it
  stopped and reaches the same weights as an uninterrupted one;
* ``best.pt`` is the epoch with the highest validation MIL accuracy (ties: lower validation
  loss); without validation data it is simply the last epoch; with ``config.patience`` the
  run ends early once that many epochs have passed without a new best;
* a finished run's ``best.pt`` and ``last.pt`` carry the familiarity reference
  (:mod:`milsil.engine.familiarity`), fitted on their own weights;
* ``log.jsonl`` gets one line per epoch, ``run.json`` the config, versions and data summary;
* data-parallel training (``torchrun``) is the same loop given a process group
  (``distributed=``, a :class:`milsil.distributed.DistContext`): each rank takes its
  share of every epoch's batches, DDP averages the gradients, the epoch's training metrics
  are gathered from all ranks, and rank 0 validates and writes every file.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from milsil.engine.background import CheckpointWriter
from milsil.engine.config import TrainConfig, config_differences, resolve_device
from milsil.engine.epoch import EpochClock, EpochStats, TrainBatches, is_better
from milsil.engine.familiarity import attach_familiarity
from milsil.engine.group import OneProcess, ProcessGroup
from milsil.engine.losses import bag_loss
from milsil.engine.progress import TrainProgress, TrainResult, nan_if_none, val_fields
from milsil.engine.provenance import (
    append_log,
    clean,
    data_summary,
    rewrite_log,
    versions,
    write_json_atomic,
)
from milsil.engine.seeding import rng_state, seed_everything, set_rng_state
from milsil.engine.validation import evaluate_model
from milsil.errors import CheckpointError, MilsilError
from milsil.models import (
    checkpoint_payload,
    create_model,
    load_pretrained_backbone,
    read_checkpoint,
)
from milsil.models.bagnet import BagNet, ResNet50, reference_init
from milsil.models.stain import model_stain, set_model_stain

# The validation metrics a history row keeps (as ``val_<key>``).
_VAL_KEYS = ("loss", "sil_accuracy", "mil_accuracy", "sil_auroc", "mil_auroc")


def _check_records(records: Sequence[Any], class_names: Sequence[str], what: str) -> None:
    for r in records:
        if not isinstance(r.label, int) or not 0 <= r.label < len(class_names):
            raise MilsilError(
                f"{what} record {r.path} has label {r.label!r}; allowed 0..{len(class_names) - 1} "
                f"({', '.join(class_names)})"
            )


def train_model(
    config: TrainConfig,
    train_records: Sequence[Any],
    val_records: Sequence[Any],
    class_names: Sequence[str],
    out_dir: str | Path,
    progress: Callable[[TrainProgress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    resume: bool = True,
    distributed: ProcessGroup | None = None,
) -> TrainResult:
    """Train ``config`` on ``train_records``, validating on ``val_records`` each epoch.

    ``progress`` is called after every step and at every epoch end; ``should_stop`` is
    polled before every step: when it returns True the current state (mid-epoch included)
    is checkpointed and the result has ``stopped=True``. With ``resume`` a run already in
    ``out_dir`` continues from ``last.pt`` (or returns at once if it had finished); the
    config must match except for ``epochs``, ``device`` and ``num_workers``, and the data
    must be the same (bags, patients, classes). ``best_checkpoint`` does not exist when the
    run stopped before finishing its first epoch.

    ``distributed``: this process's place in a ``torchrun`` group
    (:func:`milsil.distributed.init_distributed`); every rank calls ``train_model``
    with the same arguments and trains on the group's device. Training metrics of an epoch
    are gathered from all ranks; rank 0 validates, writes the files and ``run.json`` records
    the world size and backend. ``progress`` is called on every rank that passes one
    (``step`` events carry that rank's running metrics). ``should_stop`` needs a single
    process.
    """
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
    if config.patience and not val_records:
        raise MilsilError(
            f"patience {config.patience} (early stopping) needs validation records; give "
            "some, or patience 0 to train all epochs"
        )
    if should_stop is not None and distributed is not None and distributed.active:
        raise MilsilError(
            "should_stop cannot stop one process of a data-parallel run; stop the whole group"
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if distributed is None:
        group: ProcessGroup | OneProcess = OneProcess(resolve_device(config.device))
    else:
        group = distributed
    run = _Run(config, train_records, val_records, class_names, out_dir, group, progress)
    if distributed is not None:
        run.group_info = {"world_size": group.world_size, "backend": group.backend}
    if resume and run.last_path.exists():
        run.resume()
    else:
        run.start_over()
    group.barrier()  # rank 0 has rewritten or removed the old files
    run.write_run_info()
    if run.start_epoch >= config.epochs and run.start_step == 0:
        return run.finish(False, run.elapsed_before)
    return run.train(should_stop)


def initialise(model: torch.nn.Module, config: TrainConfig) -> str:
    """A new run's weights: the pretrained backbone (ImageNet or a file), else, from
    scratch, the reference BagNet's / torchvision ResNet's He-normal init (BatchNorm 1/0);
    other architectures keep their own. Returns what was done, in words."""
    if config.initialised:
        return load_pretrained_backbone(model, config.pretrained)
    backbone = getattr(model, "backbone", None)
    if isinstance(backbone, (BagNet, ResNet50)):
        reference_init(backbone)
        return "from scratch: He-normal convs, BatchNorm weight 1 / bias 0 (reference init)"
    return "from scratch: the architecture's own init"


def fit_training_stain(config: TrainConfig, records: Sequence[Any]) -> Any:
    """The stain target of ``config.stain_normalize``, fitted on the training bags."""
    from milsil.data import load_bag
    from milsil.data.stain import fit_records_target

    return fit_records_target(
        config.stain_normalize, records, lambda r: load_bag(r, config.patch_size)
    )


def set_stem_momentum(model: torch.nn.Module, momentum: float | None) -> None:
    """Set a BagNet's stem BatchNorm momentum (the reference's 0.001, or the default
    recipe's 0.1 from scratch); other architectures keep theirs."""
    backbone = getattr(model, "backbone", None)
    if momentum is not None and isinstance(backbone, BagNet):
        backbone.bn1.momentum = momentum


class _Run:
    """One training run: its model and optimiser, its history, and the files it writes.

    Only the main process (rank 0 of a group; the only process otherwise) writes files.
    """

    def __init__(
        self,
        config: TrainConfig,
        train_records: list[Any],
        val_records: list[Any],
        class_names: list[str],
        out_dir: Path,
        group: ProcessGroup | OneProcess,
        progress: Callable[[TrainProgress], None] | None,
    ) -> None:
        self.config = config
        self.train_records, self.val_records = train_records, val_records
        self.class_names = class_names
        self.out_dir = out_dir
        self.last_path, self.best_path = out_dir / "last.pt", out_dir / "best.pt"
        self.log_path, self.run_path = out_dir / "log.jsonl", out_dir / "run.json"
        self.group = group
        self.writes = group.is_main
        self.progress = progress
        self.device = device = group.device
        self.use_amp = bool(config.amp and device.type == "cuda")
        self.summary = {
            "train": data_summary(train_records, class_names),
            "val": data_summary(val_records, class_names),
            "class_names": class_names,
        }

        seed_everything(config.seed)
        self.model = create_model(
            config.arch,
            num_classes=len(class_names),
            head=config.head,
            width=config.width,
            class_names=class_names,
        ).to(device)
        set_stem_momentum(self.model, config.stem_bn_momentum)
        if device.type == "cpu":
            # oneDNN's convolutions run faster on channels-last weights (and so activations):
            # the training step of the demo run (BagNet-9 width 16, 64 px patches) took 1.4x
            # less time on this project's 2-core CPU, width 64 about 5% (README, "Training
            # speed"). The numbers are the same up to float rounding; checkpoints load into
            # any layout. CUDA keeps PyTorch's default until the GPU suite measures it.
            self.model = self.model.to(memory_format=torch.channels_last)
        if config.stain_normalize != "none":  # fitted the same way on every rank and resume
            set_model_stain(self.model, fit_training_stain(config, train_records))
        self.init_note = "from scratch"
        self.head = self.model.head  # attention MIL forces "mil"
        self.mean, self.std = self.model.normalization
        self.optimizer = torch.optim.Adam(
            self.model.parameters(), lr=config.lr, weight_decay=config.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.ExponentialLR(
            self.optimizer, gamma=config.lr_decay
        )
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)

        self.start_epoch, self.start_step = 0, 0
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] | None = None
        self.partial: dict[str, float] | None = None
        self.elapsed_before = 0.0
        self.run_info: dict[str, Any] = {}
        self.group_info: dict[str, Any] = {}  # world size and backend of a torchrun group
        self.session_start = 0.0
        self.session_steps = 0
        self.writer = CheckpointWriter()

    # ------------------------------------------------------------------ start and resume

    def resume(self) -> None:
        """Continue the run in ``last.pt``: same settings and data, or an error."""
        payload = read_checkpoint(self.last_path)
        state = payload.get("training_state")
        if not state:
            raise CheckpointError(f"{self.last_path} has no training state to resume from")
        diffs = config_differences(state.get("config", {}), self.config.to_dict())
        if diffs:
            raise MilsilError(
                f"{self.out_dir} holds a run with different settings ({'; '.join(diffs)}); "
                "use another output folder or start over without resuming"
            )
        if list(payload["config"]["class_names"]) != self.class_names:
            raise MilsilError(
                f"{self.out_dir} was trained on classes {payload['config']['class_names']}, "
                f"not {self.class_names}; use another output folder"
            )
        if "data" in state and state["data"] != clean(self.summary):
            raise MilsilError(
                f"{self.out_dir} holds a run on different data (was {state['data']['train']} for "
                f"training, now {self.summary['train']}); use another output folder or start over"
            )
        if int(state["step"]) and self.group.active:
            raise MilsilError(
                f"{self.out_dir} holds a run stopped mid-epoch; finish that epoch in one process "
                "('milsil train') before continuing it data-parallel"
            )
        self.model.load_state_dict(payload["state_dict"])
        self.init_note = "resumed from last.pt"
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler") and self.use_amp:
            self.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        self.start_epoch, self.start_step = int(state["epoch"]), int(state["step"])
        self.history = list(state.get("history", []))
        self.best = state.get("best")
        self.partial = state.get("partial")
        self.elapsed_before = float(state.get("elapsed_seconds", 0.0))
        if self.writes:
            rewrite_log(self.log_path, self.history)

    def start_over(self) -> None:
        """A new run: initialise the model (:func:`initialise`), drop old files."""
        self.init_note = initialise(self.model, self.config)
        if self.writes:
            for stale in (self.last_path, self.best_path, self.log_path):
                stale.unlink(missing_ok=True)

    def write_run_info(self) -> None:
        self.run_info = {
            "config": self.config.to_dict(),
            "versions": versions(),
            "data": self.summary,
            "device": str(self.device),
            "amp": self.use_amp,
            "head_trained": self.head,
            "initialisation": self.init_note,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "resumed_from_epoch": (
                self.start_epoch if self.start_epoch or self.start_step else None
            ),
            "status": "running",
            **self.group_info,
        }
        if self.writes:
            write_json_atomic(self.run_path, self.run_info)

    # ------------------------------------------------------------------------ the files

    def provenance(self, epoch: int, metrics: dict[str, Any] | None) -> dict[str, Any]:
        info = {
            "trainer": "milsil.engine.loop",
            "config": self.config.to_dict(),
            "epoch": epoch,
            "metrics": metrics or {},
            "dataset": self.summary,
            "versions": versions(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        if self.group_info:
            info["world_size"] = self.group_info["world_size"]
        return clean(info)

    def save_last(self, epoch: int, step: int, stats: EpochStats | None, elapsed: float) -> None:
        if not self.writes:
            return
        training_state = {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.use_amp else None,
            "epoch": epoch,
            "step": step,
            "partial": stats.state() if stats is not None and step else None,
            "rng": rng_state(),
            "best": self.best,
            "history": clean(self.history),
            "config": self.config.to_dict(),
            "data": clean(self.summary),
            "elapsed_seconds": elapsed,
        }
        last = self.history[-1] if self.history else None
        self.save(self.last_path, self.provenance(epoch, last), training_state)

    def save(
        self, path: Path, provenance: dict[str, Any], training_state: dict[str, Any] | None = None
    ) -> None:
        """Hand a checkpoint (copied now) to the background writer; the previous epoch's
        writes must have finished, so at most one epoch's copies are held."""
        payload = checkpoint_payload(self.model, provenance, training_state, copy=True)
        self.writer.submit(path, payload)

    def finish(self, stopped: bool, elapsed: float) -> TrainResult:
        self.writer.close()  # every checkpoint on disk before the run says it ended
        if not stopped and self.writes:  # a finished run's files carry the reference
            self.run_info["familiarity"] = attach_familiarity(
                (self.best_path, self.last_path),
                self.train_records,
                self.val_records,
                self.config.patch_size,
                self.device,
                self.config.seed,
            )
        history = self.history
        best_epoch = (
            int(self.best["epoch"]) if self.best else (history[-1]["epoch"] if history else 0)
        )
        self.run_info.update(
            status="cancelled" if stopped else "finished",
            finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            epochs_completed=len(history),
            best_epoch=best_epoch,
            best_metrics=next((h for h in history if h["epoch"] == best_epoch), None),
            elapsed_seconds=elapsed,
        )
        if self.writes:
            write_json_atomic(self.run_path, self.run_info)
        if self.progress is not None:
            last = history[-1] if history else {}
            self.progress(
                TrainProgress(
                    state=self.run_info["status"],
                    epoch=len(history),
                    epochs=self.config.epochs,
                    step=0,
                    steps_per_epoch=0,
                    loss=nan_if_none(last.get("train_loss")),
                    sil_accuracy=nan_if_none(last.get("train_sil_accuracy")),
                    mil_accuracy=nan_if_none(last.get("train_mil_accuracy")),
                    **val_fields(last),
                    eta_seconds=0.0,
                    elapsed_seconds=elapsed,
                    event="end",
                )
            )
        self.group.barrier()  # every rank returns once rank 0 has written everything
        return TrainResult(
            best_checkpoint=self.best_path,
            last_checkpoint=self.last_path,
            history=history,
            stopped=stopped,
            best_epoch=best_epoch,
            out_dir=self.out_dir,
        )

    # --------------------------------------------------------------------------- training

    def elapsed(self) -> float:
        return self.elapsed_before + time.monotonic() - self.session_start

    def train(self, should_stop: Callable[[], bool] | None) -> TrainResult:
        """Train from where the run stands to ``config.epochs`` (or until stopped)."""
        self.net = self.group.wrap(self.model)
        self.batches = TrainBatches(
            self.train_records,
            self.config,
            self.mean,
            self.std,
            self.group,
            prefetch=self.device.type != "cpu",
            stain=model_stain(self.model),
        )
        self.use_bar = sys.stderr.isatty() and self.writes
        self.session_start = time.monotonic()
        self.session_steps = 0
        self.net.train()
        for epoch in range(self.start_epoch, self.config.epochs):
            if self.patience_exhausted():
                break
            epoch_start = time.monotonic()
            skip = self.start_step if epoch == self.start_epoch else 0
            self.clock = EpochClock()
            stats, steps, stopped = self.train_epoch(epoch, skip, should_stop)
            if stopped is not None:
                return self.finish(True, stopped)
            self.end_epoch(epoch, stats, steps, epoch_start)
        return self.finish(False, self.elapsed())

    def patience_exhausted(self) -> bool:
        """Early stopping: ``patience`` epochs done since the best one (checked before each
        epoch, so a resumed run that had stopped stays stopped)."""
        if not self.config.patience or not self.history or self.best is None:
            return False
        return self.history[-1]["epoch"] - self.best["epoch"] >= self.config.patience

    def train_epoch(
        self, epoch: int, skip: int, should_stop: Callable[[], bool] | None
    ) -> tuple[EpochStats, int, float | None]:
        """One epoch's optimisation steps from step ``skip`` on: its running metrics, its
        number of steps, and (when ``should_stop`` said so) the elapsed time at the stop,
        the state having been saved in ``last.pt``."""
        config, device = self.config, self.device
        batches, steps = self.batches.epoch(epoch, skip)
        stats = EpochStats(self.partial if skip else None)
        bar = None
        if self.use_bar:
            from tqdm import tqdm

            bar = tqdm(
                total=steps, initial=skip, desc=f"epoch {epoch + 1}/{config.epochs}", leave=False
            )
        for step in range(skip, steps):
            with self.clock.timing("data"):
                bags, labels = next(batches)
            if should_stop is not None and should_stop():
                getattr(batches, "close", lambda: None)()
                elapsed = self.elapsed()
                self.save_last(epoch, step, stats, elapsed)
                if bar is not None:
                    bar.close()
                return stats, steps, elapsed
            with self.clock.timing("step"):
                bags = bags.to(device, non_blocking=True)
                labels = labels.to(device, non_blocking=True)
                with torch.autocast(
                    device_type=device.type, dtype=torch.float16, enabled=self.use_amp
                ):
                    output = self.net(bags)
                loss, _ = bag_loss(output, labels, self.head)
                self.optimizer.zero_grad(set_to_none=True)
                self.scaler.scale(loss).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()
                stats.update(float(loss.detach()), output, labels)  # waits for the device
            self.clock.bags += int(labels.shape[0])
            self.session_steps += 1
            elapsed = self.elapsed()
            if bar is not None:
                bar.set_postfix(loss=f"{stats.loss:.3f}", mil_acc=f"{stats.mil_accuracy:.3f}")
                bar.update(1)
            if self.progress is not None:
                per_step = (time.monotonic() - self.session_start) / self.session_steps
                remaining = (config.epochs - epoch - 1) * steps + (steps - step - 1)
                previous = self.history[-1] if self.history else {}  # last epoch's validation
                self.progress(
                    TrainProgress(
                        state="running",
                        epoch=epoch + 1,
                        epochs=config.epochs,
                        step=step + 1,
                        steps_per_epoch=steps,
                        loss=stats.loss,
                        sil_accuracy=stats.sil_accuracy,
                        mil_accuracy=stats.mil_accuracy,
                        **val_fields(previous),
                        eta_seconds=per_step * remaining,
                        elapsed_seconds=elapsed,
                        event="step",
                    )
                )
        if bar is not None:
            bar.close()
        return stats, steps, None

    def end_epoch(self, epoch: int, stats: EpochStats, steps: int, epoch_start: float) -> None:
        """Validate, log, checkpoint (best.pt, then last.pt) and report a finished epoch."""
        config = self.config
        lr = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step()
        if self.group.active:
            stats = EpochStats.merged(self.group.gather(stats.state()))
        row: dict[str, Any] = {
            "epoch": epoch + 1,
            "lr": lr,
            "train_loss": stats.loss,
            "train_sil_accuracy": stats.sil_accuracy,
            "train_mil_accuracy": stats.mil_accuracy,
        }
        if self.val_records and self.writes:
            with self.clock.timing("validation"):
                val = evaluate_model(
                    self.model, self.val_records, config.patch_size, self.device, config.batch_size
                )
            self.net.train()
            row.update({f"val_{k}": v for k, v in val.items() if k in _VAL_KEYS})
        row["epoch_seconds"] = time.monotonic() - epoch_start
        elapsed = self.elapsed()
        row["elapsed_seconds"] = elapsed
        if self.group.active:
            row = self.group.gather(row)[0]  # rank 0's row, with its validation, everywhere
        is_best = is_better(row, self.best) if self.val_records else True
        row["best"] = is_best
        self.history.append(clean(row))
        if is_best:
            self.best = {
                "epoch": epoch + 1,
                "val_mil_accuracy": row.get("val_mil_accuracy"),
                "val_loss": row.get("val_loss"),
            }
        with self.clock.timing("checkpoint"):
            # The previous epoch's files are on disk before this epoch's go out, and
            # best.pt goes before last.pt: last.pt records which epoch is best, so a crash
            # between the two writes must never leave it pointing at a best.pt not yet written.
            self.writer.wait()
            if is_best and self.writes:
                self.save(self.best_path, self.provenance(epoch + 1, self.history[-1]))
        self.history[-1]["timing"] = self.clock.row(time.monotonic() - epoch_start)
        self.save_last(epoch + 1, 0, None, elapsed)
        if self.writes:
            append_log(self.log_path, self.history[-1])
        if self.progress is not None:
            per_step = (time.monotonic() - self.session_start) / max(self.session_steps, 1)
            self.progress(
                TrainProgress(
                    state="running",
                    epoch=epoch + 1,
                    epochs=config.epochs,
                    step=steps,
                    steps_per_epoch=steps,
                    loss=stats.loss,
                    sil_accuracy=stats.sil_accuracy,
                    mil_accuracy=stats.mil_accuracy,
                    **val_fields(row),
                    eta_seconds=per_step * (config.epochs - epoch - 1) * steps,
                    elapsed_seconds=elapsed,
                    event="epoch",
                    bags_per_second=nan_if_none(self.history[-1]["timing"]["bags_per_second"]),
                )
            )
