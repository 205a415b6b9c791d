"""Restore before start: make the session's store on disk the newest state,
with capture installed, before its worker may run.

Decision (the local store's recorded ack vs. the vault's head at lease time):
- no local store: restore the vault's state, or create an empty store for a new session;
- local ack == head: keep it (a restart of the same node); its changelog still
  holds whatever the vault has not acked, and it will be shipped;
- local ack < head but the head was written under the epoch of our last write:
  the vault acked records we never recorded (crash between ack and commit):
  keep the store, take the head as acked;
- local ack > head (the vault lost versions, e.g. a destroyed session): keep it
  and re-seed the vault with a snapshot;
- otherwise another node moved the session on: the local store is stale. It is
  replaced; if it still held unshipped changes it is first set aside.
"""

from __future__ import annotations

import enum
import logging
import os
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from sessionvault.v1 import common_pb2 as pb

from session_node import capture, restore, state, store
from session_node.state import SyncState
from session_node.storeio import StoreLane
from session_node.vault_client import VaultClient

log = logging.getLogger(__name__)

SPOOL_CHUNK = 1 << 20


class Decision(enum.Enum):
    KEPT = "kept"
    RESTORED = "restored"
    CREATED = "created"


@dataclass(frozen=True)
class Prepared:
    decision: Decision
    vault_state: int  # sessionvault.v1.SessionState as the vault reported it
    set_aside: Path | None = None


@dataclass(frozen=True)
class _Local:
    state: SyncState
    pending: int


def _read_local(path: Path) -> _Local | None:
    try:
        conn = store.connect(path)
    except store.StoreError:
        return None
    try:
        has_log = conn.execute("SELECT 1 FROM sqlite_master WHERE name = ?", (capture.CHANGELOG,)).fetchone()
        pending = capture.pending(conn) if has_log else 0
        return _Local(state.load(conn), pending)
    except sqlite3.DatabaseError:
        return None
    finally:
        conn.close()


def _keep(local: _Local, lease: pb.Lease) -> SyncState | None:
    """The state to continue with if the local store is kept, else None."""
    st, head = local.state, lease.head_version
    if st.acked_version == head:
        return st
    if st.acked_version < head and st.epoch and lease.head_epoch == st.epoch:
        return replace(st, acked_version=head)
    if st.acked_version > head:
        return replace(st, acked_version=head, snapshot_version=0)  # next record: a full snapshot
    return None


async def prepare(
    client: VaultClient, io: StoreLane, session_id: str, store_path: Path, lease: pb.Lease, cache_dir: Path
) -> Prepared:
    local = await io.run(_read_local, store_path)
    if local is not None and (kept := _keep(local, lease)) is not None:
        await io.run(_install, store_path, kept)
        return Prepared(Decision.KEPT, pb.SESSION_STATE_ACTIVE)
    aside = _set_aside(store_path) if local is not None and local.pending else None
    if aside:
        log.warning("%s: local store had %d unshipped changes but the vault moved on; kept at %s",
                    session_id, local.pending if local else 0, aside)  # fmt: skip
    if lease.head_version == 0:
        await io.run(_create, store_path, cache_dir)
        return Prepared(Decision.CREATED, pb.SESSION_STATE_ACTIVE, aside)
    restored = await client.restore(session_id, store_path.parent)
    try:
        await io.run(_rebuild, store_path, restored, cache_dir)
    finally:
        if restored.snapshot_path:
            restored.snapshot_path.unlink(missing_ok=True)
    return Prepared(Decision.RESTORED, restored.state, aside)


def _set_aside(store_path: Path) -> Path:
    target = store_path.with_name(f"set-aside-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}.sqlite3")
    os.replace(store_path, target)
    return target


def _install(store_path: Path, st: SyncState) -> None:
    conn = store.connect(store_path)
    try:
        _install_on(conn, st)
    finally:
        conn.close()


def _install_on(conn: sqlite3.Connection, st: SyncState) -> None:
    capture.install_triggers(conn)
    state.save(conn, st)


def _create(store_path: Path, cache_dir: Path) -> None:
    restore.rebuild_store(store_path, None, [], cache_dir=cache_dir, finish=lambda conn: _install_on(conn, SyncState()))


def _spooled(path: Path) -> Iterator[bytes]:
    with path.open("rb") as fh:
        while chunk := fh.read(SPOOL_CHUNK):
            yield chunk


def _rebuild(store_path: Path, restored, cache_dir: Path) -> None:  # type: ignore[no-untyped-def]
    snap = _spooled(restored.snapshot_path) if restored.snapshot_path else None

    def finish(conn: sqlite3.Connection) -> None:  # capture and sync state go in before the rename
        st = SyncState(
            acked_version=restored.version,
            epoch=0,
            snapshot_version=restored.version if restored.snapshot_path else 0,
            deltas_since_snapshot=len(restored.deltas),
            schema_version=store.schema_version(conn) or 0,
        )
        _install_on(conn, st)

    restore.rebuild_store(store_path, snap, restored.deltas, cache_dir=cache_dir, finish=finish)
