"""File modes under umask 022 and 077: what milsil writes for its user takes the mode a
plain ``open()`` gives (others may read it where the umask says so); what the server keeps
in its data dir is owner-only (0700 folders, 0600 files) whatever the umask. The install
and measure-objects outputs are checked in their own test files."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
from conftest import OPEN_MODE
from server_support import tiny_model

from milsil.atomic import atomic_copy, atomic_write_bytes, write_json_atomic
from milsil.engine.provenance import rewrite_log
from milsil.models import save_checkpoint


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_atomic_writes_take_the_mode_open_gives(tmp_path, umask):
    expected = OPEN_MODE[umask]
    plain = tmp_path / "plain.txt"
    with open(plain, "w") as fh:
        fh.write("x")
    assert _mode(plain) == expected  # the rule, as the kernel applies it
    written = atomic_write_bytes(tmp_path / "a" / "b.bin", b"data")
    assert _mode(written) == expected
    assert _mode(tmp_path / "a") == {0o022: 0o755, 0o077: 0o700}[umask]  # as mkdir gives it
    assert _mode(write_json_atomic(tmp_path / "c.json", {"k": 1})) == expected
    assert _mode(atomic_copy(written, tmp_path / "copy.bin")) == expected
    rewrite_log(tmp_path / "log.jsonl", [{"epoch": 1}])  # a training run's log, rebuilt
    assert _mode(tmp_path / "log.jsonl") == expected
    assert _mode(save_checkpoint(tiny_model(width=4), tmp_path / "m.pt")) == expected
    assert sorted(p.name for p in tmp_path.rglob(".*")) == []  # no temporary file left


def test_private_writes_are_owner_only_whatever_the_umask(tmp_path, umask):
    written = atomic_write_bytes(tmp_path / "new" / "deeper" / "x.bin", b"data", private=True)
    assert _mode(written) == 0o600
    assert _mode(tmp_path / "new") == 0o700 and _mode(tmp_path / "new" / "deeper") == 0o700
    source = tmp_path / "public.bin"
    source.write_bytes(b"abc")
    os.chmod(source, 0o644)
    copied = atomic_copy(source, tmp_path / "new" / "copy.bin", private=True)
    assert _mode(copied) == 0o600 and copied.read_bytes() == b"abc"


def test_the_store_is_owner_only_without_the_servers_umask(tmp_path, umask):
    """The store asks for private files itself: a server built in-process (the demo, the
    tests) does not pass through ``milsil serve``'s umask 077."""
    from milsil_server.store import Store

    store = Store(tmp_path / "data")
    try:
        writer = store.dataset_writer()
        tiles = np.zeros((2, 8, 8, 3), np.uint8)
        writer.add_bag("tumor", "p1", tiles)
        bags = list((writer.folder / "bags").iterdir())
        checkpoint = save_checkpoint(tiny_model(width=4), tmp_path / "tiny.pt")
        store.register_model(checkpoint, "tiny")
        model = store.model_path("tiny")
    finally:
        store.close()
    assert _mode(tmp_path / "data") == 0o700
    assert bags and all(_mode(b) == 0o600 for b in bags)
    assert _mode(model) == 0o600
    assert _mode(tmp_path / "data" / "milsil.db") == 0o600
