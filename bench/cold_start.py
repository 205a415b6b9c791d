"""Cold start: a node taking over many sessions at once (1000 stores of ~200 KiB), from
its start to every store restored and ready (events.jsonl `store_ready`).

The vault is seeded directly over gRPC, as a node "seed" would leave it: per session
a lease, one snapshot record (a real store: fake paired device, Signal sessions,
contacts, keys, compressed by the node's own snapshot code), then the lease
released. The node then starts with every session (`--driver none`: restores only,
no workers) and has to acquire, restore, verify (integrity and foreign-key checks)
and install capture on each.

Reference: a plain file copy of the same number of such stores.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from sessionvault.v1 import sync_service_pb2 as sync_pb

from bench.client import SNAPSHOT, SyncStream, acquire
from bench.context import Context
from bench.figures import Figure, Goal
from bench.nodes import Node, node_backend, running_nodes
from bench.vaultproc import VaultProcess, auth
from session_node import simulate, snapshot, store

SEED_STREAMS = 8
KIB = 1024


@dataclass(frozen=True)
class Load:
    sessions: int
    rows: int  # rows of simulated contents per store (about 2 KiB each on top of the empty store)


def seed_store(ctx: Context, rows: int, label: str = "seed") -> tuple[Path, bytes]:
    """(a real whatsmeow store, a fake paired device plus ``rows`` rows of simulated contents,
    in WORKDIR/LABEL; its compressed snapshot, as the node ships it)."""
    path = ctx.workdir / label / "store.sqlite3"
    path.parent.mkdir()
    shutil.copyfile(store.template_store(ctx.workdir / "template"), path)
    conn = simulate.open_store(path)
    try:
        rng = random.Random(1)
        jid = simulate.write_fake_device(conn, rng).jid
        simulate.Traffic(conn, jid, rng).populate(rows)
    finally:
        conn.close()
    with snapshot.take_snapshot(path, work_dir=ctx.workdir) as snap:
        return path, snap.read()


async def seed_vault(vault: VaultProcess, names: list[str], data: bytes) -> None:
    stub = vault.sync()
    pieces = [data[i : i + snapshot.CHUNK_SIZE] for i in range(0, len(data), snapshot.CHUNK_SIZE)]

    async def one_stream(share: list[str]) -> None:
        stream = await SyncStream(stub, "seed").open()
        try:
            for name in share:
                epoch = await acquire(stub, name, "seed")
                await stream.send_chunks(name, epoch, 0, pieces, SNAPSHOT)
                await stream.ack()
                await stub.ReleaseLease(
                    sync_pb.ReleaseLeaseRequest(session_id=name, node_id="seed", epoch=epoch), metadata=auth()
                )
        finally:
            await stream.close()

    await asyncio.gather(*(one_stream(names[i::SEED_STREAMS]) for i in range(SEED_STREAMS)))


def copy_all(source: Path, target_dir: Path, count: int) -> float:
    target_dir.mkdir()
    start = time.perf_counter()
    for i in range(count):
        (target_dir / str(i)).mkdir()
        shutil.copyfile(source, target_dir / str(i) / "store.sqlite3")
    seconds = time.perf_counter() - start
    shutil.rmtree(target_dir)
    return seconds


async def run(ctx: Context) -> list[Figure]:
    load = ctx.pick(Load(1000, 20), Load(20, 20))
    source, data = seed_store(ctx, load.rows)
    names = [f"cold-{i:04d}" for i in range(load.sessions)]
    async with ctx.vault(node_backend(ctx), "cold-start") as (vault, _url):
        await seed_vault(vault, names, data)
        node = Node(ctx, vault, "cold", names, "--driver", "none")
        async with running_nodes([node]):
            await node.wait_for(lambda n: n.count("store_ready") >= load.sessions, "every store ready", 600)
            ready = node.events("store_ready")
            started = next(e["t"] for e in node.events("node_started"))
    restored = sum(e["decision"] == "restored" for e in ready)
    last = max(e["t"] for e in ready) - node.started_at
    first = min(e["t"] for e in ready) - node.started_at
    copy_s = await asyncio.to_thread(copy_all, source, ctx.workdir / "copies", load.sessions)
    shape = (
        f"{load.sessions} sessions, store {source.stat().st_size / KIB:.0f} KiB (snapshot {len(data) / KIB:.0f} KiB); "
        f"{restored} restored"
    )
    return [
        Figure(
            "cold_start.all_ready",
            last,
            "s",
            reference=copy_s,
            goal=Goal(10.0),
            note=f"{shape}; node spawn -> last store_ready; reference: file copy of as many stores",
        ),
        Figure(
            "cold_start.per_session",
            (last - first) / max(1, load.sessions - 1) * 1e3,
            "ms",
            reference=copy_s / load.sessions * 1e3,
            note=f"{shape}; between the first and the last store_ready; node up after {started - node.started_at:.2f} s",
        ),
    ]
