"""The committed stubs and descriptor set must match the .proto files (regenerate: proto/generate.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _load_generator():
    spec = importlib.util.spec_from_file_location(
        "milsil_proto_generate", ROOT / "proto" / "generate.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_stubs_are_fresh(tmp_path: Path) -> None:
    generated = _load_generator().generate(tmp_path)
    assert generated, "generator produced nothing"
    stale = []
    for path in generated:
        rel = path.relative_to(tmp_path)
        committed = ROOT / rel
        if not committed.is_file() or committed.read_bytes() != path.read_bytes():
            stale.append(str(rel))
    extra = {p.name for p in (ROOT / "milsil" / "v1").glob("*_pb2*")} - {p.name for p in generated}
    assert not stale, f"stale generated files {stale}: run `python proto/generate.py`"
    assert not extra, f"generated files without a .proto: {sorted(extra)}"


def test_descriptor_set_describes_every_service() -> None:
    from google.protobuf import descriptor_pb2

    fds = descriptor_pb2.FileDescriptorSet.FromString(
        (ROOT / "proto" / "milsil_v1.desc").read_bytes()
    )
    services = {
        f"{f.package}.{s.name}": [m.name for m in s.method] for f in fds.file for s in f.service
    }
    assert services["milsil.v1.ModelService"] == [
        "ListModels",
        "GetModel",
        "DeleteModel",
        "ExportModel",
        "ImportModel",
    ]
    assert services["milsil.v1.InferenceService"] == [
        "ClassifyBag",
        "Heatmap",
        "Annotate",
        "AnnotateSlide",
        "SlideHeatmap",
        "MeasureObjects",
    ]
    assert services["milsil.v1.TrainingService"] == [
        "UploadDataset",
        "StartTraining",
        "GetJob",
        "ListJobs",
        "CancelJob",
        "WatchJob",
    ]
    assert "grpc.health.v1.Health" in services
    names = {f.name for f in fds.file}
    assert {"google/protobuf/timestamp.proto", "google/protobuf/empty.proto"} <= names


def test_every_field_is_documented() -> None:
    """Each message field and RPC in our .proto files carries a comment (AIP: document everything)."""
    from google.protobuf import descriptor_pb2

    from milsil.v1 import common_pb2  # noqa: F401  (import registers the file)

    fds = descriptor_pb2.FileDescriptorSet.FromString(
        (ROOT / "proto" / "milsil_v1.desc").read_bytes()
    )
    assert any(f.package == "milsil.v1" for f in fds.file)
    undocumented = []
    for proto in sorted((ROOT / "proto" / "milsil" / "v1").glob("*.proto")):
        lines = proto.read_text().splitlines()
        for i, line in enumerate(lines):
            s = line.strip()
            is_field = s.endswith(";") and "=" in s and not s.startswith(("option", "//", "syntax"))
            is_rpc = s.startswith("rpc ")
            if (is_field or is_rpc) and not lines[i - 1].strip().startswith("//"):
                undocumented.append(f"{proto.name}:{i + 1}: {s}")
    assert not undocumented, "undocumented fields/RPCs:\n" + "\n".join(undocumented)
