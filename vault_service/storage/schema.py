"""Table definitions used by the queries (the migrations create them).

Keyed by (tenant, session_id, ...) rather than an AUTO_INCREMENT id, so TiDB
spreads sessions over regions instead of writing one hot spot. Times are
microseconds since the epoch, read from the database's clock. Binary ids and
ciphertext are binary columns; chunk ciphertext needs MEDIUMBLOB on MySQL
(plain BLOB is 64 KiB there).
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import mysql

metadata = sa.MetaData()

ID = sa.String(128)
RECORD_ID = sa.BINARY(16)
SALT = sa.BINARY(32)
TENANT = sa.String(64)
CIPHERTEXT = sa.LargeBinary().with_variant(mysql.MEDIUMBLOB(), "mysql", "mariadb")
TABLE_ARGS = {"mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}

# sessions.state values (same numbers as sessionvault.v1.SessionState).
STATE_ACTIVE = 1
STATE_LOGGED_OUT = 2
STATE_DELETED = 3

sessions = sa.Table(
    "sessions",
    metadata,
    sa.Column("tenant", TENANT, primary_key=True),
    sa.Column("session_id", ID, primary_key=True),
    sa.Column("state", sa.SmallInteger, nullable=False),
    sa.Column("salt", SALT, nullable=False),
    sa.Column("head_version", sa.BigInteger, nullable=False),
    sa.Column("snapshot_version", sa.BigInteger, nullable=False),
    sa.Column("snapshot_bytes", sa.BigInteger, nullable=False),
    sa.Column("lease_owner", ID, nullable=True),
    sa.Column("lease_epoch", sa.BigInteger, nullable=False),
    sa.Column("lease_expires_us", sa.BigInteger, nullable=False),
    sa.Column("created_us", sa.BigInteger, nullable=False),
    sa.Column("last_sync_us", sa.BigInteger, nullable=True),
    sa.Column("deleted_us", sa.BigInteger, nullable=True),
    sa.Column("head_epoch", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("move_target", ID, nullable=True),
    sa.Column("move_expires_us", sa.BigInteger, nullable=True),
    **TABLE_ARGS,
)

records = sa.Table(
    "records",
    metadata,
    sa.Column("tenant", TENANT, primary_key=True),
    sa.Column("session_id", ID, primary_key=True),
    sa.Column("version", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("record_id", RECORD_ID, nullable=False),
    sa.Column("kind", sa.SmallInteger, nullable=False),
    sa.Column("size_bytes", sa.BigInteger, nullable=False),
    sa.Column("chunk_count", sa.Integer, nullable=False),
    sa.Column("key_id", sa.String(64), nullable=False),
    sa.Column("node_id", ID, nullable=False),
    sa.Column("lease_epoch", sa.BigInteger, nullable=False),
    sa.Column("created_us", sa.BigInteger, nullable=False),
    **TABLE_ARGS,
)

chunks = sa.Table(
    "chunks",
    metadata,
    sa.Column("tenant", TENANT, primary_key=True),
    sa.Column("session_id", ID, primary_key=True),
    sa.Column("record_id", RECORD_ID, primary_key=True),
    sa.Column("chunk_index", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("data", CIPHERTEXT, nullable=False),
    sa.Column("created_us", sa.BigInteger, nullable=False),
    **TABLE_ARGS,
)

tokens = sa.Table(
    "tokens",
    metadata,
    sa.Column("token_hash", sa.String(64), primary_key=True),
    sa.Column("tenant", TENANT, nullable=False),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("name", sa.String(128), nullable=False),
    sa.Column("created_us", sa.BigInteger, nullable=False),
    **TABLE_ARGS,
)

audit_log = sa.Table(
    "audit_log",
    metadata,
    sa.Column("tenant", TENANT, primary_key=True),
    sa.Column("ts_us", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("event_id", sa.String(32), primary_key=True),
    sa.Column("actor", sa.String(160), nullable=False),
    sa.Column("action", sa.String(64), nullable=False),
    sa.Column("session_id", ID, nullable=True),
    sa.Column("detail", sa.Text, nullable=False),
    **TABLE_ARGS,
)

nodes = sa.Table(
    "nodes",
    metadata,
    sa.Column("tenant", TENANT, primary_key=True),
    sa.Column("node_id", ID, primary_key=True),
    sa.Column("address", sa.String(255), nullable=False),
    sa.Column("session_ids", sa.Text, nullable=False),
    sa.Column("capacity", sa.Integer, nullable=False),
    sa.Column("pool", sa.Boolean, nullable=False),
    sa.Column("heartbeat_us", sa.BigInteger, nullable=False),
    **TABLE_ARGS,
)

commands = sa.Table(
    "commands",
    metadata,
    sa.Column("tenant", TENANT, primary_key=True),
    sa.Column("node_id", ID, primary_key=True),
    sa.Column("command_id", sa.String(32), primary_key=True),
    sa.Column("session_id", ID, nullable=False),
    sa.Column("kind", sa.SmallInteger, nullable=False),
    sa.Column("created_us", sa.BigInteger, nullable=False),
    sa.Column("delivered_us", sa.BigInteger, nullable=True),
    **TABLE_ARGS,
)
