"""Node footprint: the supervisor's resident memory per session, from its RSS running 1
session and running many (simulated workers at 1 change/s, every session synced, its
first snapshot acked), measured after the load has run for a while.

Reference: the RSS of one simulated worker process (what every session costs in
its own process anyway; a neonize worker is larger).
"""

from __future__ import annotations

import asyncio
import contextlib
from statistics import mean

from bench.context import Context
from bench.figures import Figure
from bench.nodes import Node, node_backend, running_nodes, status_kib

SETTLE_S = 5.0


async def measure(ctx: Context, vault, sessions: int) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """(supervisor VmRSS in KiB, mean worker VmRSS in KiB) with ``sessions`` running."""
    names = [f"fp{sessions}-{i}" for i in range(sessions)]
    node = Node(ctx, vault, f"fp{sessions}", names, "--driver", "simulated", "--sim-rate", "1", "--trace-acks")
    async with running_nodes([node]):
        await node.wait_for(
            lambda n: len({e["session"] for e in n.events("record_acked")}) >= sessions,
            "every session synced",
            60 + sessions,
        )
        await asyncio.sleep(SETTLE_S)
        supervisor = status_kib(node.pid)
        workers = []
        for pid in node.worker_pids():
            with contextlib.suppress(FileNotFoundError, KeyError):
                workers.append(status_kib(pid))
    return supervisor, mean(workers)


async def run(ctx: Context) -> list[Figure]:
    many = ctx.pick(50, 5)
    async with ctx.vault(node_backend(ctx), "footprint") as (vault, _url):
        one, worker_one = await measure(ctx, vault, 1)
        lots, worker = await measure(ctx, vault, many)
    per_session = (lots - one) / (many - 1) / 1024
    return [
        Figure(
            "node_footprint.per_session",
            per_session,
            "MiB",
            reference=worker / 1024,
            note=f"supervisor RSS ({lots / 1024:.1f} MiB with {many} sessions - {one / 1024:.1f} MiB with 1) / "
            f"{many - 1}; reference: mean RSS of a simulated worker process",
        ),
        Figure(
            "node_footprint.supervisor_one_session",
            one / 1024,
            "MiB",
            reference=worker_one / 1024,
            note="supervisor RSS running 1 session; reference: its worker's RSS",
        ),
    ]
