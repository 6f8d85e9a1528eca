#!/usr/bin/env python
"""Regenerate the Python stubs and the FileDescriptorSet from ``proto/milsil/v1/*.proto``.

Usage (from anywhere)::

    python proto/generate.py            # writes milsil/v1/*_pb2*.py(i) and proto/milsil_v1.desc
    python proto/generate.py --out DIR  # writes the same tree under DIR (used by the staleness test)

The stubs are committed so that installing milsil needs no protoc; tests/test_proto_fresh.py
fails when they no longer match the .proto files. The descriptor set (with ``--include_imports``
and the standard ``grpc.health.v1`` service appended) is what the Groovy/QuPath client loads to
call the server without generated Java code.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
DESCRIPTOR_NAME = "milsil_v1.desc"


def proto_files() -> list[str]:
    """The .proto files, relative to ``proto/``, sorted so the output is reproducible."""
    return sorted(
        p.relative_to(PROTO_DIR).as_posix() for p in (PROTO_DIR / "milsil" / "v1").glob("*.proto")
    )


def generate(out_root: Path) -> list[Path]:
    """Run protoc (grpcio-tools) and write stubs + descriptor set under ``out_root``."""
    import grpc_tools
    from google.protobuf import descriptor_pb2
    from grpc_health.v1 import health_pb2
    from grpc_tools import protoc

    out_root = Path(out_root)
    (out_root / "milsil" / "v1").mkdir(parents=True, exist_ok=True)
    (out_root / "proto").mkdir(parents=True, exist_ok=True)
    desc_path = out_root / "proto" / DESCRIPTOR_NAME
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_DIR}",
        f"-I{well_known}",
        f"--python_out={out_root}",
        f"--grpc_python_out={out_root}",
        f"--pyi_out={out_root}",
        "--include_imports",
        f"--descriptor_set_out={desc_path}",
        *proto_files(),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed (see messages above)")

    # Append grpc.health.v1 so one file describes every service the server exposes.
    fds = descriptor_pb2.FileDescriptorSet.FromString(desc_path.read_bytes())
    if not any(f.name == health_pb2.DESCRIPTOR.name for f in fds.file):
        health = fds.file.add()
        health_pb2.DESCRIPTOR.CopyToProto(health)
    desc_path.write_bytes(fds.SerializeToString(deterministic=True))
    return sorted((out_root / "milsil" / "v1").glob("*_pb2*")) + [desc_path]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--out", type=Path, default=ROOT, help="root to write under (default: the repository)"
    )
    args = parser.parse_args(argv)
    for path in generate(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
