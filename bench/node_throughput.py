"""Throughput through nodes: 200 sessions on 4 nodes changing concurrently; changes/s
committed at the vault and the p99 latency of a change (commit in its store -> ack).

200 worker processes do not fit on 2 cores next to the vault and its database, so the
nodes run `--driver none` (restore, capture and sync only) and one generator process,
this one, writes into the 200 stores in place of the workers: a Signal ratchet step
(an upsert of a whatsmeow_sessions row, hot) per change, from GENERATOR_THREADS
threads flat out, its connections with synchronous=OFF (200 fsyncs in flight would
measure the disk, not the node and vault). A change counts once the vault acked a record holding it; changes
of one store that arrive while its previous record is in flight travel together.

Reference: raw single-row compare-and-set commits (UPDATE + INSERT + COMMIT of
4 KiB) straight into the same MariaDB database with PyMySQL over as many sessions,
16 connections (vault_throughput's raw pool), in the same run.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass

from bench.context import Context
from bench.figures import Figure, Goal, percentile
from bench.nodes import Change, Node, StoreWriter, latencies, node_backend, running_nodes
from bench.vault_throughput import RawPool

GENERATOR_THREADS = 16
SETTLE_S = 60.0


@dataclass(frozen=True)
class Load:
    nodes: int
    sessions_per_node: int
    seconds: float
    raw_per_session: int


def _snapshots(nodes: list[Node]) -> int:
    return sum(len({e["session"] for e in n.events("record_acked") if e["kind"] == "snapshot"}) for n in nodes)


def generate(writers: list[StoreWriter], seconds: float, threads: int) -> list[Change]:
    """Ratchet steps into every store, round robin per thread, until ``seconds`` have passed."""
    stop_at = time.monotonic() + seconds
    out: list[list[Change]] = [[] for _ in range(threads)]

    def run(i: int) -> None:
        mine = writers[i::threads]
        while time.monotonic() < stop_at:
            for w in mine:
                out[i].append(w.ratchet())

    pool = [threading.Thread(target=run, args=(i,)) for i in range(min(threads, len(writers)))]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return [c for part in out for c in part]


def _all_acked(nodes: list[Node], last: dict[str, int]) -> bool:
    acked: dict[str, int] = {}
    for n in nodes:
        for e in n.events("record_acked"):
            acked[e["session"]] = max(acked.get(e["session"], 0), e["upto_seq"])
    return all(acked.get(s, 0) >= seq for s, seq in last.items())


async def measure(ctx: Context, vault, load: Load) -> dict:  # type: ignore[no-untyped-def]
    nodes = [
        Node(
            ctx,
            vault,
            f"tp{k}",
            [f"tp{k}-{i}" for i in range(load.sessions_per_node)],
            "--driver",
            "none",
            "--trace-acks",
        )
        for k in range(load.nodes)
    ]
    total = load.nodes * load.sessions_per_node
    async with running_nodes(nodes):
        for n in nodes:
            await n.wait_for(lambda n: n.count("store_ready") >= load.sessions_per_node, "stores ready", 120)
        writers = [
            StoreWriter(n.store_path(f"{n.node_id}-{i}"), f"{n.node_id}-{i}", seed=k * 1000 + i, durable=False)
            for k, n in enumerate(nodes)
            for i in range(load.sessions_per_node)
        ]
        try:
            await nodes[0].wait_for(lambda _n: _snapshots(nodes) >= total, "first snapshots", 120)
            start = time.time()
            changes = await asyncio.to_thread(generate, writers, load.seconds, GENERATOR_THREADS)
            generated_s = time.time() - start
        finally:
            for w in writers:
                w.close()
        last: dict[str, int] = {}
        for c in changes:
            last[c.session] = max(last.get(c.session, 0), c.seq)
        try:
            await nodes[0].wait_for(lambda _n: _all_acked(nodes, last), "every change acked", SETTLE_S)
        except RuntimeError as err:
            ctx.notes.append(f"node_throughput: {err}"[:300])
        acks = [e for n in nodes for e in n.events("record_acked") if e["acked_t"] >= start]
    lat, missing = latencies(changes, acks)
    acked_changes = len(changes) - missing
    end = max(e["acked_t"] for e in acks)
    return {
        "changes": len(changes),
        "acked": acked_changes,
        "rate": acked_changes / (end - start),
        "offered": len(changes) / generated_s,
        "records": len([a for a in acks if a["kind"] == "delta"]),
        "p50": percentile(lat, 50),
        "p99": percentile(lat, 99),
        "window": end - start,
    }


def measure_raw(url: str, sessions: int, per_session: int) -> tuple[float, float]:
    """(commits/s, p99 latency in s) of raw single-row CAS commits over ``sessions`` sessions."""
    raw = RawPool(url, sessions)
    try:
        raw.round(1)  # warm-up
        lat, seconds = raw.round(per_session)
    finally:
        raw.close()
    return len(lat) / seconds, percentile(lat, 99)


def figures(load: Load, r: dict, raw_rate: float, raw_p99: float) -> list[Figure]:
    shape = f"{load.nodes} nodes x {load.sessions_per_node} sessions (--driver none), {load.seconds:g} s of load"
    note = (
        f"{shape}; {r['acked']} of {r['changes']} changes acked in {r['window']:.1f} s as {r['records']} "
        f"records; generator offered {r['offered']:.0f}/s from {GENERATOR_THREADS} threads; "
        "reference: raw PyMySQL single-row CAS commits, 16 connections"
    )
    return [
        Figure("node_throughput.changes_per_s", r["rate"], "1/s", raw_rate, Goal(2000.0, at_most=False), note=note),
        Figure("node_throughput.p50", r["p50"] * 1e3, "ms", note="change committed in its store -> vault ack"),
        Figure("node_throughput.p99", r["p99"] * 1e3, "ms", raw_p99 * 1e3, note=note),
    ]


async def run(ctx: Context) -> list[Figure]:
    load = ctx.pick(Load(4, 50, 20, 10), Load(2, 4, 2, 5))
    async with ctx.vault(node_backend(ctx), "node-throughput") as (vault, url):
        r = await measure(ctx, vault, load)
        raw_rate, raw_p99 = await asyncio.to_thread(
            measure_raw, url, load.nodes * load.sessions_per_node, load.raw_per_session
        )
    return figures(load, r, raw_rate, raw_p99)
