"""Node heartbeats: who is alive, what each runs, what nobody owns."""

from __future__ import annotations

import json
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from vault_service.storage.schema import STATE_ACTIVE, nodes, sessions

LIVE_WINDOW_US = 6 * 1_000_000  # nodes beat every ~2 s; three missed beats and a node counts as gone


@dataclass(frozen=True)
class NodeRow:
    node_id: str
    address: str
    session_ids: list[str]
    capacity: int
    pool: bool
    heartbeat_us: int


def beat(
    conn: Connection,
    tenant: str,
    node_id: str,
    address: str,
    session_ids: list[str],
    capacity: int,
    pool: bool,
    now: int,
) -> None:
    values = {
        "address": address[:255],
        "session_ids": json.dumps(sorted(session_ids)),
        "capacity": capacity,
        "pool": pool,
        "heartbeat_us": now,
    }
    key = sa.and_(nodes.c.tenant == tenant, nodes.c.node_id == node_id)
    if conn.execute(nodes.update().where(key).values(**values)).rowcount == 0:
        conn.execute(nodes.insert().values(tenant=tenant, node_id=node_id, **values))


def live(conn: Connection, tenant: str, now: int) -> list[NodeRow]:
    rows = conn.execute(
        sa.select(nodes)
        .where(nodes.c.tenant == tenant, nodes.c.heartbeat_us > now - LIVE_WINDOW_US)
        .order_by(nodes.c.node_id)
    ).mappings()
    return [
        NodeRow(
            r["node_id"], r["address"], json.loads(r["session_ids"]), r["capacity"], bool(r["pool"]), r["heartbeat_us"]
        )
        for r in rows
    ]


def claimable(conn: Connection, tenant: str, node_id: str, now: int, limit: int = 100) -> list[str]:
    """Active sessions without a live lease that `node_id` may take (not reserved for another node)."""
    s = sessions.c
    free = sa.or_(s.lease_owner.is_(None), s.lease_expires_us <= now)
    unreserved = sa.or_(s.move_target.is_(None), s.move_expires_us <= now, s.move_target == node_id)
    query = (
        sa.select(s.session_id)
        .where(s.tenant == tenant, s.state == STATE_ACTIVE, free, unreserved)
        .order_by(s.session_id)
        .limit(limit)
    )
    return list(conn.execute(query).scalars())


def active_sessions(conn: Connection, tenant: str) -> int:
    query = sa.select(sa.func.count()).where(sessions.c.tenant == tenant, sessions.c.state == STATE_ACTIVE)
    return int(conn.execute(query).scalar_one())
