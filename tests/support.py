"""Helpers shared by the tests: databases, an in-process vault on loopback,
and small client calls."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import grpc
import sqlalchemy as sa
from sessionvault.v1 import admin_service_pb2_grpc, sync_service_pb2_grpc
from sessionvault.v1 import common_pb2 as pb
from sessionvault.v1 import sync_service_pb2 as sync_pb

from vault_service import crypto
from vault_service.config import BootstrapToken, Config
from vault_service.errors import error_info
from vault_service.server import Running, open_vault, start, stop

MARIADB_URL = os.environ.get("VAULT_TEST_MARIADB_URL", "mysql+pymysql://root@127.0.0.1:3306/test")
MIB = 1 << 20
TEST_KEY = bytes(range(32))
ADMIN_A = "admin-token-tenant-a-0123456789"
NODE_A = "node-token-tenant-a-0123456789"
ADMIN_B = "admin-token-tenant-b-0123456789"
NODE_B = "node-token-tenant-b-0123456789"
TOKENS = [
    BootstrapToken(ADMIN_A, "admin", "default", "admin-a"),
    BootstrapToken(NODE_A, "node", "default", "node-a"),
    BootstrapToken(ADMIN_B, "admin", "other", "admin-b"),
    BootstrapToken(NODE_B, "node", "other", "node-b"),
]


@contextmanager
def mariadb_database() -> Iterator[str]:
    """A fresh, empty MariaDB database for one test, dropped afterwards."""
    server = sa.engine.make_url(MARIADB_URL)
    name = "sv_test_" + uuid.uuid4().hex[:12]
    admin = sa.create_engine(server)
    with admin.begin() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name} CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.begin() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}")
        admin.dispose()


def test_keyring() -> crypto.Keyring:
    return crypto.Keyring({"k1": TEST_KEY}, "k1")


def auth(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


@dataclass
class VaultUnderTest:
    running: Running
    address: str
    channels: list[grpc.aio.Channel] = field(default_factory=list)

    @property
    def engine(self) -> sa.Engine:
        return self.running.vault.engine

    def channel(self) -> grpc.aio.Channel:
        ch = grpc.aio.insecure_channel(self.address)
        self.channels.append(ch)
        return ch

    def sync(self) -> sync_service_pb2_grpc.SyncServiceStub:
        return sync_service_pb2_grpc.SyncServiceStub(self.channel())

    def admin(self) -> admin_service_pb2_grpc.AdminServiceStub:
        return admin_service_pb2_grpc.AdminServiceStub(self.channel())

    def count(self, table: str) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.text(f"SELECT COUNT(*) FROM {table}")).scalar_one())


async def start_vault(database_url: str, **overrides: object) -> VaultUnderTest:
    values: dict = {
        "listen": "127.0.0.1:0",
        "database_url": database_url,
        "database_tls": False,
        "database_tls_ca": None,
        "keyring": test_keyring(),
        "tokens": TOKENS,
        "grace_s": 0.5,
    }
    values.update(overrides)
    config = Config(**values)
    running = await start(config, open_vault(config))
    return VaultUnderTest(running, f"127.0.0.1:{running.port}")


async def stop_vault(handle: VaultUnderTest) -> None:
    for ch in handle.channels:
        await ch.close()
    await stop(handle.running, 0.5)


def reason_of(err: grpc.RpcError) -> str | None:
    info = error_info(err)
    return info.reason if info else None


def chunk_requests(
    session_id: str, epoch: int, base: int, kind: int, data: bytes, chunk_size: int = MIB
) -> list[sync_pb.SyncRequest]:
    pieces = [data[i : i + chunk_size] for i in range(0, len(data), chunk_size)] or [b""]
    return [
        sync_pb.SyncRequest(
            chunk=pb.RecordChunk(
                session_id=session_id,
                base_version=base,
                lease_epoch=epoch,
                kind=kind,  # type: ignore[arg-type]
                chunk_index=i,
                last=i == len(pieces) - 1,
                data=piece,
            )
        )
        for i, piece in enumerate(pieces)
    ]


async def sync_records(
    stub: sync_service_pb2_grpc.SyncServiceStub, node_id: str, requests: list[sync_pb.SyncRequest], token: str = NODE_A
) -> list[sync_pb.SyncResponse]:
    """Send hello + requests on one Sync stream; collect every response until the vault closes."""

    async def gen() -> AsyncIterator[sync_pb.SyncRequest]:
        yield sync_pb.SyncRequest(hello=sync_pb.SyncHello(node_id=node_id))
        for r in requests:
            yield r

    return [r async for r in stub.Sync(gen(), metadata=auth(token))]


async def put(
    stub: sync_service_pb2_grpc.SyncServiceStub,
    node_id: str,
    session_id: str,
    epoch: int,
    base: int,
    kind: int,
    data: bytes,
    token: str = NODE_A,
) -> sync_pb.SyncResponse:
    responses = await sync_records(stub, node_id, chunk_requests(session_id, epoch, base, kind, data), token)
    assert len(responses) == 1, responses
    return responses[0]


async def acquire(
    stub: sync_service_pb2_grpc.SyncServiceStub, session_id: str, node_id: str, ttl: int = 30, token: str = NODE_A
) -> sync_pb.AcquireLeaseResponse:
    return await stub.AcquireLease(
        sync_pb.AcquireLeaseRequest(session_id=session_id, node_id=node_id, ttl_seconds=ttl), metadata=auth(token)
    )


async def restore(
    stub: sync_service_pb2_grpc.SyncServiceStub, session_id: str, version: int = 0, token: str = NODE_A
) -> tuple[sync_pb.RestoreHeader, list[tuple[int, int, bytes]]]:
    """(header, [(version, kind, bytes)]) with each record's chunks joined."""
    header = None
    records: list[tuple[int, int, bytes]] = []
    parts: list[bytes] = []
    async for msg in stub.Restore(sync_pb.RestoreRequest(session_id=session_id, version=version), metadata=auth(token)):
        if msg.WhichOneof("message") == "header":
            header = msg.header
            continue
        parts.append(msg.chunk.data)
        if msg.chunk.last:
            records.append((msg.chunk.version, msg.chunk.kind, b"".join(parts)))
            parts = []
    assert header is not None and not parts
    return header, records


