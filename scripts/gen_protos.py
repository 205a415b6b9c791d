"""Regenerate the committed gRPC/protobuf code from protos/.

The proto tree mirrors the Python package `sessionvault.v1`, so the generated
files sit beside their .proto sources and their imports need no rewriting.
Run from anywhere: `python scripts/gen_protos.py [OUT_DIR]` (default: in place).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import grpc_tools
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"


def generate(out: Path = PROTOS) -> int:
    """Run protoc for every .proto under protos/, writing the Python into `out`."""
    sources = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    plugins = []
    for name in ("protoc-gen-mypy", "protoc-gen-mypy_grpc"):
        exe = shutil.which(name) or str(Path(sys.executable).parent / name)
        plugins.append(f"--plugin={name}={exe}")
    args = [
        "grpc_tools.protoc",
        f"-I{PROTOS}",
        f"-I{Path(grpc_tools.__file__).parent / '_proto'}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_out={out}",
        f"--mypy_grpc_out={out}",
        *plugins,
        *sources,
    ]
    rc = protoc.main(args)
    if rc != 0:
        print(f"protoc failed with exit code {rc}", file=sys.stderr)
    return rc


if __name__ == "__main__":
    raise SystemExit(generate(Path(sys.argv[1]) if len(sys.argv) > 1 else PROTOS))
