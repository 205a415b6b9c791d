"""Commands for nodes, persisted so that whichever vault replica holds a
node's Sync stream delivers them (at most once)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from vault_service.storage.schema import commands

KIND_SNAPSHOT_NOW = 1
KIND_RELEASE = 2
KIND_CLAIM = 3


@dataclass(frozen=True)
class Command:
    command_id: str
    session_id: str
    kind: int


def enqueue(conn: Connection, tenant: str, node_id: str, session_id: str, kind: int, now: int) -> str:
    command_id = os.urandom(8).hex()
    conn.execute(
        commands.insert().values(
            tenant=tenant, node_id=node_id, command_id=command_id, session_id=session_id, kind=kind, created_us=now
        )
    )
    return command_id


def take(conn: Connection, tenant: str, node_id: str, now: int) -> list[Command]:
    """Undelivered commands of a node, marked delivered."""
    c = commands.c
    mine = sa.and_(c.tenant == tenant, c.node_id == node_id, c.delivered_us.is_(None))
    rows = conn.execute(sa.select(c.command_id, c.session_id, c.kind).where(mine).order_by(c.created_us)).all()
    if rows:
        conn.execute(
            commands.update().where(mine, c.command_id.in_([r.command_id for r in rows])).values(delivered_us=now)
        )
    return [Command(r.command_id, r.session_id, r.kind) for r in rows]