async def wait_until(cond, within: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    """Poll a condition that another process or thread makes true."""
    async with asyncio.timeout(within):
        while not cond():  # noqa: ASYNC110 - the condition lives in a database or another process
            await asyncio.sleep(0.02)


# -- real processes -----------------------------------------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(**extra: str) -> dict[str, str]:
    """The environment for a child process, without VAULT_* / SESSION_NODE_* leaking in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "SESSION_NODE_"))}
    env.update(extra)
    return env


@dataclass
class VaultProcess:
    """`python -m vault_service` in a subprocess (real process, real port)."""

    database_url: str
    workdir: str
    port: int = 0
    proc: object = None
    master_key: str = TEST_KEY.hex()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> VaultProcess:
        import subprocess
        import sys
        import time

        import grpc as grpc_sync
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        self.port = self.port or free_port()
        env = clean_env(
            VAULT_MASTER_KEY=self.master_key,
            VAULT_ADMIN_TOKEN=ADMIN_A,
            VAULT_NODE_TOKEN=NODE_A,
            VAULT_DATABASE_URL=self.database_url,
            VAULT_LISTEN=self.address,
        )
        self.log = open(os.path.join(self.workdir, f"vault-{self.port}.log"), "ab")  # noqa: SIM115
        self.proc = subprocess.Popen([sys.executable, "-m", "vault_service"], env=env, stdout=self.log, stderr=self.log)
        channel = grpc_sync.insecure_channel(self.address)
        try:
            deadline = time.monotonic() + timeout
            while True:
                assert self.proc.poll() is None, f"vault exited with {self.proc.returncode}"
                try:
                    health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
                    return self
                except grpc_sync.RpcError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)  # polling the real process's health endpoint
        finally:
            channel.close()

    def stop(self, sig: int | None = None) -> int:
        import signal

        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(sig or signal.SIGTERM)
        rc = self.proc.wait(timeout=30)
        self.log.close()
        return rc
