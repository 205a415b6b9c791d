"""Helpers for the failover tests: a cluster of node subprocesses (simulated driver) around a real vault
subprocess on MariaDB, the nodes' event logs and the workers' own activity logs (start/stop records),
and the invariants checked on them (the vault as an admin sees it, waiting and store copies: clusterkit).

(A module of its own, not conftest: ``from conftest import ...`` is ambiguous with tests/conftest.py.)

Everything waits on real conditions (an event line, an activity record, the vault's view) with a
deadline. The stores are read with Python's sqlite3, so neonize must never be imported in this process.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from clusterkit import Admin, alive, proc_state, wait_for
from sessionvault.v1 import admin_service_pb2 as admin_pb
from support import NODE_A, clean_env

from session_node import capture, store

REPO = Path(__file__).resolve().parents[2]
TTL = 4  # lease TTL (s): renewals every TTL/3, a worker fences itself TTL - MARGIN after a renewal was sent
MARGIN = 1.5


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in lines if line.endswith("}")]  # skip a line being written


# -- node processes -------------------------------------------------------------------------------


@dataclass
class NodeProc:
    """``python -m session_node`` with the simulated driver, in a subprocess (restartable: same id and
    data dir each time)."""

    node_id: str
    vault: str
    data_dir: Path
    template: Path
    sessions: list[str] = field(default_factory=list)
    pool: bool = False
    capacity: int = 0
    rate: float = 10.0
    ttl: int = TTL
    margin: float = MARGIN
    extra: list[str] = field(default_factory=list)
    proc: subprocess.Popen | None = None
    stopped: bool = False  # SIGSTOPped by the test

    def start(self) -> NodeProc:
        seeded = self.data_dir / ".template" / self.template.name
        if not seeded.exists():  # what the node's own cache holds after its first start (saves a neonize run)
            seeded.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self.template, seeded)
        argv = [
            sys.executable, "-m", "session_node", "--node-id", self.node_id, "--vault", self.vault,
            "--data-dir", str(self.data_dir), "--driver", "simulated", "--sim-rate", str(self.rate),
            "--lease-ttl", str(self.ttl), "--lease-margin", str(self.margin), *self.extra,
        ]  # fmt: skip
        for s in self.sessions:
            argv += ["--session", s]
        if self.pool:
            argv += ["--pool", "--capacity", str(self.capacity)]
        with (self.data_dir.parent / f"{self.node_id}.log").open("ab") as log:
            self.proc = subprocess.Popen(
                argv, cwd=REPO, env=clean_env(SESSION_NODE_TOKEN=NODE_A), stdin=subprocess.DEVNULL, stdout=log,
                stderr=log,
            )  # fmt: skip
        self.stopped = False
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, sig)

    def kill9(self) -> None:
        self.signal(signal.SIGKILL)
        assert self.proc is not None
        self.proc.wait(timeout=30)
        self.stopped = False

    def pause(self) -> None:
        self.signal(signal.SIGSTOP)
        wait_for(f"{self.node_id} stopped", lambda: proc_state(self.pid) == "T", timeout=5, every=0.005)
        self.stopped = True

    def resume(self) -> None:
        self.signal(signal.SIGCONT)
        self.stopped = False

    def wait_up(self) -> None:
        """Until this process of the node is up (signal handlers installed: a SIGTERM before that
        would kill the interpreter during its imports)."""
        self.wait_event("node_started", pid=self.pid)

    def terminate(self, timeout: float = 30.0) -> int:
        """Graceful stop (SIGTERM): flush, release, exit."""
        assert self.proc is not None
        if self.stopped:
            self.resume()
        self.wait_up()
        self.signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def cleanup(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.signal(signal.SIGKILL)  # works on a stopped process too
            self.proc.wait(timeout=30)

    # -- what it wrote down --

    def events(self, name: str | None = None, since: float = 0.0, **match: Any) -> list[dict[str, Any]]:
        return [
            ev
            for ev in read_jsonl(self.data_dir / "events.jsonl")
            if (name is None or ev["event"] == name)
            and ev["t"] >= since
            and all(ev.get(k) == v for k, v in match.items())
        ]

    def wait_event(self, name: str, timeout: float = 30.0, since: float = 0.0, **match: Any) -> dict[str, Any]:
        def probe() -> dict[str, Any] | None:
            found = self.events(name, since, **match)
            if found:
                return found[0]
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"node {self.node_id} exited ({self.proc.returncode}) waiting for {name}")
            return None

        return wait_for(f"{self.node_id}: event {name} {match or ''}", probe, timeout)

    def activity(self, session_id: str) -> list[dict[str, Any]]:
        return read_jsonl(self.data_dir / session_id / "activity.jsonl")

    def store_path(self, session_id: str) -> Path:
        return self.data_dir / session_id / store.STORE_FILE

    def log(self, lines: int = 40) -> str:
        path = self.data_dir.parent / f"{self.node_id}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


# -- invariants -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Interval:
    node: str
    pid: int
    start: float
    stop: float | None  # None: still running (no stop record yet)
    reason: str | None


def worker_intervals(nodes: Iterable[NodeProc], session_id: str) -> list[Interval]:
    """Every worker of the session on every node, from the workers' own start/stop records."""
    out: list[Interval] = []
    for node in nodes:
        open_: dict[int, float] = {}
        for rec in node.activity(session_id):
            assert rec["session"] == session_id, rec
            if rec["event"] == "start":
                assert rec["pid"] not in open_, f"{node.node_id}: pid {rec['pid']} started twice"
                open_[rec["pid"]] = rec["t"]
            else:
                start = open_.pop(rec["pid"], None)
                assert start is not None, f"{node.node_id}: stop without start: {rec}"
                out.append(Interval(node.node_id, rec["pid"], start, rec["t"], rec["reason"]))
        out += [Interval(node.node_id, pid, t, None, None) for pid, t in open_.items()]
    return sorted(out, key=lambda i: i.start)


