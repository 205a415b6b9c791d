"""Helpers for the node CLI tests: a `python -m session_node` subprocess read through its
DATA_DIR/events.jsonl, vault queries (AdminService.GetSession, Restore into a store file).

(A module of its own, not conftest: ``from conftest import ...`` is ambiguous with tests/conftest.py.)
Tests synchronise on real conditions (events in the file, the vault's head, process exits) polled
with deadlines, never on sleeps.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from sessionvault.v1 import admin_service_pb2 as admin_pb
from sessionvault.v1 import admin_service_pb2_grpc, sync_service_pb2_grpc
from sessionvault.v1 import common_pb2 as pb
from sessionvault.v1 import sync_service_pb2 as sync_pb
from support import ADMIN_A, NODE_A, auth, clean_env

from session_node import restore as restore_mod

REPO = Path(__file__).resolve().parents[2]
NODE = [sys.executable, "-m", "session_node"]
TIMEOUT = 30.0
POLL_S = 0.05

Event = dict[str, Any]


def poll(cond: Callable[[], Any], timeout: float, what: str, on_fail: Callable[[], str] = lambda: "") -> Any:
    """Return cond()'s first truthy value; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{on_fail()}")
        time.sleep(POLL_S)  # polling a condition another process makes true


def run_node(*args: str, env: dict[str, str] | None = None, timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
    """Run the node to completion (for start-up errors)."""
    return subprocess.run(
        [*NODE, *args], cwd=REPO, env=env if env is not None else clean_env(), capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip


class NodeProc:
    """A running node. stdout/stderr (the node's log and its workers' stderr) go to a file;
    ``events()`` are this process's lines of DATA_DIR/events.jsonl."""

    def __init__(
        self, vault: str, data_dir: Path, sessions: list[str], *extra: str, env: dict[str, str] | None = None
    ) -> None:
        self.data_dir = data_dir
        self.events_path = data_dir / "events.jsonl"
        data_dir.mkdir(parents=True, exist_ok=True)
        # events.jsonl is appended to across restarts: this process's events start here.
        self._events_from = self.events_path.stat().st_size if self.events_path.exists() else 0
        self.log_path = data_dir.parent / f"{data_dir.name}.node.log"
        self._log = self.log_path.open("ab")
        argv = [*NODE, "--node-id", f"node-{data_dir.name}", "--vault", vault, "--data-dir", str(data_dir)]
        for name in sessions:
            argv += ["--session", name]
        argv += extra
        self.proc = subprocess.Popen(
            argv, cwd=REPO, env=clean_env(SESSION_NODE_TOKEN=NODE_A, **(env or {})),
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log,
        )  # fmt: skip

    # -- events.jsonl --
    def events(self, name: str | None = None, session: str | None = None) -> list[Event]:
        try:
            with self.events_path.open("rb") as fh:
                fh.seek(self._events_from)
                text = fh.read().decode()
        except FileNotFoundError:
            return []
        out = []
        for line in text.splitlines(keepends=True):
            if not line.endswith("\n"):
                break  # a line being written
            ev = json.loads(line)
            if (name is None or ev["event"] == name) and (session is None or ev.get("session") == session):
                out.append(ev)
        return out

    def wait_for(
        self,
        name: str,
        session: str | None = None,
        *,
        n: int = 1,
        where: Callable[[Event], bool] = lambda _e: True,
        timeout: float = TIMEOUT,
        alive: bool = True,
    ) -> Event:
        """The n-th event ``name`` (of ``session``, matching ``where``). With ``alive`` (default) the
        node must stay up meanwhile: an exit fails at once instead of timing out."""

        def found() -> Event | None:
            hits = [e for e in self.events(name, session) if where(e)]
            if len(hits) >= n:
                return hits[n - 1]
            if alive and self.proc.poll() is not None:
                raise AssertionError(f"node exited with {self.proc.returncode} before {name!r} #{n}\n{self.report()}")
            return None

        return poll(found, timeout, f"{name!r} #{n} of {session}", self.report)

    def names(self, session: str | None = None) -> list[str]:
        return [e["event"] for e in self.events(session=session)]

    def report(self) -> str:
        self._log.flush()
        log = self.log_path.read_text(errors="replace").splitlines()[-40:]
        return "--- events ---\n" + "\n".join(map(json.dumps, self.events()[-30:])) + "\n--- log ---\n" + "\n".join(log)

    # -- process --
    def worker_pids(self) -> list[int]:
        return [e["pid"] for e in self.events("worker_started")]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = TIMEOUT) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.wait(timeout)

    def wait(self, timeout: float = TIMEOUT) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"node still running after {timeout}s\n{self.report()}") from None

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        for pid in self.worker_pids():  # workers stop on stdin EOF; make sure, by pid
            if is_worker_alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self._log.close()


def is_worker_alive(pid: int) -> bool:
    """True while ``pid`` is a running (not zombie) session worker."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return b"session_node.worker" in cmdline and state != "Z"


# -- the vault ------------------------------------------------------------------------------------


def get_session(address: str, session_id: str) -> admin_pb.Session:
    with grpc.insecure_channel(address) as channel:
        stub = admin_service_pb2_grpc.AdminServiceStub(channel)
        request = admin_pb.GetSessionRequest(session_id=session_id)
        return stub.GetSession(request, metadata=auth(ADMIN_A), timeout=10).session


def head(address: str, session_id: str) -> int:
    try:
        return get_session(address, session_id).head_version
    except grpc.RpcError as err:
        if err.code() == grpc.StatusCode.NOT_FOUND:
            return 0
        raise


def restore_head(address: str, session_id: str, target: Path, cache_dir: Path) -> sync_pb.RestoreHeader:
    """Rebuild the vault's newest state of a session into ``target``, as a node would."""
    header = None
    snapshot: list[bytes] = []
    deltas: list[bytes] = []
    parts: list[bytes] = []
    with grpc.insecure_channel(address) as channel:
        stub = sync_service_pb2_grpc.SyncServiceStub(channel)
        for msg in stub.Restore(sync_pb.RestoreRequest(session_id=session_id), metadata=auth(NODE_A), timeout=30):
            if msg.WhichOneof("message") == "header":
                header = msg.header
                continue
            if msg.chunk.kind == pb.RECORD_KIND_SNAPSHOT:
                snapshot.append(msg.chunk.data)
            else:
                parts.append(msg.chunk.data)
                if msg.chunk.last:
                    deltas.append(b"".join(parts))
                    parts = []
    assert header is not None and header.version > 0, "the vault holds no state"
    restore_mod.rebuild_store(target, snapshot or None, deltas, cache_dir=cache_dir)
    return header
