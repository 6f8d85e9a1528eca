"""Where the server may read and write: slide roots, the output root, and nothing else.

Every path a client names passes through here, so the confinement rules (symlinks and
``..`` resolved first, nothing outside the configured roots) exist once.
"""

from __future__ import annotations

from pathlib import Path

from milsil.errors import MilsilError, NotFoundError


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
