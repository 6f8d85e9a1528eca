"""Training jobs: queued, run one at a time in a *spawned* process, persisted in the store.

Why a spawned process: grpcio cannot survive ``fork`` once a server exists, and an
exception, a segfault or an out-of-memory kill in training must not take the server down.
The child reports progress through a multiprocessing queue; the parent's monitor thread
writes it to SQLite (so a restarted server still knows the job) and wakes WatchJob
streams. Stopping is cooperative: ``train_model(should_stop=...)`` checkpoints ``last.pt``
and returns, so a cancelled or interrupted job can be resumed where it stopped.

The trainer's own side (its entry point, its tie to the server through a parent-death
signal, its exclusive lock on the job folder) is :mod:`milsil_server.trainer`; before a
folder is given to a trainer, and at a restart, a stale trainer still holding it is ended.

States: QUEUED -> RUNNING -> SUCCEEDED | FAILED | CANCELLED | INTERRUPTED. A job that was
RUNNING when the server died is marked INTERRUPTED at the next start; StartTraining with
``resume_job`` puts it back in the queue and training continues from its last checkpoint.
"""

from __future__ import annotations

import logging
import math
import multiprocessing as mp
import os
import queue as queue_mod
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from milsil.engine.config import TrainConfig
from milsil.errors import MilsilError, NotFoundError
from milsil.v1.training_service_pb2 import Job
from milsil_server.errors import Busy, FailedPrecondition
from milsil_server.store import Store, new_id, private_dir
from milsil_server.trainer import (
    child_main,
    dataset_records,
    end_holder,
    split_records,
    train_config,
)

log = logging.getLogger("milsil.server.jobs")

# Job states are the contract's Job.State names (the store keeps the name). Every state
# numbered above RUNNING is final (training_service.proto says so); all final states but
# SUCCEEDED can be resumed.
_State = Job.State
QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED, INTERRUPTED = (
    _State.Name(n)
    for n in (Job.QUEUED, Job.RUNNING, Job.SUCCEEDED, Job.FAILED, Job.CANCELLED, Job.INTERRUPTED)
)
FINAL_STATES = tuple(name for name, number in _State.items() if number > Job.RUNNING)
RESUMABLE_STATES = tuple(s for s in FINAL_STATES if s != SUCCEEDED)

# Defaults for zero-valued TrainingConfig fields (proto3 cannot tell unset from 0): the
# library's (milsil.engine.config.TrainConfig), so a job trains as `milsil train` does with
# no flags. width, learning_rate, lr_decay and pretrained are left to the training recipe
# (milsil.engine.recipe), which effective_config writes back; validation_fraction is the
# CLI's --val-fraction default.
_LIBRARY = TrainConfig.__dataclass_fields__
DEFAULTS = {
    "arch": _LIBRARY["arch"].default,
    "head": _LIBRARY["head"].default,
    "epochs": _LIBRARY["epochs"].default,
    "batch_size": _LIBRARY["batch_size"].default,
    "recipe": _LIBRARY["recipe"].default,
    "validation_fraction": 0.2,
}
# What a request may ask for as `pretrained` (a path would name a file on the server).
PRETRAINED_ALLOWED = ("", "none", "imagenet")


