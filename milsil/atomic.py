"""Safe file I/O: atomic writes (a crash leaves the old file or the new one, never half of
one) and content digests.

Every checkpoint, store file, JSON record and output image goes through :func:`atomic_write`
(temporary file in the same folder, flushed and fsynced, then renamed over the target).

Modes: a file written here gets the mode a plain ``open(path, "w")`` gives a new file
(``0666 & ~umask``, and a folder's default ACL), so scripts installed into QuPath's user
directory or a GeoJSON written for a colleague can be read by whoever the user's umask
lets read them. Owner-only data (the server's store: patient ids, labels, models) asks
for it with ``private=True``: 0600 files, missing folders made 0700, whatever the umask.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

# Flags of the temporary file: new (never someone else's file or link), write-only, not
# inherited by child processes; O_BINARY only exists (and matters) on Windows.
_TMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
_TMP_FLAGS |= getattr(os, "O_BINARY", 0)


def _temporary_beside(path: Path, private: bool) -> tuple[int, Path]:
    """A new temporary file in ``path``'s folder -> ``(fd, its path)``.

    Not :func:`tempfile.mkstemp`: that makes every file 0600 whatever the umask. Here the
    kernel applies the umask (and a default ACL) to 0666, as it does for ``open()``; a
    private file is then set to exactly 0600 by its descriptor, before any byte is written.
    """
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            fd = os.open(tmp, _TMP_FLAGS, 0o600 if private else 0o666)
        except FileExistsError:
            continue
        if private and hasattr(os, "fchmod"):
            try:
                os.fchmod(fd, 0o600)
            except BaseException:
                os.close(fd)
                tmp.unlink(missing_ok=True)
                raise
        return fd, tmp
    raise FileExistsError(f"no free temporary name beside {path}")


def _make_folders(folder: Path, private: bool) -> None:
    """``folder`` and its missing parents; private ones 0700 (``Path.mkdir`` gives only
    the last one its ``mode``)."""
    if not private:
        folder.mkdir(parents=True, exist_ok=True)
        return
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    for each in reversed(missing):
        each.mkdir(mode=0o700, exist_ok=True)


def atomic_write(
    path: str | Path, write: Callable[[IO[bytes]], None], *, private: bool = False
) -> Path:
    """Call ``write(fh)`` on a temporary file beside ``path``, then rename it to ``path``.

    The file's mode is the one ``open()`` would give a new file (the umask's), or 0600 with
    ``private`` (missing folders then 0700): see the module's docstring.
    """
    path = Path(path)
    _make_folders(path.parent, private)
    fd, tmp = _temporary_beside(path, private)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: str | Path, data: bytes, *, private: bool = False) -> Path:
    return atomic_write(path, lambda fh: fh.write(data), private=private)


def atomic_copy(src: str | Path, dst: str | Path, *, private: bool = False) -> Path:
    """``src``'s bytes to ``dst`` (``dst``'s mode as :func:`atomic_write` gives it, not
    ``src``'s)."""
    with open(src, "rb") as inp:
        return atomic_write(dst, lambda out: shutil.copyfileobj(inp, out, 1 << 20), private=private)


def write_json_atomic(
    path: str | Path, obj: Any, indent: int = 2, *, private: bool = False
) -> Path:
    text = json.dumps(obj, indent=indent, sort_keys=True) + "\n"
    return atomic_write(path, lambda fh: fh.write(text.encode()), private=private)


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's content, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
