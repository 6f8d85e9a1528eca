"""Where the server may read and write: slide roots, the output root, and nothing else.

Every path a client names passes through here, so the confinement rules (symlinks and
``..`` resolved first, nothing outside the configured roots) exist once.
"""

from __future__ import annotations

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
    candidate = (p if p.is_absolute() else root_r / p).resolve()
    if candidate != root_r and root_r not in candidate.parents:
        raise MilsilError(
            f"slide path {str(path)!r} is outside the slide root; give a path under it"
        )
    if not candidate.exists():
        raise NotFoundError(f"slide not found under the slide root: {path}")
    return candidate


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

    def resolve_slide(self, path: str) -> tuple[Path, Path]:
        """The slide file inside a slide root, and its path relative to that root."""
        if not self.slide_roots:
            raise FailedPrecondition(
                "this server reads no slides itself: start it with --slide-root DIR "
                "(repeatable) to allow AnnotateSlide and SlideHeatmap"
            )
        if not path:
            raise MilsilError("config.path is required: a slide file under the server's slide root")
        if "\x00" in path:
            raise MilsilError("config.path must not contain NUL characters")
        missing: NotFoundError | None = None
        for root in self.slide_roots:
            try:
                found = resolve_under_root(root, path)
            except NotFoundError as exc:
                missing = missing or exc
                continue
            except MilsilError:
                continue  # outside this root; maybe inside another
            if found.is_dir():
                raise MilsilError(f"config.path {path!r} is a folder; give a slide file")
            return found, found.relative_to(root)
        if missing is not None:
            raise NotFoundError(f"config.path: {missing}")
        raise MilsilError(
            f"config.path {path!r} is outside the server's slide root ('..' and symbolic "
            "links included); give a path relative to the slide root"
        )

    def tiff_target(self, name: str) -> tuple[Path, str]:
        """Absolute TIFF path under the output root, and the same relative to it (POSIX)."""
        pure = PurePosixPath(name.replace("\\", "/"))
        if pure.is_absolute() or ".." in pure.parts or "\x00" in name:
            raise MilsilError(
                f"config.tiff_path {name!r} must be a relative path without '..' "
                "(it is written under the server's output root)"
            )
        if pure.suffix.lower() not in TIFF_SUFFIXES:
            raise MilsilError(f"config.tiff_path {name!r} must end in .tif or .tiff")
        target = (self.output_root / pure).resolve()
        if self.output_root not in target.parents:
            raise MilsilError(f"config.tiff_path {name!r} leads outside the server's output root")
        if target.is_dir():
            raise MilsilError(f"config.tiff_path {name!r} is a folder on the server")
        return target, target.relative_to(self.output_root).as_posix()
