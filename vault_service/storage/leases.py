"""Single-owner leases with fencing epochs, judged by the database clock.

The lease lives in the session row, so a record's publish can check "this
writer still owns the session" in the same UPDATE that moves the head.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.engine import Connection

from vault_service.errors import precondition
from vault_service.storage import audit, sessions
from vault_service.storage.engine import db_now_us
from vault_service.storage.sessions import SessionRow


@dataclass(frozen=True)
class LeaseView:
    session_id: str
    node_id: str | None
    epoch: int
    expires_us: int
    head_version: int
    head_epoch: int = 0


def view(row: SessionRow, **changes: object) -> LeaseView:
    lease = LeaseView(
        row.session_id, row.lease_owner, row.lease_epoch, row.lease_expires_us, row.head_version, row.head_epoch
    )
    return LeaseView(**{**lease.__dict__, **changes})  # type: ignore[arg-type]


def acquire(
    conn: Connection, tenant: str, session_id: str, node_id: str, ttl_us: int, new_salt: bytes, actor: str
) -> tuple[bool, LeaseView]:
    """Grant, extend or refuse; creates the session on first use."""
    row = sessions.get(conn, tenant, session_id, for_update=True)
    if row is None:
        now = db_now_us(conn)
        sessions.insert(conn, tenant, session_id, new_salt, node_id, now + ttl_us, now)
        audit.record(conn, tenant, now, actor, "lease.acquired", session_id, node=node_id, epoch=1, created=True)
        return True, LeaseView(session_id, node_id, 1, now + ttl_us, 0)
    sessions.require_not_deleted(row)
    expires = row.now_us + ttl_us
    reserved = row.reserved_for()
    if (row.lease_live() and row.lease_owner != node_id) or (reserved and reserved != node_id):
        return False, view(row)
    if row.lease_live():
        sessions.update(conn, row, lease_expires_us=expires)
        return True, view(row, expires_us=expires)
    epoch = row.lease_epoch + 1
    sessions.update(
        conn,
        row,
        lease_owner=node_id,
        lease_epoch=epoch,
        lease_expires_us=expires,
        move_target=None,
        move_expires_us=None,
    )
    # taken_over: the previous owner's lease ran out without a release (crash, pause, cut off).
    action = "lease.moved" if reserved else "lease.taken_over" if row.lease_owner else "lease.acquired"
    audit.record(
        conn, tenant, row.now_us, actor, action, session_id,
        node=node_id, epoch=epoch, previous_owner=row.lease_owner, previous_expiry_us=row.lease_expires_us,
    )  # fmt: skip
    return True, view(row, node_id=node_id, epoch=epoch, expires_us=expires)


def check_owner(row: SessionRow, node_id: str, epoch: int, live: bool = True) -> None:
    """Raise unless `node_id` holds the lease at `epoch` (and it has not run out)."""
    sessions.require_not_deleted(row)
    meta = {"session_id": row.session_id, "current_epoch": str(row.lease_epoch)}
    if epoch != row.lease_epoch:
        raise precondition("STALE_EPOCH", f"lease epoch {epoch} is stale (current epoch {row.lease_epoch})", **meta)
    if row.lease_owner != node_id:
        raise precondition("LEASE_NOT_HELD", f"node {node_id!r} does not hold the lease", **meta)
    if live and not row.lease_live():
        raise precondition("LEASE_EXPIRED", f"the lease of node {node_id!r} has expired", **meta)


def renew(conn: Connection, tenant: str, session_id: str, node_id: str, epoch: int, ttl_us: int) -> LeaseView:
    row = sessions.require(conn, tenant, session_id, for_update=True)
    check_owner(row, node_id, epoch)
    expires = row.now_us + ttl_us
    sessions.update(conn, row, lease_expires_us=expires)
    left_us = row.lease_expires_us - row.now_us
    if left_us < ttl_us // 3:  # nodes renew at TTL/3 elapsed; less than a third left means it was late
        audit.record(conn, tenant, row.now_us, node_id, "lease.renewed_late", session_id, epoch=epoch, left_us=left_us)
    return view(row, expires_us=expires)


def release(conn: Connection, tenant: str, session_id: str, node_id: str, epoch: int, actor: str) -> LeaseView:
    row = sessions.require(conn, tenant, session_id, for_update=True)
    check_owner(row, node_id, epoch, live=False)
    sessions.update(conn, row, lease_owner=None, lease_expires_us=row.now_us)
    audit.record(conn, tenant, row.now_us, actor, "lease.released", session_id, node=node_id, epoch=epoch)
    return view(row, node_id=None, expires_us=row.now_us)


def revoke(conn: Connection, row: SessionRow, actor: str, reason: str, **values: object) -> int:
    """Take the lease away from whoever holds it (and apply `values` in the same
    update): the epoch moves on, fencing the old holder."""
    epoch = row.lease_epoch + 1
    sessions.update(conn, row, lease_owner=None, lease_epoch=epoch, lease_expires_us=row.now_us, **values)
    audit.record(
        conn, row.tenant, row.now_us, actor, "lease.revoked", row.session_id,
        previous_owner=row.lease_owner, epoch=epoch, reason=reason,
    )  # fmt: skip
    return epoch
