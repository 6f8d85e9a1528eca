"""The spawned training process: its entry point, its tie to the server, its job-folder lock.

A trainer never outlives its server, and a job folder never has two trainers:

* :func:`tie_to_parent` (in the trainer): on Linux the kernel sends SIGKILL when the
  server dies (``prctl(PR_SET_PDEATHSIG)``); everywhere, a watcher thread exits the
  trainer within about half a second once its parent process is gone (the fallback, and
  the cover for a server that died before the ``prctl`` took effect). ``last.pt`` is
  written atomically at every epoch's end, so a killed trainer loses at most the epoch
  it was in.
* :class:`FolderLock` (in the trainer): an exclusive POSIX lock (``fcntl``) on
  ``jobs/<id>/trainer.lock``, held for the trainer's whole life and released by the
  kernel however the process ends. A trainer that cannot take it within a few seconds
  refuses to start.
* :func:`end_holder` (in the server): before a job folder is given to a new trainer, and
  at a restart for each job that was RUNNING, the process holding the lock (the kernel
  names it: ``F_GETLK``) is sent SIGTERM, then SIGKILL, and waited for.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import logging
import os
import signal
import struct
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from milsil.errors import MilsilError

log = logging.getLogger("milsil.server.jobs")

LOCK_NAME = "trainer.lock"
_PR_SET_PDEATHSIG = 1
# struct flock on Linux (64-bit): short l_type, short l_whence, off_t l_start, off_t l_len,
# pid_t l_pid, padding.
_FLOCK = "hhqqi4x"


# --------------------------------------------------------------------------- the trainer side


def tie_to_parent(parent_pid: int, poll: float = 0.5) -> None:
    """End this process when ``parent_pid`` (the server) dies."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
                log.warning("prctl(PR_SET_PDEATHSIG) failed: errno %s", ctypes.get_errno())
        except (OSError, AttributeError):  # no libc symbol: the watcher still runs
            log.warning("prctl is unavailable; relying on the parent watcher")
    if os.getppid() != parent_pid:  # the server died before the prctl took effect
        os._exit(70)

    def watch() -> None:
        while True:
            time.sleep(poll)
            if os.getppid() != parent_pid:
                os._exit(70)

    threading.Thread(target=watch, name="milsil-parent-watch", daemon=True).start()


class FolderLock:
    """The exclusive lock on a job folder, held by the trainer that writes it."""

    def __init__(self, folder: str | Path) -> None:
        self.path = Path(folder) / LOCK_NAME
        self.fd: int | None = None

    def acquire(self, timeout: float = 10.0) -> None:
        """Take the lock, waiting up to ``timeout`` seconds; MilsilError if another holds it.

        The descriptor stays open for the life of the process (closing any descriptor of
        this file would drop a POSIX lock)."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EACCES, errno.EAGAIN):
                    os.close(fd)
                    raise
                if time.monotonic() > deadline:
                    holder = lock_holder(self.path.parent)
                    os.close(fd)
                    raise MilsilError(
                        f"another trainer (pid {holder}) holds this job's folder; "
                        "only one process may train a job at a time"
                    ) from None
                time.sleep(0.1)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd


# --------------------------------------------------------------------------- the server side


def lock_holder(folder: str | Path) -> int | None:
    """The pid of the process holding ``folder``'s trainer lock, or None when it is free."""
    path = Path(folder) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return None
    try:
        if sys.platform.startswith("linux"):
            query = struct.pack(_FLOCK, fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
            kind, _, _, _, pid = struct.unpack(_FLOCK, fcntl.fcntl(fd, fcntl.F_GETLK, query))
            return None if kind == fcntl.F_UNLCK else pid
        try:  # elsewhere: try the lock; the pid is the one the holder wrote
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            text = os.pread(fd, 32, 0).decode(errors="replace").strip()
            return int(text) if text.isdigit() else 0
        return None  # closing fd below releases the lock we just took
    finally:
        os.close(fd)


def end_holder(folder: str | Path, grace: float = 5.0) -> int | None:
    """End the process holding ``folder``'s trainer lock (SIGTERM, then SIGKILL) and wait
    for the lock to be free. Returns the pid that held it (None if none), or raises
    MilsilError when the lock is still held afterwards."""
    pid = lock_holder(folder)
    if pid is None:
        return None
    log.warning("job folder %s is held by a stale trainer (pid %s): ending it", folder, pid)
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, grace)):
        if pid > 0:  # 0: a holder in another pid namespace; it can only be waited for
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
            except PermissionError:
                break
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if lock_holder(folder) is None:
                return pid
            time.sleep(0.05)
    if lock_holder(folder) is None:
        return pid
    raise MilsilError(f"process {pid} still holds the job folder; stop it, then resume the job")


