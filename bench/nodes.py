"""Session nodes as subprocesses (`python -m session_node`) for the node-based scenarios,
read through their DATA_DIR/events.jsonl; a store writer standing in for workers
(`--driver none`); and change -> ack matching.

Latency of a change = the time the vault's ack of the record holding it reached the
node (`record_acked.acked_t`, recorded with --trace-acks) minus the time the change
was committed to the store (`committed_t`). A record holds a change when its
`upto_seq` (highest changelog seq it covers) is at least the change's seq, which the
writer reads from the store's changelog right after its commit (it is the only
writer of changelog rows).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import os
import random
import shutil
import signal
import sqlite3
import sys
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sessionvault.v1 import admin_service_pb2 as admin_pb
from sessionvault.v1 import admin_service_pb2_grpc

from bench.context import Context
from bench.vaultproc import ADMIN_TOKEN, NODE_TOKEN, VaultProcess, profiling
from session_node import simulate, store
from session_node.capture import CHANGELOG, is_hot

Event = dict[str, Any]
STOP_TIMEOUT_S = 30.0
POLL_S = 0.05


def node_backend(ctx: Context) -> str:
    """Node scenarios run on one database: MariaDB (the TiDB stand-in) unless excluded."""
    return "mariadb" if "mariadb" in ctx.backends else ctx.backends[0]


def status_kib(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


_TEMPLATE: dict[str, Path] = {}


def seed_template(ctx: Context, data_dir: Path) -> None:
    """Give a node's data dir the empty neonize store it would otherwise create itself
    (a neonize subprocess per node): created once per run, then copied."""
    if "path" not in _TEMPLATE or not _TEMPLATE["path"].is_file():
        _TEMPLATE["path"] = store.template_store(ctx.workdir / "template")
    src = _TEMPLATE["path"]
    target = data_dir / ".template" / src.name
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, target)


class Node:
    """One `python -m session_node` process; its log goes to the bench's log directory."""

    def __init__(self, ctx: Context, vault: VaultProcess, node_id: str, sessions: Iterable[str], *extra: str) -> None:
        self.node_id = node_id
        self.profile_dir = ctx.profile_dir
        self.data_dir = ctx.workdir / f"node-{node_id}-{os.urandom(3).hex()}"
        self.data_dir.mkdir(parents=True)
        seed_template(ctx, self.data_dir)
        self.log_path = (ctx.log_dir or ctx.workdir) / f"node-{node_id}.log"
        self.argv = [sys.executable, "-m", "session_node", "--node-id", node_id, "--vault", vault.address,
                     "--data-dir", str(self.data_dir), "--log-level", "WARNING", *extra]  # fmt: skip
        for name in sessions:
            self.argv += ["--session", name]
        self.proc: asyncio.subprocess.Process | None = None
        self.started_at = 0.0  # time.time() when spawned
        self._offset = 0
        self._partial = b""
        self._events: list[Event] = []

    async def start(self) -> Node:
        env = {**os.environ, "SESSION_NODE_TOKEN": NODE_TOKEN}
        with self.log_path.open("ab") as log:
            self.started_at = time.time()
            self.proc = await asyncio.create_subprocess_exec(
                *self.argv, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=asyncio.subprocess.STDOUT
            )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def events(self, name: str | None = None) -> list[Event]:
        """Every complete line of events.jsonl so far (read incrementally)."""
        path = self.data_dir / "events.jsonl"
        if path.exists():
            with path.open("rb") as fh:
                fh.seek(self._offset)
                data = fh.read()
            self._offset += len(data)
            lines = (self._partial + data).split(b"\n")
            self._partial = lines.pop()
            self._events += [json.loads(line) for line in lines if line]
        return [e for e in self._events if name is None or e["event"] == name]

    def count(self, name: str) -> int:
        return len(self.events(name))

    async def wait_for(self, cond: Callable[[Node], bool], what: str, limit_s: float) -> None:
        deadline = time.monotonic() + limit_s
        while not cond(self):
            if self.proc is not None and self.proc.returncode is not None:
                raise RuntimeError(
                    f"node {self.node_id} exited with {self.proc.returncode} before {what}; {self.tail()}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"node {self.node_id}: timed out after {limit_s:.0f} s waiting for {what}; {self.tail()}"
                )
            await asyncio.sleep(POLL_S)

    def tail(self) -> str:
        return "log tail:\n" + self.log_path.read_text(errors="replace")[-1500:]

    def traced_changes(self, sessions: Iterable[str]) -> list[Event]:
        """The workers' change events (--sim-trace-changes with --trace-acks: DATA_DIR/SESSION/changes.jsonl)."""
        out = []
        for session in sessions:
            path = self.data_dir / session / "changes.jsonl"
            lines = path.read_text().splitlines() if path.exists() else []
            for line in lines:
                with contextlib.suppress(ValueError):  # a line being written
                    out.append({**json.loads(line), "session": session})
        return out

    def worker_pids(self) -> list[int]:
        return [e["pid"] for e in self.events("worker_started")]

    def store_path(self, session: str) -> Path:
        return self.data_dir / session / "store.sqlite3"

    async def stop(self) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), STOP_TIMEOUT_S)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
        for pid in self.worker_pids():  # workers stop on stdin EOF; make sure, by pid
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@contextlib.asynccontextmanager
async def running_nodes(nodes: list[Node]) -> AsyncIterator[list[Node]]:
    """Start the nodes (sampled with py-spy under --profile); stop them on exit."""
    try:
        async with contextlib.AsyncExitStack() as stack:
            for node in nodes:
                await node.start()
            for node in nodes:
                if node.profile_dir is not None:  # py-spy attaches once the interpreter is up
                    await node.wait_for(lambda n: n.count("node_started") > 0, "node_started", 60)
                    await stack.enter_async_context(profiling(node.pid, node.profile_dir, f"node-{node.node_id}"))
            yield nodes
    finally:
        await asyncio.gather(*(n.stop() for n in nodes), return_exceptions=True)


