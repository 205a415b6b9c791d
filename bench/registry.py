"""The scenarios, in run order. Adding one: a module with
`async def run(ctx: Context) -> list[Figure]`, and one line here."""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from bench.context import Context
from bench.figures import Figure


@dataclass(frozen=True)
class Scenario:
    name: str
    module: str
    summary: str
    cheap: bool = False  # runs in the test suite's smoke run (with --quick)

    def runner(self) -> Callable[[Context], Awaitable[list[Figure]]]:
        return importlib.import_module(self.module).run


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("crypto", "bench.crypto", "key derivation + encryption of a 4 KiB record", cheap=True),
        Scenario("vault_commit", "bench.vault_commit", "4 KiB record on a Sync stream to its ack", cheap=True),
        Scenario("vault_throughput", "bench.vault_throughput", "concurrent Sync streams, records/s", cheap=True),
        Scenario("restore", "bench.restore", "restore of 1/20/100 MiB to a file; vault peak RSS", cheap=True),
        Scenario("freshness", "bench.freshness", "worker commit of a hot row -> vault ack, light/heavy", cheap=True),
        Scenario("bytes_per_change", "bench.bytes_per_change", "bytes of a 1-row change in 1/20 MiB stores"),
        Scenario("node_throughput", "bench.node_throughput", "200 sessions on 4 nodes: changes/s, p99"),
        Scenario("node_restore", "bench.node_restore", "node restore of 1/20/100 MiB stores; node RSS", cheap=True),
        Scenario("cold_start", "bench.cold_start", "a node taking over 1000 sessions of 200 KiB"),
        Scenario("node_footprint", "bench.node_footprint", "supervisor RSS per session (1 vs 50)"),
    )
}
