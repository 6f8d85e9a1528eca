"""What a run records about itself: JSON-safe values, the versions it ran with, a summary
of its data, and the per-epoch log."""

from __future__ import annotations

import json
import math
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from milsil import atomic


def clean(value: Any) -> Any:
    """JSON cannot hold NaN: write null instead (and plain floats for numpy scalars)."""
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return None if not math.isfinite(float(value)) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, (Path, str)):
        return str(value)  # also plain str from str subclasses (torch's TorchVersion)
    return value


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON (NaN-free) so that readers never see a half-written file."""
    atomic.write_json_atomic(path, clean(obj))


def append_log(path: Path, row: dict[str, Any]) -> None:
    """One line of ``log.jsonl``."""
    with open(path, "a") as fh:
        fh.write(json.dumps(clean(row), sort_keys=True) + "\n")


def rewrite_log(path: Path, history: list[dict[str, Any]]) -> None:
    """On resume the log is rebuilt from the checkpoint's history, so an epoch logged but
    not checkpointed before a crash does not appear twice."""
    text = "".join(json.dumps(clean(row), sort_keys=True) + "\n" for row in history)
    atomic.atomic_write_bytes(path, text.encode())


def versions() -> dict[str, str]:
    import milsil

    out = {
        "milsil": milsil.__version__,
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "numpy": str(np.__version__),
        "platform": platform.platform(),
    }
    if torch.cuda.is_available():
        out["cuda"] = str(torch.version.cuda)
        out["gpu"] = torch.cuda.get_device_name(0)
    return out


def data_summary(records: Sequence[Any], class_names: Sequence[str]) -> dict[str, Any]:
    """Bags, patients and bags per class: enough to tell two datasets apart in provenance."""
    counts = {name: 0 for name in class_names}
    for r in records:
        counts[class_names[r.label]] += 1
    return {
        "bags": len(records),
        "patients": len({r.patient for r in records}),
        "class_counts": counts,
    }