def check_no_overlap(nodes: Iterable[NodeProc], session_ids: Iterable[str], finished: bool = False) -> int:
    """At most one worker per session at any time. ``finished``: every worker must have stopped.
    Returns the number of worker runs checked."""
    nodes = list(nodes)
    total = 0
    for sid in session_ids:
        runs = worker_intervals(nodes, sid)
        total += len(runs)
        for prev, nxt in itertools.pairwise(runs):
            assert prev.stop is not None and prev.stop <= nxt.start, f"{sid}: two workers at once: {prev} and {nxt}" + (
                "" if prev.stop is None else f" (overlap {prev.stop - nxt.start:.3f} s)"
            )
        if finished and runs:
            assert runs[-1].stop is not None, f"{sid}: worker still running: {runs[-1]}"
        for run in runs:
            if run.stop is None:
                assert alive(run.pid), f"{sid}: worker {run} died without a stop record"
    return total


def check_versions(versions: list[admin_pb.Version], head: int) -> None:
    """History without gaps up to the head, and epochs that never go back (no stale write accepted)."""
    numbers = [v.version for v in versions]
    assert numbers and numbers == list(range(numbers[0], head + 1)), f"versions not contiguous up to {head}: {numbers}"
    epochs = [v.lease_epoch for v in versions]
    assert epochs == sorted(epochs), f"a version written under an older epoch after a newer one: {epochs}"


# -- stores ---------------------------------------------------------------------------------------


def acked_rows_differ(node_store: Path, vault_store: Path, limit: int = 5) -> list[str]:
    """Every row of ``node_store`` whose last change the vault acked (its key is not in the changelog)
    must be in ``vault_store`` with the same values, and ``vault_store`` may only differ in rows the
    changelog names (or rows those replaced through a UNIQUE column: INSERT OR REPLACE removes the old
    row without a DELETE trigger). [] when that holds."""
    conn = store.connect(node_store, readonly=True)
    try:
        schema = store.load_schema(conn)
        keycols = [c[1] for c in conn.execute(f"PRAGMA table_info({capture.CHANGELOG})") if c[1].startswith("k")]
        pending: dict[str, set[tuple]] = {}
        for row in conn.execute(f"SELECT tbl, {', '.join(keycols)} FROM {capture.CHANGELOG}"):
            info = schema[row[0]]
            pending.setdefault(row[0], set()).add(tuple(row[1 : 1 + len(info.pk)]))
    finally:
        conn.close()
    mine, theirs = _rows_by_key(node_store, schema), _rows_by_key(vault_store, schema)
    problems = []
    for table, info in schema.items():
        keys = pending.get(table, set())
        a, b = mine.get(table, {}), theirs.get(table, {})
        for key in sorted((a.keys() | b.keys()) - keys, key=repr):
            if a.get(key) == b.get(key):
                continue
            if key not in a and _replaced(b[key], info, [a[k] for k in keys if k in a]):
                continue
            problems.append(f"{table} {key}: node {a.get(key)!r} vs vault {b.get(key)!r}")
            if len(problems) >= limit:
                return problems
    return problems


def _rows_by_key(path: Path, schema: dict[str, store.TableInfo]) -> dict[str, dict[tuple, tuple]]:
    conn = store.connect(path, readonly=True)
    try:
        out: dict[str, dict[tuple, tuple]] = {}
        for table, info in schema.items():
            cols = [c[1] for c in conn.execute(f"PRAGMA table_info({store.quote(table)})")]
            idx = [cols.index(k) for k in info.pk]
            out[table] = {
                tuple(r[i] for i in idx): tuple(r) for r in conn.execute(f"SELECT * FROM {store.quote(table)}")
            }
        return out
    finally:
        conn.close()


