"""Records (one per committed version) and their encrypted chunks.

Write protocol: chunks are inserted first (under a random record id nobody
reads), then the version is published in one transaction that moves the
session's head with a compare-and-set on (head version, lease epoch) and
inserts the record row. Until then the chunks are invisible; if the publish
fails they are deleted (or collected later as orphans).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from vault_service.errors import not_found, precondition
from vault_service.storage import leases, sessions
from vault_service.storage.engine import now_us_sql
from vault_service.storage.schema import (
    STATE_ACTIVE,
    STATE_LOGGED_OUT,
    chunks,
    records,
)
from vault_service.storage.schema import (
    sessions as sessions_table,
)
from vault_service.storage.sessions import SessionRow

KIND_SNAPSHOT = 1
KIND_DELTA = 2


@dataclass(frozen=True)
class RecordRow:
    version: int
    record_id: bytes
    kind: int
    size_bytes: int
    chunk_count: int
    key_id: str
    node_id: str
    lease_epoch: int
    created_us: int


@dataclass(frozen=True)
class NewRecord:
    session_id: str
    node_id: str
    lease_epoch: int
    base_version: int
    kind: int
    record_id: bytes
    size_bytes: int
    chunk_count: int
    key_id: str

    @property
    def version(self) -> int:
        return self.base_version + 1


def check_writable(row: SessionRow, rec: NewRecord) -> None:
    """Why `rec` may not be committed on top of `row`, as a VaultError."""
    leases.check_owner(row, rec.node_id, rec.lease_epoch)
    if row.state == STATE_LOGGED_OUT and rec.kind != KIND_SNAPSHOT:
        # The emptied store of a logged-out device must never overwrite the
        # last good state; only a fresh pairing (a snapshot) reactivates it.
        raise precondition("SESSION_LOGGED_OUT", f"session {row.session_id!r} is logged out", session_id=row.session_id)
    if rec.base_version != row.head_version:
        raise precondition(
            "STALE_VERSION",
            f"base version {rec.base_version} is not the head version {row.head_version}",
            session_id=row.session_id,
            head_version=str(row.head_version),
        )


def insert_chunk(
    conn: Connection, tenant: str, session_id: str, record_id: bytes, index: int, data: bytes, now_us: int
) -> None:
    conn.execute(
        chunks.insert().values(
            tenant=tenant,
            session_id=session_id,
            record_id=record_id,
            chunk_index=index,
            data=data,
            created_us=now_us,
        )
    )


def publish(conn: Connection, tenant: str, row: SessionRow, rec: NewRecord) -> None:
    """Move the head to rec.version and insert the record row, or raise and change nothing."""
    check_writable(row, rec)
    values: dict[str, object] = {"head_version": rec.version, "head_epoch": rec.lease_epoch, "last_sync_us": row.now_us}
    if rec.kind == KIND_SNAPSHOT:
        values.update(snapshot_version=rec.version, snapshot_bytes=rec.size_bytes, state=STATE_ACTIVE)
    cas = conn.execute(
        sessions_table.update()
        .where(
            sessions_table.c.tenant == tenant,
            sessions_table.c.session_id == rec.session_id,
            sessions_table.c.head_version == rec.base_version,
            sessions_table.c.lease_epoch == rec.lease_epoch,
            sessions_table.c.lease_owner == rec.node_id,
        )
        .values(**values)
    )
    if cas.rowcount != 1:
        raise precondition(
            "STALE_VERSION", f"session {rec.session_id!r} moved on concurrently", session_id=rec.session_id
        )
    conn.execute(
        records.insert().values(
            tenant=tenant,
            session_id=rec.session_id,
            version=rec.version,
            record_id=rec.record_id,
            kind=rec.kind,
            size_bytes=rec.size_bytes,
            chunk_count=rec.chunk_count,
            key_id=rec.key_id,
            node_id=rec.node_id,
            lease_epoch=rec.lease_epoch,
            created_us=row.now_us,
        )
    )


_FAST_SQL = {
    "cas": "UPDATE sessions SET head_version = :version, head_epoch = :epoch, last_sync_us = {now}{snap} "
    "WHERE tenant = :tenant AND session_id = :session_id AND head_version = :base AND lease_epoch = :epoch "
    "AND lease_owner = :node AND lease_expires_us > {now} AND salt = :salt AND state IN (:state_a, :state_b)",
    "chunk": "INSERT INTO chunks (tenant, session_id, record_id, chunk_index, data, created_us) "
    "VALUES (:tenant, :session_id, :record_id, 0, :data, {now})",
    "record": "INSERT INTO records (tenant, session_id, version, record_id, kind, size_bytes, chunk_count, key_id, "
    "node_id, lease_epoch, created_us) VALUES (:tenant, :session_id, :version, :record_id, :kind, :size, 1, "
    ":key_id, :node, :epoch, {now})",
}
_fast_statements: dict[tuple[str, bool], tuple[str, str, str]] = {}


def _fast(conn: Connection, snapshot: bool) -> tuple[str, str, str]:
    """The one-chunk commit's statements in the driver's own parameter style. They run on
    the DB-API cursor: SQLAlchemy's per-execute work cost more CPU than the database's
    (measured: ~0.25 ms per statement against a 0.26 ms round trip)."""
    key = (conn.dialect.name, snapshot)
    if key not in _fast_statements:
        now = now_us_sql(conn)
        snap = f", snapshot_version = :version, snapshot_bytes = :size, state = {STATE_ACTIVE}" if snapshot else ""
        sql = (_FAST_SQL[k].format(now=now, snap=snap) for k in ("cas", "chunk", "record"))
        if conn.dialect.paramstyle == "pyformat":  # PyMySQL; sqlite3 takes :name as it is
            sql = (re.sub(r":(\w+)", r"%(\1)s", q) for q in sql)
        cas, chunk, record = sql
        _fast_statements[key] = (cas, chunk, record)
    return _fast_statements[key]


@dataclass(frozen=True)
class FastRecord:
    tenant: str
    rec: NewRecord
    salt: bytes
    sealed: bytes


def fast_commit_many(conn: Connection, batch: list[FastRecord]) -> list[bool]:
    """Publish one-chunk records in one transaction: per record a compare-and-set (it takes
    the row lock and checks lease, head, state and salt at once), then one multi-row insert
    each for chunks and records. Returns, per record, whether its CAS hit; a record that
    missed wrote nothing, and the caller sends it down the slow path, which says why."""
    dbapi_error = conn.dialect.loaded_dbapi.Error
    cursor = conn.connection.cursor()  # inside the transaction `conn` began
    try:
        hits = []
        for f in batch:
            cursor.execute(_fast(conn, f.rec.kind == KIND_SNAPSHOT)[0], _cas_params(f))
            hits.append(cursor.rowcount == 1)
        published = [f for f, hit in zip(batch, hits, strict=True) if hit]
        if published:
            _, chunk, record = _fast(conn, False)
            cursor.executemany(chunk, [_chunk_params(f) for f in published])
            cursor.executemany(record, [_record_params(f) for f in published])
    except dbapi_error as exc:  # as SQLAlchemy would raise it, so run_tx retries TiDB's conflict codes
        raise sa.exc.DBAPIError.instance(None, None, exc, dbapi_error, dialect=conn.dialect) from exc
    finally:
        cursor.close()
    return hits


def _cas_params(f: FastRecord) -> dict:
    snapshot = f.rec.kind == KIND_SNAPSHOT
    return {
        "tenant": f.tenant,
        "session_id": f.rec.session_id,
        "version": f.rec.version,
        "base": f.rec.base_version,
        "epoch": f.rec.lease_epoch,
        "node": f.rec.node_id,
        "salt": f.salt,
        "size": f.rec.size_bytes,
        # The emptied store of a logged-out device must not land; a fresh pairing (snapshot) may.
        "state_a": STATE_ACTIVE,
        "state_b": STATE_LOGGED_OUT if snapshot else STATE_ACTIVE,
    }


def _chunk_params(f: FastRecord) -> dict:
    return {"tenant": f.tenant, "session_id": f.rec.session_id, "record_id": f.rec.record_id, "data": f.sealed}


def _record_params(f: FastRecord) -> dict:
    rec = f.rec
    return {
        "tenant": f.tenant,
        "session_id": rec.session_id,
        "version": rec.version,
        "record_id": rec.record_id,
        "kind": rec.kind,
        "size": rec.size_bytes,
        "key_id": rec.key_id,
        "node": rec.node_id,
        "epoch": rec.lease_epoch,
    }


def _of(tenant: str, session_id: str) -> sa.ColumnElement[bool]:
    return sa.and_(records.c.tenant == tenant, records.c.session_id == session_id)


def _rows(conn: Connection, query: sa.Select) -> list[RecordRow]:
    return [RecordRow(**{k: r[k] for k in RecordRow.__dataclass_fields__}) for r in conn.execute(query).mappings()]


def for_restore(conn: Connection, tenant: str, row: SessionRow, version: int) -> list[RecordRow]:
    """The newest snapshot at or below `version` and every delta after it, in order."""
    target = version or row.head_version
    if target > row.head_version:
        raise not_found(
            "VERSION_NOT_FOUND",
            f"version {target} does not exist (head is {row.head_version})",
            head_version=str(row.head_version),
        )
    if target == 0:
        return []
    base = conn.execute(
        sa.select(sa.func.max(records.c.version)).where(
            _of(tenant, row.session_id), records.c.version <= target, records.c.kind == KIND_SNAPSHOT
        )
    ).scalar()
    start = base or 1
    rows = _rows(
        conn,
        sa.select(records)
        .where(_of(tenant, row.session_id), records.c.version >= start, records.c.version <= target)
        .order_by(records.c.version),
    )
    if not rows or rows[0].version != start:
        raise not_found("VERSION_PRUNED", f"version {target} is older than the kept history")
    return rows


def chunk(conn: Connection, tenant: str, session_id: str, record_id: bytes, index: int) -> bytes | None:
    return conn.execute(
        sa.select(chunks.c.data).where(
            chunks.c.tenant == tenant,
            chunks.c.session_id == session_id,
            chunks.c.record_id == record_id,
            chunks.c.chunk_index == index,
        )
    ).scalar()


def exists(conn: Connection, tenant: str, session_id: str, version: int, record_id: bytes) -> bool:
    found = conn.execute(
        sa.select(records.c.version).where(
            _of(tenant, session_id), records.c.version == version, records.c.record_id == record_id
        )
    ).first()
    return found is not None


def delete_chunks(conn: Connection, tenant: str, session_id: str, record_id: bytes) -> None:
    conn.execute(
        chunks.delete().where(
            chunks.c.tenant == tenant, chunks.c.session_id == session_id, chunks.c.record_id == record_id
        )
    )


def prune(conn: Connection, tenant: str, session_id: str, keep_snapshots: int) -> int:
    """Drop records older than the `keep_snapshots`-th newest snapshot; returns how many."""
    kept = (
        conn.execute(
            sa.select(records.c.version)
            .where(_of(tenant, session_id), records.c.kind == KIND_SNAPSHOT)
            .order_by(records.c.version.desc())
            .limit(keep_snapshots)
        )
        .scalars()
        .all()
    )
    if len(kept) < keep_snapshots:
        return 0
    cutoff = kept[-1]
    old = (
        conn.execute(sa.select(records.c.record_id).where(_of(tenant, session_id), records.c.version < cutoff))
        .scalars()
        .all()
    )
    for record_id in old:
        delete_chunks(conn, tenant, session_id, record_id)
    conn.execute(records.delete().where(_of(tenant, session_id), records.c.version < cutoff))
    return len(old)


def history(conn: Connection, tenant: str, session_id: str, below: int, limit: int) -> list[RecordRow]:
    query = sa.select(records).where(_of(tenant, session_id)).order_by(records.c.version.desc()).limit(limit)
    if below:
        query = query.where(records.c.version < below)
    return _rows(conn, query)


def totals(conn: Connection, tenant: str, session_id: str) -> tuple[int, int]:
    """(record count, plaintext bytes)."""
    count, size = conn.execute(
        sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(records.c.size_bytes), 0)).where(
            _of(tenant, session_id)
        )
    ).one()
    return int(count), int(size)


def destroy(conn: Connection, tenant: str, session_id: str) -> int:
    count, _ = totals(conn, tenant, session_id)
    conn.execute(chunks.delete().where(chunks.c.tenant == tenant, chunks.c.session_id == session_id))
    conn.execute(records.delete().where(_of(tenant, session_id)))
    sessions.delete(conn, tenant, session_id)
    return count


def collect_orphans(conn: Connection, older_than_us: int) -> int:
    """Delete chunks of uploads that were never published (crashed vault, cut stream)."""
    published = sa.select(records.c.version).where(
        records.c.tenant == chunks.c.tenant,
        records.c.session_id == chunks.c.session_id,
        records.c.record_id == chunks.c.record_id,
    )
    result = conn.execute(chunks.delete().where(chunks.c.created_us < older_than_us, ~sa.exists(published)))
    return result.rowcount
