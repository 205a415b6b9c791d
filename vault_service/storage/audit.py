"""Audit log: every admin action and lease change, written in the same
transaction as the change it records."""

from __future__ import annotations

import json
import os

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from vault_service.storage.schema import audit_log


def record(
    conn: Connection,
    tenant: str,
    now_us: int,
    actor: str,
    action: str,
    session_id: str | None,
    **detail: object,
) -> None:
    conn.execute(
        audit_log.insert().values(
            tenant=tenant,
            ts_us=now_us,
            event_id=os.urandom(8).hex(),
            actor=actor[:160],
            action=action,
            session_id=session_id,
            detail=json.dumps(detail, sort_keys=True, default=str),
        )
    )


def entries(conn: Connection, tenant: str, session_id: str | None = None) -> list[dict]:
    query = sa.select(audit_log).where(audit_log.c.tenant == tenant).order_by(audit_log.c.ts_us)
    if session_id is not None:
        query = query.where(audit_log.c.session_id == session_id)
    return [dict(r) for r in conn.execute(query).mappings()]