def admin(vault: VaultProcess) -> tuple[admin_service_pb2_grpc.AdminServiceStub, tuple[tuple[str, str], ...]]:
    return admin_service_pb2_grpc.AdminServiceStub(vault.channel), (("authorization", f"Bearer {ADMIN_TOKEN}"),)


async def versions(vault: VaultProcess, session: str) -> list[admin_pb.Version]:
    """Every stored version of a session (ListVersions, all pages), oldest first."""
    stub, md = admin(vault)
    out: list[admin_pb.Version] = []
    token = ""
    while True:
        resp = await stub.ListVersions(
            admin_pb.ListVersionsRequest(session_id=session, page_size=1000, page_token=token), metadata=md
        )
        out += resp.versions
        token = resp.next_page_token
        if not token:
            return sorted(out, key=lambda v: v.version)


# -- change -> ack matching -------------------------------------------------------------------


@dataclass(frozen=True)
class Change:
    session: str
    seq: int
    committed_t: float
    table: str = ""


def latencies(changes: Iterable[Change], acks: Iterable[Event]) -> tuple[list[float], int]:
    """(seconds from commit to ack for each change that was acked, changes never acked)."""
    by_session: dict[str, tuple[list[int], list[float]]] = defaultdict(lambda: ([], []))
    for a in sorted(acks, key=lambda a: (a["session"], a["version"])):
        seqs, times = by_session[a["session"]]
        # Acks of one session are in version order; upto_seq only grows (a snapshot may cover more).
        seqs.append(max(a["upto_seq"], seqs[-1] if seqs else 0))
        times.append(a["acked_t"])
    out, missing = [], 0
    for c in changes:
        seqs, times = by_session.get(c.session, ([], []))
        i = bisect.bisect_left(seqs, c.seq)
        if i == len(seqs):
            missing += 1
        else:
            out.append(times[i] - c.committed_t)
    return out, missing


def worker_changes(events: Iterable[Event], after_t: float = 0.0, hot_only: bool = True) -> list[Change]:
    """The workers' traced changes (Node.traced_changes) that added changelog rows, committed after ``after_t``."""
    last: dict[str, int] = {}
    out = []
    for e in events:
        if e["event"] != "change" or e.get("seq") is None:
            continue
        prev = last.get(e["session"], 0)
        last[e["session"]] = max(prev, e["seq"])
        if e["seq"] <= prev:
            continue  # the transaction changed no row (e.g. ON CONFLICT DO NOTHING): nothing to ship
        if e["committed_t"] >= after_t and (is_hot(e["table"]) or not hot_only):
            out.append(Change(e["session"], e["seq"], e["committed_t"], e["table"]))
    return out


# -- a store writer in place of a worker (--driver none) ---------------------------------------


class StoreWriter:
    """Writes whatsmeow-shaped changes into one node-managed store, as a worker would."""

    def __init__(self, path: Path, session: str, seed: int, durable: bool = True) -> None:
        self.session = session
        self.conn = simulate.open_store(path)
        if not durable:  # a load generator's own fsyncs are not what is measured
            self.conn.execute("PRAGMA synchronous=OFF")
        rng = random.Random(seed)
        jid = simulate.device_jid(self.conn) or simulate.write_fake_device(self.conn, rng).jid
        self.traffic = simulate.Traffic(self.conn, jid, rng)

    def seq(self) -> int:
        row = self.conn.execute("SELECT seq FROM sqlite_sequence WHERE name = ?", (CHANGELOG,)).fetchone()
        return 0 if row is None else int(row[0])

    def ratchet(self) -> Change:
        """One Signal ratchet step (the commonest hot change): an upsert of a whatsmeow_sessions row."""
        table = self.traffic._do_session()
        t = time.time()
        return Change(self.session, self.seq(), t, table)

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self.conn.close()
