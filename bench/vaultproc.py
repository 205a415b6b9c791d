"""The vault as a subprocess (`python -m vault_service`) on loopback.

A separate process, so the benchmark client and the vault do not share a GIL
(on 2 cores an in-process server would be charged for the client's Python
work and vice versa), and so the vault's memory can be read from /proc.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import socket
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sessionvault.v1 import sync_service_pb2_grpc

NODE_TOKEN = "bench-node-token-" + secrets.token_hex(8)
ADMIN_TOKEN = "bench-admin-token-" + secrets.token_hex(8)
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def auth() -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {NODE_TOKEN}"),)


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


@dataclass
class VaultProcess:
    proc: asyncio.subprocess.Process
    address: str
    channel: grpc.aio.Channel
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def sync(self) -> sync_service_pb2_grpc.SyncServiceStub:
        return sync_service_pb2_grpc.SyncServiceStub(self.channel)

    def rss_kib(self) -> int:
        return _status_kib(self.pid, "VmRSS")

    def peak_rss_kib(self) -> int:
        return _status_kib(self.pid, "VmHWM")

    def reset_peak_rss(self) -> None:
        """Start a new peak-RSS measurement (Linux clear_refs 5 resets VmHWM to VmRSS)."""
        Path(f"/proc/{self.pid}/clear_refs").write_text("5")


def _env(database_url: str, address: str) -> dict[str, str]:
    return {
        **os.environ,
        "VAULT_DATABASE_URL": database_url,
        "VAULT_LISTEN": address,
        "VAULT_MASTER_KEY": secrets.token_bytes(32).hex(),
        "VAULT_NODE_TOKEN": NODE_TOKEN,
        "VAULT_ADMIN_TOKEN": ADMIN_TOKEN,
        "VAULT_LOG_LEVEL": "WARNING",
    }


async def _serving(channel: grpc.aio.Channel) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    response = await stub.Check(health_pb2.HealthCheckRequest(), wait_for_ready=True, timeout=START_TIMEOUT_S)
    if response.status != health_pb2.HealthCheckResponse.SERVING:
        raise RuntimeError(f"vault health is {response.status}")


async def _wait_serving(proc: asyncio.subprocess.Process, channel: grpc.aio.Channel, log_path: Path) -> None:
    """Until health says SERVING, or fail at once if the process exits first."""
    ready = asyncio.ensure_future(_serving(channel))
    died = asyncio.ensure_future(proc.wait())
    await asyncio.wait({ready, died}, return_when=asyncio.FIRST_COMPLETED)
    if died.done():
        ready.cancel()
        tail = _tail(log_path)
        raise RuntimeError(f"vault exited with {proc.returncode} before serving:\n{tail}")
    died.cancel()
    ready.result()


def _tail(path: Path) -> str:
    return path.read_text(errors="replace")[-2000:]


def _profile_path(profile_dir: Path, label: str) -> Path:
    profile_dir.mkdir(parents=True, exist_ok=True)
    return profile_dir / f"{label}.txt"


async def _stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), STOP_TIMEOUT_S)
    except TimeoutError:
        proc.kill()
        await proc.wait()


@contextlib.asynccontextmanager
async def running_vault(
    database_url: str, workdir: Path, label: str, profile_dir: Path | None = None
) -> AsyncIterator[VaultProcess]:
    """Start a vault on a free loopback port; stop it (SIGTERM) on exit."""
    address = f"127.0.0.1:{free_port()}"
    log_path = workdir / f"vault-{label}.log"
    argv = [sys.executable, "-m", "vault_service", "--grace", "1"]
    with log_path.open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            *argv, env=_env(database_url, address), stdout=log, stderr=asyncio.subprocess.STDOUT
        )
    channel = grpc.aio.insecure_channel(address)
    try:
        await _wait_serving(proc, channel, log_path)
        async with profiling(proc.pid, profile_dir, label):
            yield VaultProcess(proc, address, channel, log_path)
    finally:
        await channel.close()
        await _stop(proc)


@contextlib.asynccontextmanager
async def profiling(pid: int, profile_dir: Path | None, label: str) -> AsyncIterator[None]:
    """Sample `pid` with py-spy (collapsed stacks, all threads) while the block runs."""
    if profile_dir is None:
        yield
        return
    out = _profile_path(profile_dir, label)
    spy = await asyncio.create_subprocess_exec(
        *_py_spy(), "record", "--pid", str(pid), "--rate", "250", "--format", "raw", "--threads", "--nonblocking",
        "-o", str(out), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        yield
    finally:
        spy.send_signal(signal.SIGINT)  # py-spy writes its output on Ctrl-C
        _, err = await spy.communicate()
        if spy.returncode not in (0, -signal.SIGINT) and not out.exists():
            print(f"py-spy failed for {label}: {err.decode(errors='replace')[-500:]}", file=sys.stderr)


def _py_spy() -> list[str]:
    local = Path(sys.executable).with_name("py-spy")
    return [str(local)] if local.exists() else ["py-spy"]