# --------------------------------------------------------------------------- the process


def train_config(cfg: dict[str, Any]) -> Any:
    """The milsil.engine.config.TrainConfig for a job's settings; zero/empty width,
    learning_rate, lr_decay and pretrained are left to the training recipe."""
    from milsil.engine.config import TrainConfig

    def given(key: str, kind: type) -> Any:
        value = cfg.get(key)
        return kind(value) if value else None

    try:
        return TrainConfig(
            arch=cfg["arch"],
            head=cfg["head"],
            width=given("width", int),
            epochs=int(cfg["epochs"]),
            lr=given("learning_rate", float),
            lr_decay=given("lr_decay", float),
            batch_size=int(cfg["batch_size"]),
            patch_size=int(cfg["patch_size"]),
            augment=not cfg.get("no_augment", False),
            seed=int(cfg.get("seed") or 0),
            device="auto",
            num_workers=0,
            pretrained=cfg.get("pretrained") or None,
            recipe=cfg.get("recipe") or "default",
            stain_normalize=cfg.get("stain_normalize") or "none",
        )
    except MilsilError as exc:
        raise MilsilError(f"config: {exc}") from None


def dataset_records(dataset: dict[str, Any], dataset_dir: Path) -> tuple[list[Any], list[str]]:
    """BagRecords (absolute .npz paths) and class names of a stored dataset."""
    from milsil.data import BagRecord

    classes = list(dataset["class_names"])
    records = [
        BagRecord(
            path=str(dataset_dir / "bags" / f"{b['sha']}.npz"),
            label=classes.index(b["label"]),
            patient=b["patient"],
        )
        for b in dataset["bags"]
    ]
    return records, classes


def split_records(records: list[Any], cfg: dict[str, Any]) -> tuple[list[Any], list[Any]]:
    """Patient-level train/validation split per the config (fold of k, or a fraction)."""
    from milsil.data import patient_kfold, patient_split

    seed = int(cfg.get("seed") or 0)
    folds = int(cfg.get("folds") or 0)
    if folds > 1:
        return patient_kfold(records, k=folds, seed=seed)[int(cfg.get("fold") or 0)]
    return patient_split(records, test_fraction=float(cfg["validation_fraction"]), seed=seed)


def child_main(args: dict[str, Any], events: Any, stop: Any) -> None:
    """Entry point of the spawned training process (top-level so spawn can import it)."""
    os.umask(0o077)  # the job folder's files are owner-only, like the rest of the data dir
    tie_to_parent(int(args["server_pid"]))
    try:
        from milsil.engine.loop import train_model

        FolderLock(args["out_dir"]).acquire()
        dataset_dir = Path(args["dataset_dir"])
        records, classes = dataset_records(args["dataset"], dataset_dir)
        train, val = split_records(records, args["config"])
        config = train_config(args["config"])
        last_sent = [0.0]

        def progress(p: Any) -> None:
            now = time.monotonic()
            if getattr(p, "event", "step") == "step" and now - last_sent[0] < 0.25:
                return  # throttle step events; epoch/end always go through
            last_sent[0] = now
            events.put(("progress", p.to_dict()))

        result = train_model(
            config,
            train,
            val,
            classes,
            args["out_dir"],
            progress=progress,
            should_stop=stop.is_set,
            resume=True,
        )
        history = result.history[-1] if result.history else {}
        events.put(
            (
                "done",
                {
                    "stopped": bool(result.stopped),
                    "best_checkpoint": str(result.best_checkpoint),
                    "metrics": {k: v for k, v in history.items() if isinstance(v, (int, float))},
                },
            )
        )
    except MilsilError as exc:
        events.put(("error", _scrub(str(exc), args)))
    except BaseException as exc:  # noqa: BLE001 - report anything to the parent, then exit
        traceback.print_exc()
        text = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        events.put(("error", _scrub(f"{type(exc).__name__}: {text}", args)))


def _scrub(message: str, args: dict[str, Any]) -> str:
    """A job's error as clients see it: paths inside the data dir relative to it."""
    root = args.get("data_root")
    return message.replace(root.rstrip("/") + "/", "") if root else message
