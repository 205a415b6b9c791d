"""Helpers shared by the multi-process tests (tests/node_e2e, tests/failover): waiting on real
conditions, the vault as an admin sees it, processes by pid, and the stores as the nodes left them.

Everything waits on a real condition (an event line, a store row, the vault's view) with a deadline.
The stores are read with Python's sqlite3, so neonize must never be imported in these processes.
"""

from __future__ import annotations

import contextlib
import itertools
import shutil
import sqlite3
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

import grpc
from sessionvault.v1 import admin_service_pb2 as admin_pb
from sessionvault.v1 import admin_service_pb2_grpc, sync_service_pb2_grpc
from sessionvault.v1 import common_pb2 as pb
from sessionvault.v1 import sync_service_pb2 as sync_pb
from support import ADMIN_A, NODE_A, auth

from session_node import capture, restore, state, store

T = TypeVar("T")


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 30.0, every: float = 0.05) -> T:
    """Poll ``probe`` until it returns something truthy; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)  # polling a condition owned by another process


# -- the vault as an admin sees it ----------------------------------------------------------------


class Admin:
    """Synchronous admin (ADMIN_A) and node-role (NODE_A) calls, a fresh channel each time, so a
    restarted vault is reached at once (no channel reconnect backoff)."""

    def __init__(self, address: str) -> None:
        self.address = address

    @contextlib.contextmanager
    def _admin(self):  # type: ignore[no-untyped-def]
        channel = grpc.insecure_channel(self.address)
        try:
            yield admin_service_pb2_grpc.AdminServiceStub(channel)
        finally:
            channel.close()

    def session(self, session_id: str) -> admin_pb.Session | None:
        with self._admin() as stub:
            try:
                return stub.GetSession(
                    admin_pb.GetSessionRequest(session_id=session_id), metadata=auth(ADMIN_A), timeout=10
                ).session
            except grpc.RpcError as err:
                if err.code() == grpc.StatusCode.NOT_FOUND:  # type: ignore[attr-defined]
                    return None
                raise

    def head(self, session_id: str) -> int:
        s = self.session(session_id)
        return s.head_version if s else 0

    def live_owner(self, session_id: str) -> str | None:
        """The node holding a lease that has not run out (by this machine's clock, same as the vault's)."""
        s = self.session(session_id)
        if s is None or not s.lease.node_id or s.lease.expire_time.ToMicroseconds() / 1e6 <= time.time():
            return None
        return s.lease.node_id

    def nodes(self) -> list[admin_pb.Node]:
        with self._admin() as stub:
            return list(stub.ListNodes(admin_pb.ListNodesRequest(), metadata=auth(ADMIN_A), timeout=10).nodes)

    def move(self, session_id: str, target: str) -> admin_pb.MoveSessionResponse:
        with self._admin() as stub:
            return stub.MoveSession(
                admin_pb.MoveSessionRequest(session_id=session_id, target_node_id=target),
                metadata=auth(ADMIN_A),
                timeout=10,
            )

    def versions(self, session_id: str) -> list[admin_pb.Version]:
        """Every stored version, oldest first."""
        out: list[admin_pb.Version] = []
        token = ""
        with self._admin() as stub:
            while True:
                page = stub.ListVersions(
                    admin_pb.ListVersionsRequest(session_id=session_id, page_size=1000, page_token=token),
                    metadata=auth(ADMIN_A),
                    timeout=10,
                )
                out += page.versions
                token = page.next_page_token
                if not token:
                    return sorted(out, key=lambda v: v.version)

    def seed(self, session_ids: Iterable[str]) -> None:
        """Create sessions (empty, no owner) the way a node would: acquire, then release the lease."""
        channel = grpc.insecure_channel(self.address)
        try:
            stub = sync_service_pb2_grpc.SyncServiceStub(channel)
            for sid in session_ids:
                got = stub.AcquireLease(
                    sync_pb.AcquireLeaseRequest(session_id=sid, node_id="seed", ttl_seconds=5),
                    metadata=auth(NODE_A),
                    timeout=10,
                )
                stub.ReleaseLease(
                    sync_pb.ReleaseLeaseRequest(session_id=sid, node_id="seed", epoch=got.lease.epoch),
                    metadata=auth(NODE_A),
                    timeout=10,
                )
        finally:
            channel.close()

    def records(self, session_id: str, version: int = 0) -> tuple[int, list[tuple[int, int, bytes]]]:
        """Restore as a node would: (header version, [(version, kind, plaintext record)])."""
        records: list[tuple[int, int, bytes]] = []
        parts: list[bytes] = []
        header_version = -1
        channel = grpc.insecure_channel(self.address)
        try:
            stream = sync_service_pb2_grpc.SyncServiceStub(channel).Restore(
                sync_pb.RestoreRequest(session_id=session_id, version=version), metadata=auth(NODE_A), timeout=60
            )
            for msg in stream:
                if msg.WhichOneof("message") == "header":
                    header_version = msg.header.version
                    continue
                parts.append(msg.chunk.data)
                if msg.chunk.last:
                    records.append((msg.chunk.version, msg.chunk.kind, b"".join(parts)))
                    parts = []
        finally:
            channel.close()
        assert header_version >= 0 and not parts
        return header_version, records

    def restore_to(self, target: Path, cache_dir: Path, session_id: str, version: int = 0) -> Path:
        """Rebuild the session's store at ``version`` (0 = head) into a fresh file, as a new node would."""
        header_version, records = self.records(session_id, version)
        assert version == 0 or header_version == version, (header_version, version)
        snaps = [data for _, kind, data in records if kind == pb.RECORD_KIND_SNAPSHOT]
        deltas = [data for _, kind, data in records if kind == pb.RECORD_KIND_DELTA]
        assert len(snaps) <= 1 and (not snaps or records[0][1] == pb.RECORD_KIND_SNAPSHOT), "snapshot first"
        target.parent.mkdir(parents=True, exist_ok=True)
        return restore.rebuild_store(target, snaps or None, deltas, cache_dir=cache_dir)