def effective_config(request: dict[str, Any], dataset: dict[str, Any]) -> dict[str, Any]:
    """Fill defaults into a request's training settings and validate them (MilsilError)."""
    cfg = {k: request.get(k) for k in request}
    for key, default in DEFAULTS.items():
        if not cfg.get(key):
            cfg[key] = default
    for key in ("learning_rate", "lr_decay", "validation_fraction"):
        if not math.isfinite(float(cfg.get(key) or 0)):
            raise MilsilError(f"config.{key} must be a finite number, got {cfg[key]}")
    sizes = {tuple(b["tile_size"]) for b in dataset["bags"]}
    if not cfg.get("patch_size"):
        smallest = min(min(s) for s in sizes)
        cfg["patch_size"] = smallest
    folds, fold = int(cfg.get("folds") or 0), int(cfg.get("fold") or 0)
    if folds < 0 or folds == 1 and fold:
        raise MilsilError(f"config.folds must be 0, 1 or >= 2, got {folds}")
    if folds > 1 and not 0 <= fold < folds:
        raise MilsilError(f"config.fold must be 0-{folds - 1} for folds={folds}, got {fold}")
    if folds <= 1 and not 0 < cfg["validation_fraction"] <= 0.9:
        raise MilsilError(
            f"config.validation_fraction must be in (0, 0.9] (0 = 0.2), got {cfg['validation_fraction']}"
        )
    if cfg.get("seed", 0) < 0:
        raise MilsilError(f"config.seed must be >= 0, got {cfg['seed']}")
    if (cfg.get("pretrained") or "") not in PRETRAINED_ALLOWED:
        raise MilsilError(
            f"config.pretrained must be '', 'none' or 'imagenet', got {cfg.get('pretrained')!r} "
            "(files on the server are not accepted)"
        )
    # validates arch/head/width/epochs/lr/patch size (names the field) and fills in the
    # recipe's choices, which the job records as its effective settings
    resolved = train_config(cfg)
    cfg.update(
        width=resolved.width,
        learning_rate=resolved.lr,
        lr_decay=resolved.lr_decay,
        pretrained=resolved.pretrained,
        recipe=resolved.recipe,
        stain_normalize=resolved.stain_normalize,
    )
    if resolved.pretrained == "imagenet":
        from milsil.models.pretrained import probe

        probe(resolved.arch)  # an offline server says so now (FAILED_PRECONDITION)
    return cfg


