"""What a training run does beside its steps: the per-epoch time split and bags/s in the
log, batches assembled ahead on a thread, checkpoints written in order on another, and
persistent workers that draw what the main process would."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import torch
from test_train import CLASSES, make_images

from milsil.engine.background import CheckpointWriter, Prefetch
from milsil.engine.config import TrainConfig
from milsil.engine.epoch import TrainBatches
from milsil.engine.loop import train_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_images(tmp_path_factory.mktemp("tiny"))


def _config(**kw) -> TrainConfig:
    base = dict(
        width=8, epochs=2, lr=1e-3, lr_decay=0.9, batch_size=2, patch_size=16, seed=3, device="cpu"
    )
    base.update(kw)
    return TrainConfig(**base)


def test_log_rows_say_bags_per_second_and_where_the_time_went(tiny, tmp_path):
    train, val = tiny[:6], tiny[6:]
    result = train_model(_config(), train, val, CLASSES, tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    for row in rows:
        timing = row["timing"]
        assert timing["bags"] == len(train)  # every training bag, once per epoch
        assert set(timing["seconds"]) == {"data", "step", "validation", "checkpoint", "other"}
        assert all(v >= 0 for v in timing["seconds"].values())
        assert timing["seconds"]["step"] > 0 and timing["seconds"]["validation"] > 0
        # the parts cannot add up to more than the epoch took
        assert sum(timing["seconds"].values()) <= row["epoch_seconds"] + 0.05
        assert timing["bags_per_second"] > 0
    # last.pt's history (what a resume rebuilds the log from) carries the same rows
    state = torch.load(result.last_checkpoint, weights_only=False)["training_state"]
    assert [h["timing"]["bags"] for h in state["history"]] == [len(train)] * 2


def test_workers_persist_and_draw_what_the_main_process_draws(tiny):
    """(epoch, index) items let persistent workers augment for the right epoch: every
    epoch's batches are equal with 0 and with 2 workers."""
    config = dict(augment=True, color_jitter=0.05, batch_size=3)
    main = TrainBatches(tiny, _config(num_workers=0, **config), (0.5,) * 3, (0.25,) * 3)
    workers = TrainBatches(tiny, _config(num_workers=2, **config), (0.5,) * 3, (0.25,) * 3)
    assert workers.loader.persistent_workers
    for epoch in range(3):
        a, steps = main.epoch(epoch)
        b, steps_b = workers.epoch(epoch)
        assert steps == steps_b
        for _ in range(steps):
            (bags_a, labels_a), (bags_b, labels_b) = next(a), next(b)
            assert torch.equal(bags_a, bags_b) and torch.equal(labels_a, labels_b)
    first, _ = main.epoch(0)
    again, _ = TrainBatches(tiny, _config(**config), (0.5,) * 3, (0.25,) * 3).epoch(0)
    assert torch.equal(next(first)[0], next(again)[0])  # epoch 0 again, as a fresh run draws it


def test_prefetch_keeps_order_raises_where_the_item_was_and_stops_on_close():
    assert list(Prefetch(iter(range(50)), depth=2)) == list(range(50))

    def failing():
        yield 1
        raise ValueError("bad bag")

    items = Prefetch(failing())
    assert next(items) == 1
    with pytest.raises(ValueError, match="bad bag"):
        next(items)

    produced = []

    def endless():
        i = 0
        while True:
            produced.append(i)
            yield i
            i += 1

    ahead = Prefetch(endless(), depth=2)
    assert next(ahead) == 0
    ahead.close()  # returns: the thread saw the stop while waiting for room
    assert not ahead._thread.is_alive()
    assert len(produced) <= 5  # it never ran more than the queue's depth ahead


class _Gate:
    """Pickling waits until ``release`` is set: holds a write in the middle."""

    def __init__(self, started: threading.Event, release: threading.Event) -> None:
        self.started, self.release = started, release

    def __reduce__(self):
        self.started.set()
        assert self.release.wait(10)
        return (int, (7,))


def test_checkpoint_writes_go_out_in_order_and_wait_returns_when_on_disk(tmp_path: Path):
    started, release = threading.Event(), threading.Event()
    writer = CheckpointWriter()
    writer.submit(tmp_path / "best.pt", {"gate": _Gate(started, release)})
    writer.submit(tmp_path / "last.pt", {"epoch": 1})
    assert started.wait(10)
    # best.pt is being written: last.pt, submitted after it, is not there yet
    assert not (tmp_path / "last.pt").exists() and not (tmp_path / "best.pt").exists()
    release.set()
    writer.wait()
    assert torch.load(tmp_path / "best.pt", weights_only=False) == {"gate": 7}
    assert torch.load(tmp_path / "last.pt", weights_only=False) == {"epoch": 1}
    writer.submit(tmp_path / "sub" / "x.pt", {"bad": threading.Lock()})  # cannot be pickled
    with pytest.raises(TypeError):
        writer.close()