# -- processes and stores ---------------------------------------------------------------------


def proc_state(pid: int) -> str | None:
    """The kernel's state letter of a process ('R', 'S', 'T', 'Z', ...), None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def alive(pid: int) -> bool:
    return proc_state(pid) not in (None, "Z", "X")


def copy_store(src: Path, dst: Path) -> Path:
    """A consistent copy of a store as its last commit left it.

    Normally through SQLite's backup (which rolls back a hot journal a killed writer left). A store
    whose writer was SIGSTOPped in the middle of a commit stays locked (backup would retry forever):
    its files are then copied as they lie, hot journal included, and SQLite's recovery rolls the
    copy back to the last commit when it is opened, as after a crash. Nobody else can write it
    meanwhile: the lock that stops us stops them too.
    """
    dst.parent.mkdir(parents=True, exist_ok=True)
    source = store.connect(src)
    try:
        source.execute("PRAGMA busy_timeout = 2000")
        try:
            source.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.OperationalError:  # locked for a commit by a frozen writer
            return _copy_locked(src, dst)
        target = sqlite3.connect(dst)
        try:
            source.backup(target)
        finally:
            target.close()
    finally:
        source.close()
    return dst


def _copy_locked(src: Path, dst: Path) -> Path:
    for suffix in ("", "-journal"):
        if Path(f"{src}{suffix}").exists():
            shutil.copyfile(f"{src}{suffix}", f"{dst}{suffix}")
    conn = store.connect(dst)  # the first read rolls the hot journal back
    try:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    finally:
        conn.close()
    assert not Path(f"{dst}-journal").exists() or Path(f"{dst}-journal").stat().st_size == 0
    return dst


def read_state(path: Path) -> tuple[state.SyncState, int]:
    """(node-private sync state, changelog rows) in one read transaction."""
    conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=10, isolation_level=None)
    try:
        conn.execute("BEGIN")
        rows = dict(conn.execute(f"SELECT key, value FROM {state.STATE_TABLE}").fetchall())
        pending = conn.execute(f"SELECT count(*) FROM {capture.CHANGELOG}").fetchone()[0]
        conn.execute("COMMIT")
    finally:
        conn.close()
    known = state.SyncState.__dataclass_fields__
    return state.SyncState(**{k: int(v) for k, v in rows.items() if k in known}), int(pending)


def no_repeated_deltas(records: list[tuple[int, int, bytes]]) -> None:
    """A record sent twice (a resend after a lost ack that the vault took as new) would show up as two
    consecutive deltas with the same rows and values; the simulated traffic writes fresh random values."""
    deltas = [(v, capture.decode(data)) for v, kind, data in records if kind == pb.RECORD_KIND_DELTA]
    for (v1, d1), (v2, d2) in itertools.pairwise(deltas):
        assert d1.changes != d2.changes, f"versions {v1} and {v2} carry the same changes"
