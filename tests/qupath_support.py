"""Shared plumbing of the QuPath-script tests (test_qupath_scripts.py, test_classify_cells.py).

qupath_scripts/tests/run_qupath.groovy runs scripts against the QuPath stand-ins from a
spec (images, objects, runs) and writes, per run, what the script printed and every
image's objects afterwards. Here: the runtimes (``groovy_env``), starting that runner,
reading its results back, and finding things in the dumped image states.
"""

from __future__ import annotations

import importlib.util
import json
import re
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import shapely
from shapely.geometry import Polygon

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "qupath_scripts"
if "groovy_env" not in sys.modules:  # qupath_scripts/tools is no package: load it by path
    _spec = importlib.util.spec_from_file_location(
        "groovy_env", SCRIPTS / "tools" / "groovy_env.py"
    )
    _module = importlib.util.module_from_spec(_spec)
    sys.modules["groovy_env"] = _module
    _spec.loader.exec_module(_module)
groovy_env = sys.modules["groovy_env"]

RUNTIMES = ("groovy2.4", "groovy4")
# The one line a failing script prints.
ONE_LINE = re.compile(r"^milsil: [A-Z_]+: \S.*$")
# The line a script prints once per run when its model carries no training statistics
# (issue 20: qupath_scripts/lib/MilsilTrust.groovy), as the tests' tiny models do.
NO_STATISTICS = re.compile(
    r"milsil: .+: models/\S+ carries no training statistics \(trained before milsil recorded "
    r'them\): inputs unlike the training data are not detected and no "milsil OOD score" is added'
)


def start_runner(runtime, spec: dict, out: Path, stubs: Path) -> subprocess.Popen:
    """Write ``spec`` to ``out/spec.json`` and start run_qupath.groovy on it (not waiting)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "spec.json").write_text(json.dumps(spec))
    return runtime.start(
        SCRIPTS / "tests" / "run_qupath.groovy",
        [str(out / "spec.json")],
        out / "runner.log",
        extra_cp=[stubs],
    )


def runner_results(proc: subprocess.Popen, out: Path, spec: dict, timeout: float) -> dict:
    """Wait for the runner; ``{"logs": {run id: text}, "states": {run id | "initial": state}}``."""
    try:
        proc.wait(timeout=timeout)
    except Exception:
        proc.kill()
        raise
    output = (out / "runner.log").read_text()
    assert proc.returncode == 0 and "DONE" in output, output[-8000:]
    logs = {r["id"]: (out / f"{r['id']}.log").read_text() for r in spec["runs"]}
    states = {
        r["id"]: json.loads((out / f"{r['id']}.state.json").read_text()) for r in spec["runs"]
    }
    states["initial"] = json.loads((out / "initial.state.json").read_text())
    return {"logs": logs, "states": states}


def launch_runners(base: Path, stubs: Path, spec_for: Callable[[Path], dict]) -> dict:
    """One runner per runtime, all started at once, each on ``spec_for(out)`` with its own
    ``out`` folder under ``base``: runtime name -> ``(process, out, spec)``, or the reason
    the runtime is missing (a string, for :func:`ran_results`)."""
    procs: dict = {}
    for name in RUNTIMES:
        runtime = groovy_env.available(name)
        if isinstance(runtime, str):
            procs[name] = runtime
            continue
        out = base / f"out_{name}"
        spec = spec_for(out)
        procs[name] = (start_runner(runtime, spec, out, stubs), out, spec)
    return procs


def ran_results(entry, timeout: float = 400) -> dict:
    """One runtime's results from :func:`launch_runners` (plus ``out``); skip, or fail when
    CI is set, when the runtime is missing."""
    if isinstance(entry, str):
        groovy_env.missing(entry)
    proc, out, spec = entry
    return {**runner_results(proc, out, spec, timeout=timeout), "out": out}


def runner_fixtures(spec_for: Callable[[dict, Path], dict]) -> tuple:
    """The module fixtures ``launched`` (both runtimes' runners, each on
    ``spec_for(world, out)``, started at once and stopped at the end) and ``ran`` (one
    runtime's results, per runtime) of a script test whose ``world`` fixture has ``base``
    and ``stubs``; a module takes them as ``launched, ran = runner_fixtures(_spec)``."""

    @pytest.fixture(scope="module", name="launched")
    def launched(world):
        procs = launch_runners(world["base"], world["stubs"], lambda out: spec_for(world, out))
        yield procs
        stop_runners(procs)

    @pytest.fixture(scope="module", name="ran", params=RUNTIMES)
    def ran(request, launched):
        return ran_results(launched[request.param])

    return launched, ran


def stop_runners(procs: dict) -> None:
    """Kill the runners still running (a failed test must not leave JVMs behind)."""
    for entry in procs.values():
        if not isinstance(entry, str) and entry[0].poll() is None:
            entry[0].kill()
            entry[0].wait()


def image_state(state: list, name: str) -> dict:
    """One image's dump (objects, change count) from a run's state."""
    return next(s for s in state if s["image"] == name)


def find(objects: list, name: str) -> dict | None:
    """The object called ``name`` anywhere below ``objects``."""
    for o in objects:
        if o.get("name") == name:
            return o
        found = find(o["children"], name) if o["children"] else None
        if found:
            return found
    return None


def polygon(obj: dict) -> shapely.Geometry:
    """The object's ROI from its rings (outer and holes, even-odd), as a shapely geometry."""
    geom = None
    for ring in obj["rings"]:
        p = Polygon(ring).buffer(0)
        geom = p if geom is None else geom.symmetric_difference(p)
    return geom


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
