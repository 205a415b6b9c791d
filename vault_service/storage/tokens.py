"""Bearer tokens, stored as SHA-256 hashes (tokens are high-entropy secrets,
so a fast hash is enough; the plain token never reaches the database)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from vault_service.storage.schema import tokens

ROLE_ADMIN = "admin"
ROLE_NODE = "node"
ROLES = (ROLE_ADMIN, ROLE_NODE)


@dataclass(frozen=True)
class Principal:
    tenant: str
    role: str
    name: str

    def __str__(self) -> str:
        return f"{self.role}:{self.name}@{self.tenant}"


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def put(conn: Connection, token: str, principal: Principal, now_us: int) -> None:
    """Insert or replace the token's principal (bootstrap tokens are re-applied at every start)."""
    digest = token_hash(token)
    conn.execute(tokens.delete().where(tokens.c.token_hash == digest))
    conn.execute(
        tokens.insert().values(
            token_hash=digest,
            tenant=principal.tenant,
            role=principal.role,
            name=principal.name,
            created_us=now_us,
        )
    )


def load_all(conn: Connection) -> dict[str, Principal]:
    rows = conn.execute(sa.select(tokens)).mappings()
    return {r["token_hash"]: Principal(r["tenant"], r["role"], r["name"]) for r in rows}