def _replaced(row: tuple, info: store.TableInfo, pending_rows: list[tuple]) -> bool:
    cols = list(info.columns)
    for unique in info.unique:
        idx = [cols.index(c) for c in unique]
        if any(all(row[i] == p[i] for i in idx) for p in pending_rows):
            return True
    return False


# -- cluster-wide conditions ----------------------------------------------------------------------


def running_worker(nodes: Iterable[NodeProc], session_id: str) -> Interval | None:
    """The session's worker that is running now (a start record without a stop, its process alive)."""
    live = [i for i in worker_intervals(nodes, session_id) if i.stop is None and alive(i.pid)]
    assert len(live) <= 1, f"{session_id}: two workers running: {live}"
    return live[0] if live else None


def wait_all_running(
    admin: Admin, nodes: Iterable[NodeProc], session_ids: Iterable[str], timeout: float = 60.0
) -> dict[str, str]:
    """Until every session has a live lease held by a running, not paused node whose worker for it runs.
    Returns {session: owner node id}."""
    by_id = {n.node_id: n for n in nodes}
    sids = list(session_ids)

    def probe() -> dict[str, str] | None:
        out = {}
        for sid in sids:
            owner = admin.live_owner(sid)
            node = by_id.get(owner or "")
            if node is None or not node.running or node.stopped:
                return None
            worker = running_worker([node], sid)
            if worker is None:
                return None
            out[sid] = node.node_id
        return out

    return wait_for(f"every session running ({', '.join(sids)})", probe, timeout, every=0.1)


def worker_started_after(
    nodes: Iterable[NodeProc], session_id: str, since: float, exclude: str | None = None
) -> Interval | None:
    """The first worker of the session started after ``since`` (on a node other than ``exclude``)."""
    for run in worker_intervals(nodes, session_id):
        if run.start > since and run.node != exclude:
            return run
    return None


def wait_new_workers(
    nodes: Iterable[NodeProc], session_ids: Iterable[str], since: float, timeout: float
) -> dict[str, Interval]:
    """Until each session has a worker started after ``since`` on one of ``nodes``; their first ones."""
    nodes, sids = list(nodes), list(session_ids)

    def probe() -> dict[str, Interval] | None:
        found = {s: worker_started_after(nodes, s, since) for s in sids}
        return found if all(found.values()) else None  # type: ignore[return-value]

    return wait_for(f"a new worker for each of {sids}", probe, timeout, every=0.05)


def stop_all(nodes: Iterable[NodeProc], timeout: float = 60.0) -> None:
    """SIGTERM every running node at once (so none claims what another lets go), then wait: each
    must flush, release and exit 0."""
    running = [n for n in nodes if n.running]
    for n in running:
        if n.stopped:
            n.resume()
        n.wait_up()
        n.signal(signal.SIGTERM)
    for n in running:
        assert n.proc is not None
        rc = n.proc.wait(timeout=timeout)
        assert rc == 0, f"node {n.node_id} exited with {rc} on SIGTERM:\n{n.log()}"


def last_store(nodes: Iterable[NodeProc], session_id: str) -> Path:
    """The store of the node that ran the session's last worker."""
    nodes = list(nodes)
    runs = worker_intervals(nodes, session_id)
    assert runs, f"{session_id} never ran"
    return next(n for n in nodes if n.node_id == runs[-1].node).store_path(session_id)


class HeadWatch:
    """Polls every session's head version in a thread; a head that goes back is recorded."""

    def __init__(self, admin: Admin, session_ids: Iterable[str], every: float = 0.2) -> None:
        import threading

        self.admin = admin
        self.session_ids = list(session_ids)
        self.every = every
        self.heads: dict[str, int] = {}
        self.regressions: list[str] = []
        self.polls = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="head-watch", daemon=True)

    def __enter__(self) -> HeadWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.is_set():
            for sid in self.session_ids:
                try:
                    head = self.admin.head(sid)
                except grpc.RpcError:
                    continue  # the vault is restarting
                before = self.heads.get(sid, 0)
                if head < before:
                    self.regressions.append(f"{sid}: head {before} -> {head}")
                self.heads[sid] = max(before, head)
            self.polls += 1
            self._stop.wait(self.every)  # a polling period, not a synchronisation

    def check(self) -> None:
        assert self.polls > 0, "the head watch never polled"
        assert not self.regressions, f"head versions went back: {self.regressions}"
