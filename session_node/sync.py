"""Capture -> sync for one session: drain the changelog into deltas (or take a
snapshot), send them on the node's Sync stream, and forget the changelog rows
only once the vault has acked the version that holds them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from sessionvault.v1 import common_pb2 as pb

from session_node import capture, snapshot, state
from session_node.state import SyncState
from session_node.storeio import StoreLane
from session_node.vault_client import CHUNK_BYTES, FENCING_REASONS, Rejected, SyncStream, VaultUnavailable

log = logging.getLogger(__name__)

DEVICE_TABLE = "whatsmeow_device"


@dataclass(frozen=True)
class SyncSettings:
    cold_delay_s: float = 2.0  # cold tables (contacts, buffers...) may wait this long to batch
    drain_limit: int = 2000  # changelog rows per delta
    snapshot_every_deltas: int = 1000
    snapshot_every_bytes: int = 8 << 20


class Fenced(Exception):
    """The vault refused a write because this node no longer owns the session."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class SessionSync:
    """Ships one store's changes; one record in flight at a time (base = last ack)."""

    def __init__(
        self,
        session_id: str,
        store_path: Path,
        io: StoreLane,
        stream: SyncStream,
        epoch: Callable[[], int],
        settings: SyncSettings,
        reconcile: Callable[[], asyncio.Future] | None = None,
        on_ack: Callable[..., None] | None = None,
    ) -> None:
        self.session_id = session_id
        self.store_path = store_path
        self.io = io
        self.stream = stream
        self.epoch = epoch
        self.settings = settings
        self.reconcile = reconcile
        self.on_ack = on_ack  # --trace-acks: told of every acked record (session.py records it)
        self.conn: sqlite3.Connection | None = None
        self.state = SyncState()
        self.changed: asyncio.Event = asyncio.Event()
        self.snapshot_requested = False
        self.hold_device_delete = True  # a device tombstone may be a logout: wait for the worker's word
        self.holding_logout = False
        self.synced = asyncio.Event()  # set whenever nothing is pending
        self.stopping = False
        self.commits = 0
        self._cold_since: float | None = None

    async def open(self) -> None:
        self.conn = await self.io.open(self.store_path)
        self.state = await self.io.run(state.load, self.conn)
        self.changed = self.io.watch(self.conn)

    async def close(self) -> None:
        self.io.unwatch()
        if self.conn is not None:
            await self.io.close(self.conn)
            self.conn = None

    async def run(self) -> None:
        """Ship changes until ``stop()`` (or cancelled). Raises Fenced when the vault says we lost the session."""
        while not self.stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), self._cold_wait())
            self.changed.clear()
            while not self.stopping and await self.flush_once():
                pass

    def stop(self) -> None:
        """Make ``run()`` return after the record in flight, if any, is acked and its ack recorded.

        Cancelling ``run()`` mid-record instead would leave the record in flight on the node's
        stream (the next commit of this session would find it there) and, if the vault committed
        it, its ack unrecorded: a later record would then be taken for it by the STALE_VERSION
        reconciliation, and the changelog rows in between forgotten without reaching the vault.
        """
        self.stopping = True
        self.changed.set()

    def _cold_wait(self) -> float | None:
        if self._cold_since is None:
            return None
        return max(0.0, self._cold_since + self.settings.cold_delay_s - time.monotonic())

    async def flush_once(self, force: bool = False) -> bool:
        """Ship what is pending (one record). True if something was shipped and more may wait."""
        assert self.conn is not None
        if await self._snapshot_due():
            await self._send_snapshot()
            return True
        batch = await self.io.run(capture.drain, self.conn, self.settings.drain_limit)
        if batch.empty:
            self._cold_since = None
            self.synced.set()
            return False
        self.synced.clear()
        if batch.delta.schema_version and batch.delta.schema_version != self.state.schema_version:
            self.snapshot_requested = True  # whatsmeow upgraded its schema: ship the whole store
            return True
        if self.hold_device_delete and await self._may_be_logout(batch):
            self.holding_logout = True
            return False
        if not batch.hot and not force:
            now = time.monotonic()
            self._cold_since = self._cold_since or now
            if now - self._cold_since < self.settings.cold_delay_s:
                return False
        payload = capture.encode(batch.delta)
        version = await self._commit(pb.RECORD_KIND_DELTA, lambda: _pieces(payload))
        acked_t = time.time()
        new = replace(
            self.state,
            acked_version=version,
            epoch=self.epoch(),
            deltas_since_snapshot=self.state.deltas_since_snapshot + 1,
            bytes_since_snapshot=self.state.bytes_since_snapshot + len(payload),
        )
        await self.io.run(state.commit_ack, self.conn, batch.upto_seq, new)
        self.state = new
        self._cold_since = None
        self._traced("delta", version, len(payload), batch.upto_seq, acked_t)
        return True

    def _traced(self, kind: str, version: int, size: int, upto_seq: int, acked_t: float) -> None:
        if self.on_ack is not None:
            self.on_ack("record_acked", kind=kind, version=version, bytes=size, upto_seq=upto_seq, acked_t=acked_t)

    async def _may_be_logout(self, batch: capture.Batch) -> bool:
        """The batch deletes the device row, or it was cut by the drain limit, deletes rows, and the
        device row is gone: a logout's cascade is recorded children first, so a cut batch may hold
        only the children's tombstones, with the device's own further on in the changelog. An uncut
        batch holds every committed change (a cascade commits whole), so only a cut one that deletes
        something costs a look at the store."""
        deletes = [c for c in batch.delta.changes if c.deleted]
        if any(c.table == DEVICE_TABLE for c in deletes):
            return True
        return bool(deletes) and batch.more and not await self.io.run(_has_device, self.conn)

    async def _snapshot_due(self) -> bool:
        s = self.state
        due = (
            self.snapshot_requested
            or s.snapshot_version == 0
            or s.deltas_since_snapshot >= self.settings.snapshot_every_deltas
            or s.bytes_since_snapshot >= self.settings.snapshot_every_bytes
        )
        # An unpaired store (no device row, nothing synced yet) has nothing worth a snapshot.
        return due and (s.acked_version > 0 or await self.io.run(_has_device, self.conn))

    async def _send_snapshot(self) -> None:
        assert self.conn is not None
        snap = await asyncio.to_thread(snapshot.take_snapshot, self.store_path)
        try:
            version = await self._commit(pb.RECORD_KIND_SNAPSHOT, snap.chunks)
            acked_t = time.time()
        finally:
            snap.close()
        new = replace(
            self.state,
            acked_version=version,
            epoch=self.epoch(),
            snapshot_version=version,
            deltas_since_snapshot=0,
            bytes_since_snapshot=0,
            schema_version=snap.schema_version,
        )
        await self.io.run(state.commit_ack, self.conn, snap.covers_seq, new)
        self.state = new
        self.snapshot_requested = False
        self._traced("snapshot", version, snap.size, snap.covers_seq, acked_t)
        log.info("%s: snapshot v%d (%d bytes compressed)", self.session_id, version, snap.size)

    async def _commit(self, kind: int, chunks: Callable[[], Iterable[bytes]]) -> int:
        """Send until acked. A retry after a lost stream may find the record already
        committed: the lease's head (written under our epoch) tells."""
        base = self.state.acked_version
        while True:
            try:
                version = await self.stream.commit(self.session_id, base, self.epoch(), kind, chunks())
                self.commits += 1
                return version
            except VaultUnavailable:
                await self.stream.up.wait()
            except Rejected as rej:
                if rej.reason in FENCING_REASONS:
                    raise Fenced(rej.reason) from rej
                if rej.reason == "STALE_VERSION" and self.reconcile is not None:
                    lease = await self.reconcile()
                    if lease.head_version == base + 1 and lease.head_epoch == self.epoch():
                        return base + 1  # our record made it before the stream broke
                raise


def _pieces(payload: bytes) -> Iterator[bytes]:
    yield from (payload[i : i + CHUNK_BYTES] for i in range(0, max(len(payload), 1), CHUNK_BYTES))


def _has_device(conn: sqlite3.Connection) -> bool:
    return conn.execute(f"SELECT 1 FROM {DEVICE_TABLE} LIMIT 1").fetchone() is not None
