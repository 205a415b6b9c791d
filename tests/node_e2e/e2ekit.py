"""Helpers for the end-to-end node tests: node subprocesses, their event logs and stores, and the
history checks (the vault as an admin sees it, waiting and store reads: clusterkit).

(A module of its own, not conftest: ``from conftest import ...`` is ambiguous with tests/conftest.py.)

Everything waits on real conditions (an event line, a store row, the vault's head) with a deadline;
the stores are read with Python's sqlite3, so neonize must never be imported in this process.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clusterkit import Admin, read_state, wait_for
from sessionvault.v1 import admin_service_pb2 as admin_pb
from sessionvault.v1 import common_pb2 as pb
from support import NODE_A, clean_env

from session_node import restore, state, store

REPO = Path(__file__).resolve().parents[2]
SESSION = "s1"


def check_history(versions: list[admin_pb.Version], head: int) -> None:
    """The history is gapless and single: versions 1..head, each exactly once, a snapshot first."""
    numbers = [v.version for v in versions]
    assert numbers == list(range(1, head + 1)), f"versions are not 1..{head} exactly once: {numbers}"
    assert versions[0].kind == pb.RECORD_KIND_SNAPSHOT, "the first record is not a snapshot"


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
        return read_state(self.store_path)

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
