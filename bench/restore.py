"""Restore: a record of 1, 20 and 100 MiB streamed from the vault to a client
that writes it into a file; time and the vault process's peak RSS.

Reference: a plain copy of the same bytes from a file on local disk into
another file. Restores and copies alternate; each figure is a median.
Neither side fsyncs (both leave the file in the page cache).
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from sessionvault.v1 import sync_service_pb2 as sync_pb

from bench.client import MIB, SNAPSHOT, Session, SyncStream, new_sessions
from bench.context import Context
from bench.figures import Figure, Goal, median
from bench.vaultproc import VaultProcess, auth

CHUNK = MIB


@dataclass(frozen=True)
class Sample:
    seconds: float
    peak_growth_mib: float  # vault VmHWM during the restore minus VmRSS before it


def write_source(path: Path, size: int) -> None:
    """`size` random bytes (ciphertext-like: the vault stores opaque bytes)."""
    with path.open("wb") as f:
        for start in range(0, size, CHUNK):
            f.write(os.urandom(min(CHUNK, size - start)))


def _pieces(path: Path) -> list[bytes]:
    with path.open("rb") as f:
        return list(iter(lambda: f.read(CHUNK), b""))


async def upload(vault: VaultProcess, name: str, source: Path) -> Session:
    """Store `source` as the session's snapshot, in 1 MiB chunks."""
    stub = vault.sync()
    [session] = await new_sessions(stub, name, 1, "bench-node")
    stream = await SyncStream(stub, "bench-node").open()
    try:
        await stream.send_chunks(session.session_id, session.epoch, 0, _pieces(source), SNAPSHOT)
        session.version = (await stream.ack()).version
    finally:
        await stream.close()
    return session


async def restore_to(vault: VaultProcess, session_id: str, target: Path) -> Sample:
    rss_before = vault.rss_kib()
    vault.reset_peak_rss()
    start = time.perf_counter()
    with target.open("wb") as out:
        async for msg in vault.sync().Restore(sync_pb.RestoreRequest(session_id=session_id), metadata=auth()):
            if msg.WhichOneof("message") == "chunk":
                out.write(msg.chunk.data)
    seconds = time.perf_counter() - start
    return Sample(seconds, (vault.peak_rss_kib() - rss_before) / 1024)


def copy(source: Path, target: Path) -> float:
    start = time.perf_counter()
    shutil.copyfile(source, target)
    return time.perf_counter() - start


async def measure(ctx: Context, vault: VaultProcess, size: int, reps: int) -> tuple[list[Sample], list[float]]:
    source, target = ctx.workdir / f"src-{size}", ctx.workdir / f"dst-{size}"
    write_source(source, size)
    session = await upload(vault, f"restore-{size}", source)
    restores, copies = [], []
    try:
        await restore_to(vault, session.session_id, target)  # warm-up
        for _ in range(reps):
            restores.append(await restore_to(vault, session.session_id, target))
            copies.append(copy(source, target))
        if target.stat().st_size != size:
            raise RuntimeError(f"restored {target.stat().st_size} bytes, expected {size}")
    finally:
        source.unlink()
        target.unlink(missing_ok=True)
    return restores, copies


def figures(backend: str, size: int, restores: list[Sample], copies: list[float]) -> list[Figure]:
    label = f"{size / MIB:g}MiB"
    name = f"restore.{backend}.{label}"
    note = f"median of {len(restores)}; reference: file copy of the same bytes"
    return [
        Figure(
            f"{name}.time",
            median([r.seconds for r in restores]) * 1e3,
            "ms",
            median(copies) * 1e3,
            Goal(30.0) if size <= MIB else None,
            note=note,
        ),
        Figure(
            f"{name}.vault_peak_rss_growth",
            max(r.peak_growth_mib for r in restores),
            "MiB",
            goal=Goal(16 * CHUNK / MIB),
            note="vault VmHWM during the restore minus VmRSS before it; goal: 16 chunks, i.e. bounded by chunk size, not record size",
        ),
    ]


async def run(ctx: Context) -> list[Figure]:
    plan = ctx.pick([(MIB, 9), (20 * MIB, 5), (100 * MIB, 3)], [(MIB, 3), (3 * MIB, 2)])
    out: list[Figure] = []
    for backend in ctx.backends:
        async with ctx.vault(backend, "restore") as (vault, _url):
            for size, reps in plan:
                out += figures(backend, size, *await measure(ctx, vault, size, reps))
    return out
