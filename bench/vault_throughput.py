"""Vault throughput: many sessions on a few Sync streams, each session sending
its next 4 KiB delta as soon as the previous one is acked.

Reference: raw single-session CAS UPDATE + INSERT + COMMIT transactions on
as many connections as the vault's pool may open (8 + 8 overflow), over the
same number of sessions, in the same database. Rounds alternate vault, raw.
"""

from __future__ import annotations

import asyncio
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from bench.client import Session, SyncStream, new_sessions
from bench.context import Context
from bench.databases import RawCas
from bench.figures import Figure, Goal, percentile
from bench.vaultproc import VaultProcess

RECORD_BYTES = 4096
RAW_CONNECTIONS = 16
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Tally:
    records: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.records / self.seconds

    def add(self, latencies: list[float], seconds: float) -> None:
        self.latencies += latencies
        self.records += len(latencies)
        self.seconds += seconds


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime


async def _stream_round(stream: SyncStream, sessions: list[Session], per_session: int) -> list[float]:
    """Keep one record in flight per session until each has `per_session` acked."""
    by_id = {s.session_id: s for s in sessions}
    left = {s.session_id: per_session for s in sessions}
    sent: dict[str, float] = {}
    latencies: list[float] = []

    async def send(s: Session) -> None:
        sent[s.session_id] = time.perf_counter()
        await stream.send(s.session_id, s.epoch, s.version, os.urandom(RECORD_BYTES))

    for s in sessions:
        await send(s)
    while sent:
        ack = await stream.ack()
        latencies.append(time.perf_counter() - sent.pop(ack.session_id))
        session = by_id[ack.session_id]
        session.version = ack.version
        left[ack.session_id] -= 1
        if left[ack.session_id]:
            await send(session)
    return latencies


async def vault_round(streams: list[SyncStream], groups: list[list[Session]], per_session: int) -> tuple[list, float]:
    start = time.perf_counter()
    results = await asyncio.gather(*(_stream_round(st, g, per_session) for st, g in zip(streams, groups, strict=True)))
    return [x for r in results for x in r], time.perf_counter() - start


def _raw_worker(raw: RawCas, per_session: int) -> list[float]:
    out = []
    for _ in range(per_session):
        for sid in raw.versions:
            data = os.urandom(RECORD_BYTES)
            start = time.perf_counter()
            raw.commit(sid, data)
            out.append(time.perf_counter() - start)
    return out


class RawPool:
    """RAW_CONNECTIONS connections (opened up front), each owning a share of the sessions."""

    def __init__(self, url: str, sessions: int) -> None:
        self.conns = [RawCas(url) for _ in range(RAW_CONNECTIONS)]
        for i in range(sessions):
            self.conns[i % RAW_CONNECTIONS].add_session(f"raw-{i}")
        self.threads = ThreadPoolExecutor(RAW_CONNECTIONS)

    def round(self, per_session: int) -> tuple[list[float], float]:
        start = time.perf_counter()
        results = list(self.threads.map(lambda raw: _raw_worker(raw, per_session), self.conns))
        return [x for r in results for x in r], time.perf_counter() - start

    def close(self) -> None:
        self.threads.shutdown()
        for raw in self.conns:
            raw.close()


@dataclass(frozen=True)
class Load:
    streams: int
    sessions_per_stream: int
    per_session: int  # records per session per round
    rounds: int


async def measure(vault: VaultProcess, url: str, load: Load) -> tuple[Tally, Tally, dict[str, float]]:
    """(vault tally, raw tally, vault process facts), rounds alternating vault, raw."""
    stub = vault.sync()
    groups = [await new_sessions(stub, f"tp{i}", load.sessions_per_stream, f"node-{i}") for i in range(load.streams)]
    streams = [await SyncStream(stub, f"node-{i}").open() for i in range(load.streams)]
    raw = await asyncio.to_thread(RawPool, url, load.streams * load.sessions_per_stream)
    ours, ref = Tally(), Tally()
    try:
        await vault_round(streams, groups, 1)  # warm-up: connections, caches
        await asyncio.to_thread(raw.round, 1)
        vault.reset_peak_rss()
        cpu0 = cpu_seconds(vault.pid)
        for _ in range(load.rounds):
            ours.add(*await vault_round(streams, groups, load.per_session))
            ref.add(*await asyncio.to_thread(raw.round, load.per_session))
        facts = {"cpu_us_per_record": (cpu_seconds(vault.pid) - cpu0) / ours.records * 1e6}
        facts["peak_rss_mib"] = vault.peak_rss_kib() / 1024
    finally:
        raw.close()
        for st in streams:
            await st.close()
    return ours, ref, facts


def figures(backend: str, load: Load, ours: Tally, ref: Tally, facts: dict[str, float]) -> list[Figure]:
    shape = f"{load.streams} streams x {load.sessions_per_stream} sessions, {ours.records} x 4 KiB"
    note = f"{shape}; reference: raw CAS commits on {RAW_CONNECTIONS} connections"
    name = f"vault_throughput.{backend}"
    return [
        Figure(f"{name}.records_per_s", ours.rate, "1/s", ref.rate, Goal(2000.0, at_most=False), note=note),
        Figure(
            f"{name}.p99", percentile(ours.latencies, 99) * 1e3, "ms", percentile(ref.latencies, 99) * 1e3, note=note
        ),
        Figure(f"{name}.vault_cpu_per_record", facts["cpu_us_per_record"], "us", note="vault process user+system CPU"),
        Figure(f"{name}.vault_peak_rss", facts["peak_rss_mib"], "MiB", note=f"vault VmHWM under load ({shape})"),
    ]


async def run(ctx: Context) -> list[Figure]:
    load = ctx.pick(Load(4, 50, 10, 3), Load(2, 5, 5, 1))
    out: list[Figure] = []
    for backend in ctx.backends:
        async with ctx.vault(backend, "throughput") as (vault, url):
            ours, ref, facts = await measure(vault, url, load)
        out += figures(backend, load, ours, ref, facts)
    return out
