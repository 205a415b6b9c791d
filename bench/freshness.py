"""Freshness: a hot-table row committed by a worker in its store, to the vault's ack of
the delta holding it. Light load (1 session, a few changes/s) and heavy load (many
sessions on one node, each at a high rate), real node and worker subprocesses
(`--driver simulated --sim-trace-changes --trace-acks`).

Only changes to hot tables (keys, ratchets, device...) count: cold ones (contacts,
buffers) are batched for up to 2 s by design. Changes before every session's first
snapshot was acked (pairing, the initial snapshot) are warm-up and not counted.

Reference: the same load of single-row commits (a ~1 KiB upsert-sized record, a
compare-and-set UPDATE + INSERT + COMMIT) written straight into the vault's database
with its own driver (PyMySQL), one connection per session at the same rate: what
it costs to commit the row to the database at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import threading
import time
from dataclasses import dataclass

from bench.context import Context
from bench.databases import RawCas
from bench.figures import Figure, Goal, percentile
from bench.nodes import Node, latencies, node_backend, running_nodes, worker_changes

ROW_BYTES = 1024
SETTLE_S = 30.0


@dataclass(frozen=True)
class Load:
    label: str
    sessions: int
    rate: float  # changes/s per session
    seconds: float


def _snapshots_acked(node: Node, sessions: int) -> bool:
    return len({e["session"] for e in node.events("record_acked") if e["kind"] == "snapshot"}) >= sessions


async def measure_node(ctx: Context, vault, load: Load) -> tuple[list[float], int, int]:  # type: ignore[no-untyped-def]
    """(latencies of hot changes in s, changes never acked, changes counted)."""
    names = [f"fresh-{load.label}-{i}" for i in range(load.sessions)]
    node = Node(ctx, vault, f"fresh-{load.label}", names, "--driver", "simulated", "--sim-rate", str(load.rate),
                "--sim-trace-changes", "--trace-acks", "--sim-seed", "5")  # fmt: skip
    async with running_nodes([node]):
        await node.wait_for(lambda n: _snapshots_acked(n, load.sessions), "first snapshots", 60 + load.sessions)
        start = time.time() + 0.5
        await asyncio.sleep(0.5 + load.seconds)
        end = time.time()
        traced = node.traced_changes(names)
        last: dict[str, int] = {}
        for c in worker_changes(traced, hot_only=False):
            last[c.session] = max(last.get(c.session, 0), c.seq)
        with contextlib.suppress(RuntimeError):  # every change up to `end` acked, or SETTLE_S passed
            await node.wait_for(lambda n: _acked(n, last), "the last changes acked", SETTLE_S)
        acks = node.events("record_acked")
    changes = [c for c in worker_changes(traced, after_t=start) if c.committed_t <= end]
    lat, missing = latencies(changes, acks)
    return lat + [math.inf] * missing, missing, len(changes)  # never acked: worse than any latency


def _acked(node: Node, last: dict[str, int]) -> bool:
    acked: dict[str, int] = {}
    for e in node.events("record_acked"):
        acked[e["session"]] = max(acked.get(e["session"], 0), e["upto_seq"])
    return all(acked.get(s, 0) >= seq for s, seq in last.items())


def measure_raw(url: str, load: Load, count: int) -> list[float]:
    """One thread and connection per session, each committing at the session's rate."""
    per_session = max(1, count // load.sessions)
    results: list[list[float]] = [[] for _ in range(load.sessions)]

    def run(i: int) -> None:
        raw = RawCas(url)
        raw.add_session(f"raw-{load.label}-{i}")
        time.sleep(i / load.sessions / load.rate)  # spread the sessions over one period
        try:
            next_at = time.monotonic()
            for _ in range(per_session):
                next_at += 1 / load.rate
                data = os.urandom(ROW_BYTES)
                t0 = time.perf_counter()
                raw.commit(f"raw-{load.label}-{i}", data)
                results[i].append(time.perf_counter() - t0)
                time.sleep(max(0.0, next_at - time.monotonic()))
        finally:
            raw.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(load.sessions)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [x for r in results for x in r]


def figures(load: Load, ours: list[float], ref: list[float], missing: int, counted: int) -> list[Figure]:
    shape = f"{load.sessions} session(s) x {load.rate:g} changes/s on one node, {load.seconds:g} s"
    note = (
        f"{shape}; n={counted} hot changes ({missing} not acked within {SETTLE_S:g} s after the load: "
        "counted as infinite); "
        "reference: raw single-row CAS commit into the same database at the same load"
    )
    return [
        Figure(
            f"freshness.{load.label}.p{p}",
            percentile(ours, p) * 1e3,
            "ms",
            reference=percentile(ref, p) * 1e3,
            goal=Goal(200.0) if p == 99 else None,
            note=note,
        )
        for p in (50, 99)
    ]


async def run(ctx: Context) -> list[Figure]:
    loads = ctx.pick(
        [Load("light", 1, 5, 40), Load("heavy", 30, 20, 30)],
        [Load("light", 1, 10, 2), Load("heavy", 3, 20, 2)],
    )
    backend = node_backend(ctx)
    out: list[Figure] = []
    async with ctx.vault(backend, "freshness") as (vault, url):
        for load in loads:
            ours, missing, counted = await measure_node(ctx, vault, load)
            ref = await asyncio.to_thread(measure_raw, url, load, min(max(counted, 20), 600))
            out += figures(load, ours, ref, missing, counted)
    return out
