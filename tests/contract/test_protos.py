"""The committed gencode is what the protos generate, and the protos pass buf lint."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROTOS = ROOT / "protos"
GENERATED = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")


def test_regeneration_gives_no_diff(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_protos.py"), str(tmp_path)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    fresh = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.name.endswith(GENERATED)}
    committed = {p.relative_to(PROTOS): p.read_bytes() for p in PROTOS.rglob("*") if p.name.endswith(GENERATED)}
    assert fresh.keys() == committed.keys()
    stale = [str(name) for name in fresh if fresh[name] != committed[name]]
    assert not stale, f"run scripts/gen_protos.py and commit: {stale}"


def _buf() -> str | None:
    local = ROOT / ".tools" / "node_modules" / ".bin" / "buf"
    return str(local) if local.exists() else shutil.which("buf")


def test_buf_lint_standard() -> None:
    buf = _buf()
    if buf is None:  # scripts/test.sh installs it; only a bare `pytest` run lacks it
        pytest.fail("buf is not installed: run `npm install --no-save @bufbuild/buf@1.75.0` (scripts/test.sh does)")
    result = subprocess.run([buf, "lint"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_rpc_and_field_is_documented() -> None:
    """Comments are the contract's documentation for other languages: none may be missing."""
    for proto in PROTOS.rglob("*.proto"):
        lines = proto.read_text().splitlines()
        for i, line in enumerate(lines):
            stripped = line.strip()
            is_decl = stripped.startswith(("rpc ", "message ", "service ", "enum ")) or (
                "=" in stripped and stripped.endswith(";") and not stripped.startswith(("option", "syntax", "//"))
            )
            if is_decl and not stripped.startswith("oneof"):
                previous = lines[i - 1].strip()
                assert (
                    previous.startswith("//")
                    or stripped.endswith("_UNSPECIFIED = 0;")
                    or "{}" in stripped
                    or (previous.endswith("{") and "oneof" in previous)
                ), f"{proto.name}:{i + 1} undocumented: {stripped}"
