"""Restore on the node: real whatsmeow stores of about 1, 20 and 100 MiB (a fake paired device,
Signal sessions, contacts, keys), each held by the vault as one snapshot, taken over by a node
(`--driver none`, so no worker runs). Time: from the node's `lease_acquired` to its `store_ready`
(the Restore stream spooled to disk, the store rebuilt in a temp file, integrity and foreign-key
checks, capture and sync state installed, renamed into place). Memory: the node's peak RSS
(VmHWM) after the restore, against the same for the 1 MiB store: what a bigger store adds.

Reference: a plain copy of the same plaintext store file on local disk.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from bench.cold_start import seed_store, seed_vault
from bench.context import Context
from bench.figures import Figure, Goal, median
from bench.nodes import Node, node_backend, running_nodes, status_kib

MIB = 1 << 20
BYTES_PER_ROW = 1990  # simulate.Traffic.populate: a session + a contact row, measured
COPIES = 5


@dataclass(frozen=True)
class Size:
    label: str
    mib: float


def copy_time(source: Path, target_dir: Path) -> float:
    times = []
    target_dir.mkdir()
    for i in range(COPIES):
        start = time.perf_counter()
        shutil.copyfile(source, target_dir / f"{i}.sqlite3")
        times.append(time.perf_counter() - start)
    shutil.rmtree(target_dir)
    return median(times)


async def restore_on_node(ctx: Context, vault, size: Size, data: bytes) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """(seconds from lease to store ready, node peak RSS in MiB)."""
    name = f"restore-{size.label}"
    await seed_vault(vault, [name], data)
    node = Node(ctx, vault, f"restore-{size.label}", [name], "--driver", "none")
    async with running_nodes([node]):
        await node.wait_for(lambda n: n.count("store_ready") >= 1, "the store ready", 300)
        peak_kib = status_kib(node.pid, "VmHWM")
        acquired = node.events("lease_acquired")[0]["t"]
        ready = node.events("store_ready")[0]
    assert ready["decision"] == "restored", ready
    return ready["t"] - acquired, peak_kib / 1024


async def run(ctx: Context) -> list[Figure]:
    sizes = ctx.pick([Size("1MiB", 1), Size("20MiB", 20), Size("100MiB", 100)], [Size("1MiB", 1), Size("4MiB", 4)])
    out: list[Figure] = []
    peaks: dict[str, float] = {}
    async with ctx.vault(node_backend(ctx), "node-restore") as (vault, _url):
        for size in sizes:
            rows = max(1, int(size.mib * MIB / BYTES_PER_ROW))
            source, data = await asyncio.to_thread(seed_store, ctx, rows, f"node-restore-{size.label}")
            seconds, peak = await restore_on_node(ctx, vault, size, data)
            copy_s = await asyncio.to_thread(copy_time, source, ctx.workdir / f"copies-{size.label}")
            peaks[size.label] = peak
            shape = f"store {source.stat().st_size / MIB:.1f} MiB, snapshot {len(data) / MIB:.2f} MiB"
            out.append(
                Figure(
                    f"node_restore.{size.label}.time",
                    seconds * 1e3,
                    "ms",
                    reference=copy_s * 1e3,
                    goal=Goal(30.0) if size.mib == 1 else None,
                    note=f"{shape}; node lease_acquired -> store_ready; reference: plain copy of the store file",
                )
            )
    first, last = sizes[0].label, sizes[-1].label
    out.append(
        Figure(
            f"node_restore.peak_rss_growth_{last}_vs_{first}",
            peaks[last] - peaks[first],
            "MiB",
            goal=Goal(16.0),
            note=f"node VmHWM after restoring the {last} store minus after the {first} one "
            f"({peaks[first]:.0f} -> {peaks[last]:.0f} MiB): bounded by chunk size, not store size",
        )
    )
    return out
