"""Session rows: existence, state, head pointers and the lease fields."""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from vault_service.errors import not_found, precondition
from vault_service.storage.engine import now_us_expr
from vault_service.storage.schema import STATE_ACTIVE, STATE_DELETED, sessions


@dataclass(frozen=True)
class SessionRow:
    tenant: str
    session_id: str
    state: int
    salt: bytes
    head_version: int
    snapshot_version: int
    snapshot_bytes: int
    lease_owner: str | None
    lease_epoch: int
    lease_expires_us: int
    created_us: int
    last_sync_us: int | None
    deleted_us: int | None
    head_epoch: int
    move_target: str | None
    move_expires_us: int | None
    now_us: int  # the database clock when the row was read

    def lease_live(self) -> bool:
        return self.lease_owner is not None and self.lease_expires_us > self.now_us

    def reserved_for(self) -> str | None:
        """The node a pending move reserves this session for, if any."""
        if self.move_target and self.move_expires_us and self.move_expires_us > self.now_us:
            return self.move_target
        return None


def _key(tenant: str, session_id: str) -> sa.ColumnElement[bool]:
    return sa.and_(sessions.c.tenant == tenant, sessions.c.session_id == session_id)


def get(conn: Connection, tenant: str, session_id: str, for_update: bool = False) -> SessionRow | None:
    """The row with the database clock read in the same statement."""
    query = sa.select(sessions, now_us_expr(conn).label("now_us")).where(_key(tenant, session_id))
    if for_update:
        query = query.with_for_update()
    row = conn.execute(query).mappings().first()
    return SessionRow(**row) if row else None


def require(conn: Connection, tenant: str, session_id: str, for_update: bool = False) -> SessionRow:
    row = get(conn, tenant, session_id, for_update)
    if row is None:
        raise not_found("SESSION_NOT_FOUND", f"session {session_id!r} does not exist", session_id=session_id)
    return row


def require_not_deleted(row: SessionRow) -> None:
    if row.state == STATE_DELETED:
        raise precondition("SESSION_DELETED", f"session {row.session_id!r} is deleted", session_id=row.session_id)


def insert(
    conn: Connection, tenant: str, session_id: str, salt: bytes, owner: str, expires_us: int, now_us: int
) -> None:
    conn.execute(
        sessions.insert().values(
            tenant=tenant,
            session_id=session_id,
            state=STATE_ACTIVE,
            salt=salt,
            head_version=0,
            snapshot_version=0,
            snapshot_bytes=0,
            lease_owner=owner,
            lease_epoch=1,
            lease_expires_us=expires_us,
            created_us=now_us,
        )
    )


def update(conn: Connection, row: SessionRow, **values: object) -> None:
    """Update guarded by the epoch read in `row` (compare-and-set)."""
    result = conn.execute(
        sessions.update()
        .where(_key(row.tenant, row.session_id), sessions.c.lease_epoch == row.lease_epoch)
        .values(**values)
    )
    if result.rowcount != 1:
        raise precondition("CONCURRENT_UPDATE", f"session {row.session_id!r} changed concurrently; retry")


def page(conn: Connection, tenant: str, after: str, limit: int) -> list[SessionRow]:
    query = (
        sa.select(sessions, now_us_expr(conn).label("now_us"))
        .where(sessions.c.tenant == tenant, sessions.c.session_id > after)
        .order_by(sessions.c.session_id)
        .limit(limit)
    )
    return [SessionRow(**r) for r in conn.execute(query).mappings()]


def delete(conn: Connection, tenant: str, session_id: str) -> None:
    conn.execute(sessions.delete().where(_key(tenant, session_id)))
