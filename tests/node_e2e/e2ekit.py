"""Helpers for the end-to-end node tests: node subprocesses, their event logs and stores, the vault as
an admin sees it, and a restore into a fresh file.

(A module of its own, not conftest: ``from conftest import ...`` is ambiguous with tests/conftest.py.)

Everything waits on real conditions (an event line, a store row, the vault's head) with a deadline;
the stores are read with Python's sqlite3, so neonize must never be imported in this process.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
from sessionvault.v1 import admin_service_pb2 as admin_pb
from sessionvault.v1 import admin_service_pb2_grpc, sync_service_pb2_grpc
from sessionvault.v1 import common_pb2 as pb
from sessionvault.v1 import sync_service_pb2 as sync_pb
from support import ADMIN_A, NODE_A, auth, clean_env

from session_node import capture, restore, state, store

REPO = Path(__file__).resolve().parents[2]
SESSION = "s1"
T = TypeVar("T")


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 30.0, every: float = 0.02) -> T:
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
    """Synchronous admin (ADMIN_A) and node-role (NODE_A, for Restore) calls on a fresh channel each time,
    so a vault that was restarted is reached at once (no channel reconnect backoff)."""

    def __init__(self, address: str) -> None:
        self.address = address

    @contextlib.contextmanager
    def _channel(self):  # type: ignore[no-untyped-def]
        channel = grpc.insecure_channel(self.address)
        try:
            yield channel
        finally:
            channel.close()

    def session(self, session_id: str = SESSION) -> admin_pb.Session | None:
        with self._channel() as ch:
            try:
                response = admin_service_pb2_grpc.AdminServiceStub(ch).GetSession(
                    admin_pb.GetSessionRequest(session_id=session_id), metadata=auth(ADMIN_A), timeout=10
                )
            except grpc.RpcError as err:
                if err.code() == grpc.StatusCode.NOT_FOUND:  # type: ignore[attr-defined]
                    return None
                raise
            return response.session

    def head(self, session_id: str = SESSION) -> int:
        s = self.session(session_id)
        return s.head_version if s else 0

    def versions(self, session_id: str = SESSION) -> list[admin_pb.Version]:
        """Every stored version, oldest first."""
        out: list[admin_pb.Version] = []
        token = ""
        with self._channel() as ch:
            stub = admin_service_pb2_grpc.AdminServiceStub(ch)
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

    def records(self, session_id: str = SESSION, version: int = 0) -> tuple[int, list[tuple[int, int, bytes]]]:
        """Restore as a node would: (header version, [(version, kind, plaintext record)])."""
        records: list[tuple[int, int, bytes]] = []
        parts: list[bytes] = []
        header_version = -1
        with self._channel() as ch:
            stream = sync_service_pb2_grpc.SyncServiceStub(ch).Restore(
                sync_pb.RestoreRequest(session_id=session_id, version=version), metadata=auth(NODE_A), timeout=30
            )
            for msg in stream:
                if msg.WhichOneof("message") == "header":
                    header_version = msg.header.version
                    continue
                parts.append(msg.chunk.data)
                if msg.chunk.last:
                    records.append((msg.chunk.version, msg.chunk.kind, b"".join(parts)))
                    parts = []
        assert header_version >= 0 and not parts
        return header_version, records

    def restore_to(self, target: Path, cache_dir: Path, session_id: str = SESSION, version: int = 0) -> Path:
        """Rebuild the session's store (at ``version``, 0 = head) into a fresh file, as a new node would."""
        _, records = self.records(session_id, version)
        snaps = [data for _, kind, data in records if kind == pb.RECORD_KIND_SNAPSHOT]
        deltas = [data for _, kind, data in records if kind == pb.RECORD_KIND_DELTA]
        assert len(snaps) <= 1 and (not snaps or records[0][1] == pb.RECORD_KIND_SNAPSHOT), "snapshot first"
        return restore.rebuild_store(target, snaps or None, deltas, cache_dir=cache_dir)


def check_history(versions: list[admin_pb.Version], head: int) -> None:
    """The history is gapless and single: versions 1..head, each exactly once, a snapshot first."""
    numbers = [v.version for v in versions]
    assert numbers == list(range(1, head + 1)), f"versions are not 1..{head} exactly once: {numbers}"
    assert versions[0].kind == pb.RECORD_KIND_SNAPSHOT, "the first record is not a snapshot"


def no_repeated_deltas(records: list[tuple[int, int, bytes]]) -> None:
    """A record sent twice (a resend after a lost ack that the vault took as new) would show up as two
    consecutive deltas with the same rows and values; the simulated traffic writes fresh random values."""
    deltas = [(v, capture.decode(data)) for v, kind, data in records if kind == pb.RECORD_KIND_DELTA]
    for (v1, d1), (v2, d2) in itertools.pairwise(deltas):
        assert d1.changes != d2.changes, f"versions {v1} and {v2} carry the same changes"


