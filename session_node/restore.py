"""Restore side: apply StoreDeltas to a store and rebuild a store file from snapshot + deltas.

Conflict semantics reproduce the source exactly:

* Upserts use ``INSERT ... ON CONFLICT(pk) DO UPDATE``, never ``INSERT OR REPLACE``: REPLACE deletes the
  old row first, and with foreign keys on that delete would cascade to the children of
  whatsmeow_device / whatsmeow_app_state_version, wiping rows the delta does not mention.
* whatsmeow itself uses ``INSERT OR REPLACE`` (e.g. on whatsmeow_lid_map), which at the source removes
  rows conflicting on *other* UNIQUE columns (lid_map.pn) without firing DELETE triggers, so no
  tombstone for them exists. Before each upsert, rows that conflict on a non-primary UNIQUE constraint
  are deleted here too: the upserted row holds that value now, so they cannot exist at the source.
* Tombstones delete by primary key with foreign keys on; the resulting cascades match the source,
  whose cascaded deletes were captured as tombstones anyway.

One transaction per delta: a delta is applied completely or not at all.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from sessionvault.v1 import store_delta_pb2

from session_node.capture import decode, from_sql_value
from session_node.snapshot import decompress_into, strip_private
from session_node.store import (
    StoreError,
    TableInfo,
    check_schema_supported,
    connect,
    create_store,
    load_schema,
    new_empty_store,
    quote,
    schema_version,
)

DeltaLike = store_delta_pb2.StoreDelta | bytes


class DeltaError(StoreError):
    """A delta does not fit the store (schema version, unknown table/column, bad key) or failed to apply."""


class IntegrityError(StoreError):
    """A rebuilt store fails ``PRAGMA integrity_check`` or ``PRAGMA foreign_key_check``."""


# ------------------------------------------------------------------------------------------ deltas


class _Statements:
    """SQL for one table, built once per delta (names are quoted: they come from the payload)."""

    def __init__(self, info: TableInfo) -> None:
        self.info = info
        t = quote(info.name)
        self.delete = f"DELETE FROM {t} WHERE " + " AND ".join(f"{quote(c)} IS ?" for c in info.pk)
        self._not_self = " AND NOT (" + " AND ".join(f"{quote(c)} IS ?" for c in info.pk) + ")"
        self._upserts: dict[tuple[str, ...], str] = {}

    def unique_conflicts(self, columns: tuple[str, ...]) -> list[tuple[str, tuple[str, ...]]]:
        """(DELETE statement, its UNIQUE columns) for each constraint the upserted columns cover.

        ``=`` rather than ``IS``: NULLs never conflict in a UNIQUE constraint, and must not be deleted.
        """
        out = []
        for cols in self.info.unique:
            if set(cols) <= set(columns):
                where = " AND ".join(f"{quote(c)} = ?" for c in cols)
                out.append((f"DELETE FROM {quote(self.info.name)} WHERE {where}{self._not_self}", cols))
        return out

    def upsert(self, columns: tuple[str, ...]) -> str:
        sql = self._upserts.get(columns)
        if sql is None:
            names = ", ".join(quote(c) for c in columns)
            marks = ", ".join("?" for _ in columns)
            pk = ", ".join(quote(c) for c in self.info.pk)
            rest = [c for c in columns if c not in self.info.pk]
            action = (
                "DO UPDATE SET " + ", ".join(f"{quote(c)} = excluded.{quote(c)}" for c in rest)
                if rest
                else "DO NOTHING"
            )
            sql = f"INSERT INTO {quote(self.info.name)} ({names}) VALUES ({marks}) ON CONFLICT ({pk}) {action}"
            self._upserts[columns] = sql
        return sql


def apply_delta(conn: sqlite3.Connection, delta: DeltaLike) -> int:
    """Apply one delta (a StoreDelta or an encoded payload) in one transaction; returns its change count.

    ``conn`` must have foreign keys on (``store.connect`` does) and must not have capture triggers
    installed, or the restore would record its own writes as changes.
    """
    if isinstance(delta, bytes | bytearray | memoryview):
        try:
            delta = decode(bytes(delta))
        except ValueError as e:
            raise DeltaError(str(e)) from e
    conn.execute("BEGIN IMMEDIATE")
    try:
        _check_version(conn, delta)
        statements: dict[str, _Statements] = {}
        schema = load_schema(conn)
        for i, change in enumerate(delta.changes):
            try:
                _apply_change(conn, schema, statements, change)
            except (sqlite3.Error, DeltaError) as e:
                raise DeltaError(f"change #{i} ({change.table}) does not apply: {e}") from e
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return len(delta.changes)


def _check_version(conn: sqlite3.Connection, delta: store_delta_pb2.StoreDelta) -> None:
    # Rows of another schema may miss columns or use different meanings; schema changes travel as
    # snapshots, so a mismatch means a missing snapshot, not something to paper over.
    have = schema_version(conn)
    if delta.schema_version != have:
        raise DeltaError(f"delta is for whatsmeow schema v{delta.schema_version}, the store is v{have}")


def _apply_change(
    conn: sqlite3.Connection,
    schema: dict[str, TableInfo],
    statements: dict[str, _Statements],
    change: store_delta_pb2.RowChange,
) -> None:
    info = schema.get(change.table)
    if info is None:
        raise DeltaError(f"unknown table {change.table!r}")
    st = statements.get(change.table) or statements.setdefault(change.table, _Statements(info))
    key = [from_sql_value(v) for v in change.key]
    if len(key) != len(info.pk):
        raise DeltaError(f"key has {len(key)} values, the primary key {len(info.pk)} columns")
    if change.deleted:
        conn.execute(st.delete, key)
        return
    columns, values = _row(info, change)
    row = dict(zip(columns, values, strict=True))
    if [row[c] for c in info.pk] != key:
        raise DeltaError("key does not match the primary-key columns of the row")
    for sql, cols in st.unique_conflicts(columns):
        conn.execute(sql, [row[c] for c in cols] + key)
    conn.execute(st.upsert(columns), values)


def _row(info: TableInfo, change: store_delta_pb2.RowChange) -> tuple[tuple[str, ...], list[object]]:
    columns = tuple(change.columns)
    if len(columns) != len(change.values):
        raise DeltaError(f"{len(columns)} column names but {len(change.values)} values")
    unknown = set(columns) - set(info.columns)
    if unknown:
        raise DeltaError(f"unknown columns {sorted(unknown)}")
    if len(set(columns)) != len(columns) or not set(info.pk) <= set(columns):
        raise DeltaError("columns repeat or miss a primary-key column")
    return columns, [from_sql_value(v) for v in change.values]


# ------------------------------------------------------------------------------------------ rebuild


def rebuild_store(
    target_path: str | os.PathLike[str],
    snapshot: Iterable[bytes] | None,
    deltas: Iterable[DeltaLike],
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    finish: Callable[[sqlite3.Connection], None] | None = None,
) -> Path:
    """Build the store at ``target_path`` from a snapshot stream (or, for a new session, an empty
    neonize-created store) plus the deltas after it, then atomically put it in place.

    The file is built next to the target, verified (integrity_check, foreign_key_check, a schema
    neonize can open), fsynced and renamed over the target; on any failure the target is untouched.
    ``cache_dir`` enables the once-per-process empty template instead of one neonize run per call.
    ``finish`` runs on the verified file before it is fsynced (the node installs capture and its
    sync state there), so the store appears in place complete, with one fsync for all of it.
    The caller guarantees no process has the target open (Go would keep writing the old inode).
    """
    target = Path(target_path).absolute()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _fresh_temp(target)
    try:
        _initial_file(tmp, snapshot, cache_dir)
        _apply_all(tmp, deltas, finish)
        _fsync_file(tmp)
        _remove_sidecars(target)  # a stale hot journal would be "rolled back" into the new file
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    except BaseException:
        _remove_sidecars(tmp)
        tmp.unlink(missing_ok=True)
        raise
    return target


def _fresh_temp(target: Path) -> Path:
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.rebuild-", dir=target.parent)
    os.close(fd)
    return Path(name)


def _initial_file(tmp: Path, snapshot: Iterable[bytes] | None, cache_dir: str | os.PathLike[str] | None) -> None:
    if snapshot is not None:
        with tmp.open("wb") as fh:
            decompress_into(snapshot, fh)
        return
    tmp.unlink()  # both creators refuse to overwrite
    if cache_dir is not None:
        new_empty_store(tmp, cache_dir)
    else:
        create_store(tmp)


def _apply_all(tmp: Path, deltas: Iterable[DeltaLike], finish: Callable[[sqlite3.Connection], None] | None) -> None:
    conn = connect(tmp)
    try:
        # No fsync per transaction: the file is fsynced as a whole before it is renamed into place,
        # and until then a crash leaves only a temp file that nothing reads.
        conn.execute("PRAGMA synchronous=OFF")
        try:
            check_schema_supported(conn)
        except sqlite3.DatabaseError as e:  # "file is not a database", "malformed", ...
            raise IntegrityError(f"restored file is not a usable whatsmeow store: {e}") from e
        conn.execute("BEGIN IMMEDIATE")
        strip_private(conn)  # triggers would log the restore's own writes
        conn.execute("COMMIT")
        for delta in deltas:
            apply_delta(conn, delta)
        verify_store(conn)
        if finish is not None:
            finish(conn)
    finally:
        conn.close()


def verify_store(conn: sqlite3.Connection) -> None:
    """Raise IntegrityError unless the store passes integrity_check and foreign_key_check."""
    problems = conn.execute("PRAGMA integrity_check").fetchall()
    if problems != [("ok",)]:
        raise IntegrityError(f"integrity_check failed: {[p[0] for p in problems[:10]]}")
    orphans = conn.execute("PRAGMA foreign_key_check").fetchall()
    if orphans:
        shown = [f"{table} rowid {rowid} -> {parent}" for table, rowid, parent, _fk in orphans[:10]]
        raise IntegrityError(f"foreign_key_check found {len(orphans)} orphan rows: {shown}")


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    # Makes the rename durable; not every platform lets a directory be opened, which is fine there.
    with contextlib.suppress(OSError):
        _fsync_file(path)


def _remove_sidecars(db: Path) -> None:
    for suffix in ("-journal", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
