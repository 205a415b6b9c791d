"""Bytes per change: what a single-row change costs on the wire to the vault, in a
store of ~1 MiB and of ~20 MiB (goal: independent of the store's size).

A node (`--driver simulated --sim-initial-rows N`) pairs a fresh session, fills its
store with realistic whatsmeow contents (Signal sessions, contacts, identity and
sender keys) and ships it; once the worker is done and the changelog is empty, the
bench makes one Signal ratchet step (an upsert of one existing whatsmeow_sessions
row, as whatsmeow does on every message) and reads the size of the record that
carried it from the vault (AdminService.ListVersions size_bytes: the payload the
node sent, before the vault's encryption).

Reference: re-sending the whole store, i.e. the node's own compressed snapshot of
the same store at that moment.
"""

from __future__ import annotations

import random
import sqlite3
from dataclasses import dataclass

from bench.context import Context
from bench.figures import Figure, Goal
from bench.nodes import Node, StoreWriter, node_backend, running_nodes, versions
from session_node import snapshot
from session_node.capture import CHANGELOG

MIB = 1 << 20
WAIT_S = 180.0


@dataclass(frozen=True)
class Size:
    label: str
    rows: int  # --sim-initial-rows (about 2 KiB of store per row)


def _changelog_empty(path) -> bool:  # type: ignore[no-untyped-def]
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        return conn.execute(f"SELECT count(*) FROM {CHANGELOG}").fetchone()[0] == 0
    except sqlite3.OperationalError:
        return False
    finally:
        conn.close()


RATCHET_BYTES = 1024  # a serialized SessionRecord is 300-2048 bytes; the same size in both stores


def _ratchet_existing(writer: StoreWriter) -> int:
    """Advance the ratchet of one existing peer: one UPDATE of one row. Returns the change's seq."""
    t = writer.traffic
    peer = random.Random(7).choice(t.peers.sessions)
    sql = (
        "INSERT INTO whatsmeow_sessions (our_jid, their_id, session) VALUES (?, ?, ?) "
        "ON CONFLICT (our_jid, their_id) DO UPDATE SET session=excluded.session"
    )
    t._txn(lambda c: c.execute(sql, (t.jid, peer, t.rng.randbytes(RATCHET_BYTES))))
    return writer.seq()


async def measure(ctx: Context, vault, size: Size) -> dict[str, float]:  # type: ignore[no-untyped-def]
    name = f"bytes-{size.label}"
    node = Node(ctx, vault, name, [name], "--driver", "simulated", "--sim-initial-rows", str(size.rows),
                "--sim-count", "20", "--sim-rate", "0", "--sim-seed", "11", "--trace-acks")  # fmt: skip
    path = node.store_path(name)
    async with running_nodes([node]):
        await node.wait_for(lambda n: any(e.get("rc") == 0 for e in n.events("worker_exited")), "worker done", WAIT_S)
        await node.wait_for(lambda _n: _changelog_empty(path), "changelog shipped", WAIT_S)
        writer = StoreWriter(path, name, seed=3)
        try:
            seq = _ratchet_existing(writer)
        finally:
            writer.close()
        await node.wait_for(
            lambda n: any(e["upto_seq"] >= seq for e in n.events("record_acked")), "the change's ack", 30
        )
        ack = next(e for e in node.events("record_acked") if e["upto_seq"] >= seq)
        stored = {v.version: v for v in await versions(vault, name)}[ack["version"]]
        with snapshot.take_snapshot(path, work_dir=ctx.workdir) as snap:
            return {
                "delta": float(stored.size_bytes),
                "node_bytes": float(ack["bytes"]),
                "kind_delta": float(ack["kind"] == "delta"),
                "snapshot": float(snap.size),
                "store": float(path.stat().st_size),
            }


def figures(results: dict[str, dict[str, float]]) -> list[Figure]:
    out = []
    sizes = list(results)
    for label, r in results.items():
        out.append(
            Figure(
                f"bytes_per_change.{label}",
                r["delta"],
                "B",
                reference=r["snapshot"],
                note=f"one ratchet step (1 row) in a {r['store'] / MIB:.1f} MiB store; record kind "
                f"{'delta' if r['kind_delta'] else 'SNAPSHOT'}; reference: its compressed snapshot",
            )
        )
    small, big = results[sizes[0]], results[sizes[-1]]
    out.append(
        Figure(
            "bytes_per_change.growth",
            big["delta"] / small["delta"],
            "x",
            reference=big["snapshot"] / small["snapshot"],
            goal=Goal(1.5),
            note=f"delta bytes in the {sizes[-1]} store / in the {sizes[0]} store (goal: independent of store "
            "size); reference: the same ratio for whole-store snapshots",
        )
    )
    return out


async def run(ctx: Context) -> list[Figure]:
    plan = ctx.pick([Size("1MiB", 420), Size("20MiB", 9950)], [Size("0.2MiB", 0), Size("0.4MiB", 100)])
    results: dict[str, dict[str, float]] = {}
    async with ctx.vault(node_backend(ctx), "bytes") as (vault, _url):
        for size in plan:
            results[size.label] = await measure(ctx, vault, size)
    return figures(results)