def apply_records(path: Path, records: list[tuple[int, int, bytes]]) -> None:
    """Apply delta records to an existing store (with its node-private objects stripped first)."""
    conn = store.connect(path)
    try:
        conn.execute("BEGIN IMMEDIATE")
        restore.strip_private(conn)
        conn.execute("COMMIT")
        for _, kind, data in records:
            assert kind == pb.RECORD_KIND_DELTA
            restore.apply_delta(conn, data)
    finally:
        conn.close()


# -- a node process -------------------------------------------------------------------------------


def read_store(path: Path) -> tuple[state.SyncState, int]:
    """(node-private sync state, changelog rows) in one read transaction; the node and its worker write
    concurrently, so both come from one committed state."""
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


def proc_state(pid: int) -> str | None:
    """The kernel's state letter of a process ('R', 'S', 'T', 'Z', ...), None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def alive(pid: int) -> bool:
    """Running (a zombie has exited; its parent just has not reaped it)."""
    return proc_state(pid) not in (None, "Z", "X")


@dataclass
class Node:
    """``python -m session_node`` with the simulated driver, in a subprocess."""

    node_id: str
    vault: str
    data_dir: Path
    session: str = SESSION
    ttl: int = 15
    margin: float = 3.0
    rate: float = 50.0
    count: int = 0
    extra: list[str] = field(default_factory=list)
    proc: subprocess.Popen | None = None
    started_at: float = 0.0

    def start(self) -> Node:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        argv = [
            sys.executable, "-m", "session_node", "--node-id", self.node_id, "--vault", self.vault,
            "--data-dir", str(self.data_dir), "--session", self.session, "--driver", "simulated",
            "--sim-rate", str(self.rate), "--sim-count", str(self.count),
            "--lease-ttl", str(self.ttl), "--lease-margin", str(self.margin), *self.extra,
        ]  # fmt: skip
        log = (self.data_dir.parent / f"{self.node_id}.log").open("ab")
        self.started_at = time.time()
        self.proc = subprocess.Popen(
            argv, cwd=REPO, env=clean_env(SESSION_NODE_TOKEN=NODE_A), stdin=subprocess.DEVNULL, stdout=log, stderr=log
        )
        log.close()
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def store_path(self) -> Path:
        return self.data_dir / self.session / store.STORE_FILE

    @property
    def deadline_file(self) -> Path:
        return self.data_dir / self.session / "lease-deadline"

    @property
    def cache_dir(self) -> Path:
        return self.data_dir / ".template"

    def events(self, name: str | None = None, **match: Any) -> list[dict[str, Any]]:
        try:
            lines = (self.data_dir / "events.jsonl").read_text().splitlines()
        except FileNotFoundError:
            return []
        out = []
        for line in lines:
            if not line.endswith("}"):
                continue  # a line being written right now
            ev = json.loads(line)
            if (name is None or ev["event"] == name) and all(ev.get(k) == v for k, v in match.items()):
                out.append(ev)
        return out

    def wait_event(self, name: str, timeout: float = 30.0, nth: int = 1, **match: Any) -> dict[str, Any]:
        def probe() -> dict[str, Any] | None:
            found = self.events(name, **match)
            if len(found) >= nth:
                return found[nth - 1]
            self.check_running(f"waiting for {name}")
            return None

        return wait_for(f"{self.node_id}: event {name} {match or ''} #{nth}", probe, timeout)

    def check_running(self, doing: str) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"node {self.node_id} exited with {self.proc.returncode} while {doing}:\n{self.log()}")

    def log(self, lines: int = 40) -> str:
        path = self.data_dir.parent / f"{self.node_id}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def read_store(self) -> tuple[state.SyncState, int]:
        return read_store(self.store_path)

    def wait_synced(self, admin: Admin, timeout: float = 30.0) -> int:
        """Until the changelog is empty and the store's acked version is the vault's head; returns it."""

        def probe() -> int | None:
            st, pending = self.read_store()
            if pending == 0 and st.acked_version > 0 and st.acked_version == admin.head(self.session):
                return st.acked_version
            return None

        return wait_for(f"{self.node_id}: everything acked", probe, timeout)

    def worker_pid(self, nth: int = 1) -> int:
        return int(self.wait_event("worker_started", nth=nth)["pid"])

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, sig)

    def wait(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        """Cleanup: SIGKILL (works on a stopped process too) and reap."""
        if self.proc is not None and self.proc.poll() is None:
            self.signal(signal.SIGKILL)
            self.proc.wait(timeout=30)
