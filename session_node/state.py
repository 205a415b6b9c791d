"""Node-private sync state, kept inside the store file itself.

`sessionvault_state` lives beside the changelog in the whatsmeow store (the
snapshot strips every `sessionvault_*` object), so "the vault acked version V"
and "the changelog rows of V are gone" are one SQLite transaction: a crash
can never leave one without the other.
"""

from __future__ import annotations

import sqlite3
from dataclasses import asdict, dataclass

from session_node.capture import CHANGELOG
from session_node.store import PRIVATE_PREFIX

STATE_TABLE = f"{PRIVATE_PREFIX}state"


@dataclass
class SyncState:
    acked_version: int = 0  # newest version the vault acked for this store
    epoch: int = 0  # lease epoch of the last acked write
    snapshot_version: int = 0  # newest acked snapshot of this store's lineage (0: none yet)
    deltas_since_snapshot: int = 0
    bytes_since_snapshot: int = 0
    schema_version: int = 0  # whatsmeow schema version of the last acked record


def ensure_table(conn: sqlite3.Connection) -> None:
    conn.execute(f"CREATE TABLE IF NOT EXISTS {STATE_TABLE} (key TEXT PRIMARY KEY, value INTEGER NOT NULL)")


def load(conn: sqlite3.Connection) -> SyncState:
    ensure_table(conn)
    rows = dict(conn.execute(f"SELECT key, value FROM {STATE_TABLE}").fetchall())
    known = SyncState.__dataclass_fields__
    return SyncState(**{k: int(v) for k, v in rows.items() if k in known})


def _write(conn: sqlite3.Connection, state: SyncState) -> None:
    conn.executemany(
        f"INSERT INTO {STATE_TABLE} (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        list(asdict(state).items()),
    )


def save(conn: sqlite3.Connection, state: SyncState) -> None:
    ensure_table(conn)
    conn.execute("BEGIN IMMEDIATE")
    try:
        _write(conn, state)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def commit_ack(conn: sqlite3.Connection, upto_seq: int, state: SyncState) -> None:
    """Drop the changelog rows the vault now holds and record the new state, atomically."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(f"DELETE FROM {CHANGELOG} WHERE seq <= ?", (upto_seq,))
        _write(conn, state)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
