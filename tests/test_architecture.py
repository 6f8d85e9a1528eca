"""The layout docs/architecture.md describes, checked: who may import whom, no cycles,
module sizes (Python and Groovy), the installed top-level names, a torch-free client, one home for the halo."""

from __future__ import annotations

import ast
import importlib.metadata
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 600

# What each part may import (besides itself and the standard/third-party libraries).
# The order is the layering of docs/architecture.md; "milsil_server" is the server folder.
ALLOWED = {
    "milsil": {"milsil.errors"},
    "milsil.errors": set(),
    "milsil.atomic": set(),
    # Process-group helpers (torchrun), shared by training and folder batches.
    "milsil.distributed": {"milsil.errors"},
    "milsil.models": {"milsil.errors", "milsil.atomic"},
    "milsil.data": {"milsil.errors", "milsil.atomic", "milsil.models"},
    "milsil.inference": {"milsil.errors", "milsil.atomic", "milsil.models", "milsil.data"},
    "milsil.engine": {
        "milsil.errors",
        "milsil.atomic",
        "milsil.distributed",
        "milsil.models",
        "milsil.data",
    },
    "milsil.wsi": {
        "milsil.errors",
        "milsil.atomic",
        "milsil.distributed",
        "milsil.models",
        "milsil.data",
        "milsil.inference",
    },
    "milsil.experiments": {
        "milsil.errors",
        "milsil.atomic",
        "milsil.models",
        "milsil.data",
        "milsil.inference",
        "milsil.engine",
        "milsil.wsi",
    },
    # qupath_setup (`milsil qupath install`) writes jars and scripts through milsil.atomic.
    "milsil.client": {"milsil.errors", "milsil.atomic", "milsil.v1", "milsil.data"},
    "milsil.v1": set(),
    "milsil.cli": {"milsil", "milsil_server"},
    "milsil_server": {
        "milsil.errors",
        "milsil.atomic",
        "milsil.models",
        "milsil.data",
        "milsil.inference",
        "milsil.engine",
        "milsil.wsi",
        "milsil.v1",
    },
}


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted((ROOT / "milsil").rglob("*.py")) + sorted((ROOT / "server").rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        parts = list(rel.parts)
        if parts[0] == "server":
            parts[0] = "milsil_server"
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _imports(path: Path, name: str, is_package: bool) -> set[str]:
    """Every milsil/milsil_server module imported anywhere in the file (functions too)."""
    out = set()
    package = name if is_package else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")
                parent = parent[: len(parent) - (node.level - 1)]
                base = ".".join(parent + ([base] if base else []))
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)
    return {m for m in out if m.split(".")[0] in ("milsil", "milsil_server")}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        targets = _imports(path, name, path.name == "__init__.py")
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def _part(module: str) -> str:
    """The most specific ALLOWED key that contains the module."""
    best = ""
    for key in ALLOWED:
        if (module == key or module.startswith(key + ".")) and len(key) > len(best):
            best = key
    return best or module


def test_each_part_imports_only_what_the_architecture_allows():
    wrong = []
    for module, targets in _graph().items():
        if module.startswith("milsil.v1"):
            continue
        part = _part(module)
        if part == "milsil" and module != "milsil":
            wrong.append(f"{module} belongs to no part of the architecture")
            continue
        assert part in ALLOWED, f"{module} is in no part of the architecture"
        for target in targets:
            tpart = _part(target)
            if tpart == part or module == "milsil" or target == "milsil":
                continue
            ok = any(tpart == a or tpart.startswith(a + ".") for a in ALLOWED[part])
            if not ok:
                wrong.append(f"{module} -> {target}")
    assert not wrong, "imports the architecture does not allow:\n" + "\n".join(sorted(wrong))


def test_no_module_imports_another_in_a_loop():
    graph = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    # A package's __init__ re-exporting its own modules is not a loop between modules.
    real = [
        c
        for c in cycles
        if not any(
            a.startswith(b + ".") or b.startswith(a + ".") for a, b in zip(c, c[1:], strict=False)
        )
    ]
    assert not real, "import cycles:\n" + "\n".join(" -> ".join(c) for c in real)


def test_no_hand_written_module_is_too_long():
    long = {
        name: n
        for name, path in _modules().items()
        if not name.startswith("milsil.v1")
        and (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_no_groovy_file_is_too_long():
    """The QuPath scripts, their lib/ and the Groovy test harnesses keep the Python modules'
    size rule (the Java stand-ins under qupath_scripts/tests/stubs are not Groovy)."""
    paths = sorted((ROOT / "qupath_scripts").rglob("*.groovy"))
    assert paths, "no .groovy files found under qupath_scripts/"
    long = {
        str(path.relative_to(ROOT)): n
        for path in paths
        if (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"Groovy files over {MAX_LINES} lines: {long}"


def test_the_wheel_installs_no_bare_server_package():
    top = importlib.metadata.distribution("milsil").read_text("top_level.txt") or ""
    names = set(top.split())
    assert "server" not in names
    assert {"milsil", "milsil_server"} <= names


def test_importing_the_client_does_not_import_torch():
    code = "import sys, milsil.client; print('torch' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-I", "-c", code], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False"


def _halves_a_receptive_field(node: ast.AST) -> bool:
    if not (isinstance(node, ast.BinOp) and isinstance(node.op, ast.FloorDiv)):
        return False
    if not (isinstance(node.right, ast.Constant) and node.right.value == 2):
        return False
    text = ast.unparse(node.left)
    return "receptive_field" in text or text in ("rf", "self.rf")


def test_only_the_tiled_engine_derives_the_context_from_the_receptive_field():
    found = []
    for name, path in _modules().items():
        if name == "milsil.inference.tiling" or name.startswith("milsil.v1"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if _halves_a_receptive_field(node):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)}")
    for path in (ROOT / "qupath_scripts").rglob("*.groovy"):
        for k, line in enumerate(path.read_text().splitlines(), 1):
            if "receptive_field" in line and (
                "intdiv(2)" in line or "/ 2" in line or "// 2" in line
            ):
                found.append(f"{path.relative_to(ROOT)}:{k}: {line.strip()}")
    assert not found, "the halo is computed outside milsil.inference.tiling:\n" + "\n".join(found)