class JobManager:
    """Owns the job queue, the worker process and the watchers."""

    def __init__(
        self,
        store: Store,
        on_model: Callable[[str], None] | None = None,
        max_queued: int = 16,
        start: bool = True,
    ) -> None:
        self.store = store
        self.on_model = on_model
        self.max_queued = max_queued
        self._ctx = mp.get_context("spawn")
        self._cond = threading.Condition()
        self._queue: deque[tuple[str, bool]] = deque()
        self._versions: dict[str, int] = {}
        self._running: dict[str, Any] = {}  # job id -> {"process", "stop", "reason"}
        self._closing = False
        for job in store.jobs_in_state(RUNNING):
            self._end_stale_trainer(job["id"])
            job["state"] = INTERRUPTED
            job["error"] = (
                "the server stopped while this job ran; resume it with StartTraining(resume_job)"
            )
            job["end_time"] = time.time()
            store.put_job(job)
            log.info("job %s marked INTERRUPTED (server restarted)", job["id"])
        for job in store.jobs_in_state(QUEUED):
            self._queue.append((job["id"], job.get("attempts", 1) > 1))
        self._thread = threading.Thread(target=self._scheduler, name="milsil-jobs", daemon=True)
        if start:
            self._thread.start()

    # ------------------------------------------------------------------ public API

    def start(
        self, dataset_id: str, request_config: dict[str, Any], display_name: str = ""
    ) -> dict[str, Any]:
        dataset = self.store.get_dataset(dataset_id)
        cfg = effective_config(request_config, dataset)
        records, _ = dataset_records(dataset, self.store.dataset_dir(dataset_id))
        try:
            split_records(records, cfg)  # refuse impossible splits now, not in the worker
        except MilsilError as exc:
            raise MilsilError(
                f"dataset datasets/{dataset_id} cannot be split as configured: {exc}"
            ) from None
        now = time.time()
        job = {
            "id": new_id("job-"),
            "display_name": display_name,
            "state": QUEUED,
            "dataset_id": dataset_id,
            "config": cfg,
            "progress": {},
            "model_id": "",
            "error": "",
            "create_time": now,
            "end_time": None,
            "attempts": 1,
        }
        with self._cond:
            self._check_capacity()
            self.store.put_job(job)
            self._queue.append((job["id"], False))
            self._bump(job["id"])
        return job

    def resume(self, job_id: str) -> dict[str, Any]:
        with self._cond:
            job = self.store.get_job(job_id)
            if job["state"] not in RESUMABLE_STATES:
                raise FailedPrecondition(
                    f"job jobs/{job_id} is {job['state']}; only {', '.join(RESUMABLE_STATES)} jobs can be resumed"
                )
            self._check_capacity()
            job["state"] = QUEUED
            job["error"] = ""
            job["end_time"] = None
            job["attempts"] = int(job.get("attempts", 1)) + 1
            self.store.put_job(job)
            self._queue.append((job_id, True))
            self._bump(job_id)
        return job

    def cancel(self, job_id: str) -> dict[str, Any]:
        with self._cond:
            job = self.store.get_job(job_id)
            if job["state"] == QUEUED:
                self._queue = deque(item for item in self._queue if item[0] != job_id)
                self._finish(job, CANCELLED)
            elif job["state"] == RUNNING and job_id in self._running:
                self._running[job_id]["reason"] = "cancel"
                self._running[job_id]["stop"].set()
            return self.store.get_job(job_id)

    def watch(
        self, job_id: str, is_active: Callable[[], bool], heartbeat: float = 10.0
    ) -> Iterator[dict[str, Any]]:
        """Yield the job now and after every change until it is final or the client leaves."""
        job = self.store.get_job(job_id)
        yield job
        seen = self._versions.get(job_id, 0)
        last = time.monotonic()
        while job["state"] not in FINAL_STATES and is_active():
            with self._cond:
                last_seen = seen
                self._cond.wait_for(
                    lambda last_seen=last_seen: (
                        self._versions.get(job_id, 0) != last_seen or self._closing
                    ),
                    timeout=0.5,
                )
                version = self._versions.get(job_id, 0)
            if version != seen or time.monotonic() - last > heartbeat:
                seen, last = version, time.monotonic()
                job = self.store.get_job(job_id)
                yield job
            if self._closing:
                return

    def shutdown(self, grace: float = 30.0) -> None:
        """Stop accepting work; running jobs checkpoint and become INTERRUPTED (resumable)."""
        with self._cond:
            self._closing = True
            running = dict(self._running)
            for entry in running.values():
                entry["reason"] = "shutdown"
                entry["stop"].set()
            self._cond.notify_all()
        deadline = time.monotonic() + grace
        for entry in running.values():
            entry["process"].join(max(0.1, deadline - time.monotonic()))
            if entry["process"].is_alive():
                entry["process"].terminate()
                entry["process"].join(5)
        if self._thread.is_alive():
            self._thread.join(max(0.1, deadline - time.monotonic()) + 5)

    def counts(self) -> dict[str, int]:
        """Jobs ``running`` (a trainer process) and ``queued`` (waiting for one), now."""
        with self._cond:
            return {"running": len(self._running), "queued": len(self._queue)}

    # ------------------------------------------------------------------ internals

    def _end_stale_trainer(self, job_id: str) -> bool:
        """End a trainer of an earlier server still holding this job's folder (one folder,
        one writer); False when it cannot be ended."""
        try:
            pid = end_holder(self.store.job_dir(job_id))
        except MilsilError:
            log.exception("job %s: its folder is held by a process that did not stop", job_id)
            return False
        if pid is not None:
            log.warning("job %s: ended stale trainer pid %s before using its folder", job_id, pid)
        return True

    def _check_capacity(self) -> None:
        if len(self._queue) >= self.max_queued:
            raise Busy(
                f"server busy: {len(self._queue)} training jobs are already queued "
                f"(limit {self.max_queued}); retry when one has started",
                reason="job_queue_full",
            )

    def _bump(self, job_id: str) -> None:
        with self._cond:  # an RLock: callers may already hold it
            self._versions[job_id] = self._versions.get(job_id, 0) + 1
            self._cond.notify_all()

    def _finish(self, job: dict[str, Any], state: str, error: str = "") -> None:
        job["state"] = state
        job["error"] = error
        job["end_time"] = time.time()
        self.store.put_job(job)
        self._bump(job["id"])
        log.info("job %s %s%s", job["id"], state, f": {error}" if error else "")

    def _scheduler(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._queue or self._closing, timeout=1.0)
                if self._closing:
                    return
                if not self._queue:
                    continue
                job_id, resume = self._queue.popleft()
            try:
                self._run(job_id, resume)
            except Exception:  # noqa: BLE001 - the scheduler must survive any single job
                log.exception("job %s: unexpected error in the job manager", job_id)
                try:
                    self._finish(
                        self.store.get_job(job_id),
                        FAILED,
                        "internal error in the job manager; see server log",
                    )
                except Exception:  # noqa: BLE001
                    log.exception("job %s: could not record the failure", job_id)

    def _run(self, job_id: str, resume: bool) -> None:
        job = self.store.get_job(job_id)
        if job["state"] != QUEUED:
            return
        dataset = self.store.get_dataset(job["dataset_id"])
        out_dir = private_dir(self.store.job_dir(job_id))
        args = {
            "dataset": dataset,
            "dataset_dir": str(self.store.dataset_dir(job["dataset_id"])),
            "config": job["config"],
            "out_dir": str(out_dir),
            "data_root": str(self.store.root),
            "server_pid": os.getpid(),
        }
        if not self._end_stale_trainer(job_id):
            self._finish(
                job,
                FAILED,
                f"another process still holds jobs/{job_id} and could not be stopped; "
                "see the server log, then resume the job",
            )
            return
        events = self._ctx.Queue()
        stop = self._ctx.Event()
        process = self._ctx.Process(
            target=child_main,
            args=(args, events, stop),
            name=f"milsil-train-{job_id}",
            daemon=True,
        )
        with self._cond:
            if self._closing:
                return
            # Re-read under the lock: a CancelJob may have finished the job since it left
            # the queue, and its CANCELLED must not be overwritten by RUNNING.
            job = self.store.get_job(job_id)
            if job["state"] != QUEUED:
                return
            job["state"] = RUNNING
            self.store.put_job(job)
            process.start()  # inside the lock: shutdown() never sees an unstarted process
            self._running[job_id] = {"process": process, "stop": stop, "reason": ""}
            self._bump(job_id)
        log.info("job %s RUNNING in process %s (resume=%s)", job_id, process.pid, resume)
        outcome: tuple[str, Any] | None = None
        last_write = 0.0
        while True:
            try:
                kind, payload = events.get(timeout=0.25)
            except queue_mod.Empty:
                if not process.is_alive():
                    # drain anything sent just before exit
                    try:
                        kind, payload = events.get(timeout=0.5)
                    except queue_mod.Empty:
                        break
                else:
                    continue
            if kind == "progress":
                job["progress"] = payload
                now = time.monotonic()
                if payload.get("event") != "step" or now - last_write > 1.0:
                    self.store.put_job(job)
                    last_write = now
                with self._cond:
                    self._bump(job_id)
            else:
                outcome = (kind, payload)
        process.join(5)
        with self._cond:
            entry = self._running.pop(job_id, {})
        reason = entry.get("reason", "")
        if outcome is None:
            self._finish(
                job,
                FAILED if reason != "shutdown" else INTERRUPTED,
                f"training process died (exit code {process.exitcode}; out of memory?)",
            )
        elif outcome[0] == "error":
            self._finish(job, FAILED, outcome[1])
        elif outcome[1]["stopped"]:
            self._finish(job, INTERRUPTED if reason == "shutdown" else CANCELLED)
        else:
            self._register(job, outcome[1])

    def _register(self, job: dict[str, Any], result: dict[str, Any]) -> None:
        metrics = {
            k: float(v) for k, v in result.get("metrics", {}).items() if math.isfinite(float(v))
        }
        if self._registered_by(job["id"]):
            # The server died after registering but before marking the job SUCCEEDED:
            # the model is there, so the resumed job is done.
            log.info("job %s: its model was registered before a restart", job["id"])
        else:
            try:
                self._register_checkpoint(job, result, metrics)
            except Exception as exc:  # noqa: BLE001 - a bad checkpoint fails the job, not the server
                log.exception("job %s: registering its model failed", job["id"])
                self._finish(
                    job, FAILED, f"training finished but its model could not be registered: {exc}"
                )
                return
        job["model_id"] = job["id"]
        if self.on_model:
            self.on_model(job["id"])
        self._finish(job, SUCCEEDED)

    def _registered_by(self, job_id: str) -> bool:
        try:
            row = self.store.get_model(job_id)
        except NotFoundError:
            return False
        return row.get("source_job") == f"jobs/{job_id}"

    def _register_checkpoint(
        self, job: dict[str, Any], result: dict[str, Any], metrics: dict[str, float]
    ) -> None:
        self.store.register_model(
            Path(result["best_checkpoint"]),
            job["id"],
            display_name=job.get("display_name") or f"trained by jobs/{job['id']}",
            source_job=f"jobs/{job['id']}",
            metrics=metrics,
            patch_size=int(job["config"].get("patch_size") or 0),
            label=f"jobs/{job['id']}/{Path(result['best_checkpoint']).name}",
        )
