"""Scratch databases for one run, and the raw reference: a compare-and-set
UPDATE + INSERT + COMMIT written directly with the database's own driver."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import pymysql
import sqlalchemy as sa

RAW_HEAD = "bench_raw_head"
RAW_ROWS = "bench_raw_rows"


@contextmanager
def scratch_mariadb(server_url: str) -> Iterator[str]:
    """A fresh database `sv_bench_<random>` on the server of `server_url`, dropped afterwards."""
    server = sa.engine.make_url(server_url)
    name = "sv_bench_" + uuid.uuid4().hex[:12]
    admin = sa.create_engine(server)
    with admin.begin() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name} CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.begin() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}")
        admin.dispose()


def mariadb_version(server_url: str) -> str:
    engine = sa.create_engine(server_url)
    try:
        with engine.connect() as conn:
            return str(conn.exec_driver_sql("SELECT VERSION()").scalar_one())
    finally:
        engine.dispose()


class RawConnection(Protocol):
    def cursor(self) -> Any: ...
    def commit(self) -> None: ...
    def close(self) -> None: ...


def connect_raw(url: str) -> RawConnection:
    """A DB-API connection to the database of a SQLAlchemy URL, with no SQLAlchemy in the way."""
    parsed = sa.engine.make_url(url)
    if parsed.get_backend_name() == "sqlite":
        conn = sqlite3.connect(str(parsed.database), isolation_level=None, check_same_thread=False, timeout=30)
        # The vault's own settings: WAL, and an fsync on every commit.
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        return _SqliteTx(conn)
    return pymysql.connect(
        host=parsed.host or "127.0.0.1",
        port=parsed.port or 3306,
        user=parsed.username or "root",
        password=parsed.password or "",
        database=parsed.database,
        autocommit=False,
    )


class _SqliteTx:
    """sqlite3 in autocommit mode with explicit BEGIN IMMEDIATE, as the vault does it."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.open = False

    def cursor(self) -> Any:
        if not self.open:
            self.conn.execute("BEGIN IMMEDIATE")
            self.open = True
        return self.conn.cursor()

    def commit(self) -> None:
        self.conn.execute("COMMIT")
        self.open = False

    def close(self) -> None:
        self.conn.close()


def create_raw_tables(url: str) -> None:
    blob = "BLOB" if url.startswith("sqlite") else "MEDIUMBLOB"
    tail = "" if url.startswith("sqlite") else " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"
    conn = connect_raw(url)
    try:
        cur = conn.cursor()
        cur.execute(f"CREATE TABLE {RAW_HEAD} (id VARCHAR(128) PRIMARY KEY, version BIGINT NOT NULL){tail}")
        cur.execute(
            f"CREATE TABLE {RAW_ROWS} (id VARCHAR(128) NOT NULL, version BIGINT NOT NULL, data {blob} NOT NULL,"
            f" PRIMARY KEY (id, version)){tail}"
        )
        conn.commit()
    finally:
        conn.close()


class RawCas:
    """The reference commit: CAS on a head row + INSERT of the bytes + COMMIT, per session."""

    def __init__(self, url: str) -> None:
        self.conn = connect_raw(url)
        self.param = "?" if url.startswith("sqlite") else "%s"
        self.versions: dict[str, int] = {}

    def add_session(self, session_id: str) -> None:
        cur = self.conn.cursor()
        cur.execute(f"INSERT INTO {RAW_HEAD} (id, version) VALUES ({self.param}, 0)", (session_id,))
        self.conn.commit()
        self.versions[session_id] = 0

    def commit(self, session_id: str, data: bytes) -> None:
        p, base = self.param, self.versions[session_id]
        cur = self.conn.cursor()
        cur.execute(
            f"UPDATE {RAW_HEAD} SET version = {p} WHERE id = {p} AND version = {p}", (base + 1, session_id, base)
        )
        if cur.rowcount != 1:
            raise RuntimeError(f"raw CAS lost on {session_id} at {base}")
        cur.execute(f"INSERT INTO {RAW_ROWS} (id, version, data) VALUES ({p}, {p}, {p})", (session_id, base + 1, data))
        self.conn.commit()
        self.versions[session_id] = base + 1

    def close(self) -> None:
        self.conn.close()


def sqlite_url(directory: Path) -> str:
    return f"sqlite:///{directory / 'vault.db'}"


def sqlite_path(url: str) -> Path:
    return Path(str(sa.engine.make_url(url).database))
