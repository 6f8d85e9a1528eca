"""Safe file I/O: atomic writes (a crash leaves the old file or the new one, never half of
one) and content digests.

Every checkpoint, store file, JSON record and output image goes through :func:`atomic_write`
(temporary file in the same folder, flushed and fsynced, then renamed over the target).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Call ``write(fh)`` on a temporary file beside ``path``, then rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
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


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda fh: fh.write(data))


def atomic_copy(src: str | Path, dst: str | Path) -> Path:
    with open(src, "rb") as inp:
        return atomic_write(dst, lambda out: shutil.copyfileobj(inp, out, 1 << 20))


def write_json_atomic(path: str | Path, obj: Any, indent: int = 2) -> Path:
    text = json.dumps(obj, indent=indent, sort_keys=True) + "\n"
    return atomic_write(path, lambda fh: fh.write(text.encode()))


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's content, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
