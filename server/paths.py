"""Where the server may read and write: slide roots, the output root, and nothing else.

Every path a client names passes through here, so the confinement rules (symlinks and
``..`` resolved first, nothing outside the configured roots) exist once.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from milsil.errors import MilsilError, NotFoundError
from milsil_server.errors import FailedPrecondition


def resolve_under_root(root: str | Path, path: str | Path) -> Path:
    """``path`` (relative to ``root``, or absolute) if it lies inside ``root``, else refuse.

    For servers that read slides themselves: symlinks and ``..`` are resolved first, so
    nothing outside the configured slide root can be named.
    """
    root_r = Path(root).resolve()
    p = Path(path)
    shown = _shown(str(path))
    candidate = (p if p.is_absolute() else root_r / p).resolve()
    if candidate != root_r and root_r not in candidate.parents:
        raise MilsilError(f"slide path {shown} is outside the slide root; give a path under it")
    if not candidate.exists():
        raise NotFoundError(f"slide not found under the slide root: {shown}")
    return candidate


# Linux limits (NAME_MAX, PATH_MAX); a longer name is refused before any system call.
MAX_NAME_BYTES = 255
MAX_PATH_BYTES = 4095


def _shown(path: str) -> str:
    """A client's path for a message: quoted, and cut short when long."""
    return repr(path) if len(path) <= 80 else repr(path[:60]) + f"... ({len(path)} characters)"


def check_path_text(path: str, field: str) -> None:
    """Refuse NUL characters and names or paths longer than the file system allows."""
    if "\x00" in path:
        raise MilsilError(f"{field} must not contain NUL characters")
    encoded = path.encode("utf-8", "surrogateescape")
    if len(encoded) > MAX_PATH_BYTES:
        raise MilsilError(
            f"{field} is {len(encoded)} bytes long; at most {MAX_PATH_BYTES} bytes are allowed"
        )
    for part in path.replace("\\", "/").split("/"):
        size = len(part.encode("utf-8", "surrogateescape"))
        if size > MAX_NAME_BYTES:
            raise MilsilError(
                f"{field} has a file or folder name of {size} bytes ({_shown(part)}); "
                f"at most {MAX_NAME_BYTES} bytes per name are allowed"
            )


def path_error(field: str, path: str, exc: OSError) -> MilsilError:
    """An OSError met while handling a client's path, as a one-line INVALID_ARGUMENT that
    names the field and never the server's folders."""
    reason = os.strerror(exc.errno) if exc.errno else type(exc).__name__
    if exc.errno == errno.ENOENT:
        return NotFoundError(f"{field} {_shown(path)}: {reason.lower()}")
    return MilsilError(f"{field} {_shown(path)} cannot be used: {reason.lower()}")


TIFF_SUFFIXES = (".tif", ".tiff")


class SlidePaths:
    """The folders a server reads slides from (``slide_roots``) and writes TIFFs to.

    ``resolve_slide`` and ``tiff_target`` are the only ways a client-named path reaches
    the file system; their messages name the request field (``config.path``,
    ``config.tiff_path``).
    """

    def __init__(self, slide_roots: Sequence[str | Path], output_root: str | Path) -> None:
        self.slide_roots = [Path(r).expanduser().resolve() for r in slide_roots]
        self.output_root = Path(output_root).expanduser().resolve()

    def resolve_slide(self, path: str, field: str = "config.path") -> tuple[Path, Path]:
        """The slide file inside a slide root, and its path relative to that root."""
        if not self.slide_roots:
            raise FailedPrecondition(
                "this server reads no slides itself: start it with --slide-root DIR "
                "(repeatable) to allow AnnotateSlide and SlideHeatmap"
            )
        if not path:
            raise MilsilError(f"{field} is required: a slide file under the server's slide root")
        check_path_text(path, field)
        missing: NotFoundError | None = None
        for root in self.slide_roots:
            try:
                found = resolve_under_root(root, path)
                if found.is_dir():
                    raise MilsilError(f"{field} {_shown(path)} is a folder; give a slide file")
            except NotFoundError as exc:
                missing = missing or exc
                continue
            except OSError as exc:  # too long, a file used as a folder, no permission, ...
                raise path_error(field, path, exc) from None
            except MilsilError as exc:
                if "is a folder" in str(exc):
                    raise
                continue  # outside this root; maybe inside another
            return found, found.relative_to(root)
        if missing is not None:
            raise NotFoundError(f"{field}: {missing}")
        raise MilsilError(
            f"{field} {_shown(path)} is outside the server's slide root ('..' and symbolic "
            "links included); give a path relative to the slide root"
        )

    def tiff_target(self, name: str, field: str = "config.tiff_path") -> tuple[Path, str]:
        """Absolute TIFF path under the output root, and the same relative to it (POSIX)."""
        check_path_text(name, field)
        shown = _shown(name)
        pure = PurePosixPath(name.replace("\\", "/"))
        if pure.is_absolute() or ".." in pure.parts:
            raise MilsilError(
                f"{field} {shown} must be a relative path without '..' "
                "(it is written under the server's output root)"
            )
        if pure.suffix.lower() not in TIFF_SUFFIXES:
            raise MilsilError(f"{field} {shown} must end in .tif or .tiff")
        try:
            target = (self.output_root / pure).resolve()
            if self.output_root not in target.parents:
                raise MilsilError(f"{field} {shown} leads outside the server's output root")
            if target.is_dir():
                raise MilsilError(f"{field} {shown} is a folder on the server")
            for parent in target.relative_to(self.output_root).parents:
                folder = self.output_root / parent
                if folder.exists() and not folder.is_dir():
                    raise MilsilError(
                        f"{field} {shown}: {parent.as_posix()!r} is a file on the "
                        "server, not a folder"
                    )
        except OSError as exc:
            raise path_error(field, name, exc) from None
        return target, target.relative_to(self.output_root).as_posix()
