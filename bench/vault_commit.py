"""Vault commit path: a 4 KiB record sent on a long-lived Sync stream, to its ack.

Reference: the same bytes written into the same database by a raw
compare-and-set UPDATE + INSERT + COMMIT. Batches alternate (vault, raw,
vault, raw, ...) so both see the same machine state.
"""

from __future__ import annotations

import os
import time

from bench.client import Session, SyncStream, new_sessions
from bench.context import Context
from bench.databases import RawCas
from bench.figures import Figure, Goal, percentile
from bench.vaultproc import VaultProcess

RECORD_BYTES = 4096
BATCH = 50
WARMUP = 50


async def _vault_batch(stream: SyncStream, session: Session, count: int) -> list[float]:
    out = []
    for _ in range(count):
        data = os.urandom(RECORD_BYTES)
        start = time.perf_counter()
        await session.commit(stream, data)
        out.append(time.perf_counter() - start)
    return out


def _raw_batch(raw: RawCas, session_id: str, count: int) -> list[float]:
    out = []
    for _ in range(count):
        data = os.urandom(RECORD_BYTES)
        start = time.perf_counter()
        raw.commit(session_id, data)
        out.append(time.perf_counter() - start)
    return out


async def measure(vault: VaultProcess, url: str, records: int) -> tuple[list[float], list[float]]:
    """(vault latencies, raw latencies) in seconds, `records` each, alternating batches."""
    stub = vault.sync()
    [session] = await new_sessions(stub, "commit", 1, "bench-node")
    stream = await SyncStream(stub, "bench-node").open()
    raw = RawCas(url)
    raw.add_session("commit")
    try:
        await _vault_batch(stream, session, WARMUP)
        _raw_batch(raw, "commit", WARMUP)
        ours: list[float] = []
        ref: list[float] = []
        while len(ours) < records:
            n = min(BATCH, records - len(ours))
            ours += await _vault_batch(stream, session, n)
            ref += _raw_batch(raw, "commit", n)
        return ours, ref
    finally:
        raw.close()
        await stream.close()


def figures(backend: str, ours: list[float], ref: list[float]) -> list[Figure]:
    note = f"n={len(ours)} x 4 KiB; reference: raw {'PyMySQL' if backend == 'mariadb' else 'sqlite3'} CAS UPDATE + INSERT + COMMIT"
    return [
        Figure(
            f"vault_commit.{backend}.p{p}",
            percentile(ours, p) * 1e3,
            "ms",
            reference=percentile(ref, p) * 1e3,
            goal=Goal(5.0) if p == 99 else None,
            ratio_goal=Goal(2.0),
            note=note,
        )
        for p in (50, 95, 99)
    ]


async def run(ctx: Context) -> list[Figure]:
    records = ctx.pick(2000, 100)
    out: list[Figure] = []
    for backend in ctx.backends:
        async with ctx.vault(backend, "commit") as (vault, url):
            ours, ref = await measure(vault, url, records)
        out += figures(backend, ours, ref)
    return out
