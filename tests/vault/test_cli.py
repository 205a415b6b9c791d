"""The vault as operators run it: a real process, grpcurl, SIGTERM, config errors."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ADMIN = "readme-admin-token-0123456789"
GRPCURL = shutil.which("grpcurl") or str(Path(sys.executable).parent / "grpcurl")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_vault(tmp_path: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("VAULT_")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "vault_service", *args],
        cwd=tmp_path,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("env", "args", "message"),
    [
        ({}, [], "no master key"),
        ({"VAULT_MASTER_KEY": "00" * 32}, [], "weak"),
        ({"VAULT_MASTER_KEY": "short"}, [], "32 bytes"),
        ({"VAULT_MASTER_KEY_FILE": "/nonexistent/key"}, [], "cannot read"),
        ({"VAULT_MASTER_KEY": os.urandom(32).hex(), "VAULT_ADMIN_TOKEN": "short"}, [], "shorter than 16"),
        (
            {"VAULT_MASTER_KEY": os.urandom(32).hex()},
            ["--database-url", "mysql+pymysql://root@127.0.0.1:1/x"],
            "database",
        ),
    ],
)
def test_config_errors_are_one_line(tmp_path: Path, env: dict, args: list[str], message: str) -> None:
    result = _run_vault(tmp_path, *args, "--migrate-only", env=env)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], result.stderr


def test_help_documents_every_option(tmp_path: Path) -> None:
    result = _run_vault(tmp_path, "--help")
    assert result.returncode == 0
    for option in ("--listen", "--database-url", "--dev", "VAULT_MASTER_KEY", "VAULT_ADMIN_TOKEN", "VAULT_NODE_TOKEN"):
        assert option in result.stdout


def _grpcurl(port: int, *args: str, flags: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """grpcurl [flags] address args..., as in the README."""
    return subprocess.run(
        [GRPCURL, "-plaintext", *flags, f"127.0.0.1:{port}", *args],
        capture_output=True,
        text=True,
        timeout=30,
    )


def _wait_serving(proc: subprocess.Popen, port: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        if _grpcurl(port, "grpc.health.v1.Health/Check").returncode == 0:
            return
        time.sleep(0.1)  # polling the real process's health endpoint
    raise AssertionError("vault did not start")


def test_dev_vault_answers_grpcurl_and_stops_on_sigterm(tmp_path: Path) -> None:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("VAULT_")}
    env["VAULT_ADMIN_TOKEN"] = ADMIN
    proc = subprocess.Popen(
        [sys.executable, "-m", "vault_service", "--dev", "--listen", f"127.0.0.1:{port}"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_serving(proc, port)
        listed = _grpcurl(port, "list").stdout.split()
        assert {"sessionvault.v1.SyncService", "sessionvault.v1.AdminService", "grpc.health.v1.Health"} <= set(listed)
        described = _grpcurl(port, "describe", "sessionvault.v1.SyncService").stdout
        assert (
            "rpc Sync ( stream .sessionvault.v1.SyncRequest ) returns ( stream .sessionvault.v1.SyncResponse )"
            in described
        )
        assert json.loads(_grpcurl(port, "grpc.health.v1.Health/Check").stdout)["status"] == "SERVING"
        denied = _grpcurl(port, "sessionvault.v1.AdminService/ListSessions")
        assert denied.returncode != 0 and "Unauthenticated" in denied.stderr and "MISSING_TOKEN" in denied.stderr
        ok = _grpcurl(port, "sessionvault.v1.AdminService/ListSessions", flags=("-H", f"authorization: Bearer {ADMIN}"))
        assert ok.returncode == 0, ok.stderr
        assert (tmp_path / "vault.db").exists()  # the embedded SQLite default
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "DEV MODE" in err and "stopped" in err
