"""Database engines for SQLite (embedded default), MariaDB/MySQL and TiDB,
the database clock, transaction retries and migrations."""

from __future__ import annotations

import logging
import random
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import sqlalchemy as sa
from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError

log = logging.getLogger(__name__)
T = TypeVar("T")

# TiDB: write conflict, txn too large/retry, lock wait, schema changed, txn
# retry disabled; MariaDB: deadlock, lock wait timeout. All mean "roll back and
# run the whole transaction again".
RETRYABLE_MYSQL_CODES = frozenset({9007, 8002, 8022, 8028, 8005, 1213, 1205})
MAX_ATTEMPTS = 8
BACKOFF_BASE_S = 0.005
BACKOFF_CAP_S = 0.5


def create_engine(url: str, tls_ca: str | None = None, tls: bool = False, echo: bool = False) -> Engine:
    """An engine with the pool and connection settings each backend needs.

    TiDB Cloud: `mysql+pymysql://user:pw@host:4000/db` with `tls=True` (system
    CA bundle, hostname verified) or `tls_ca=<path>`; its idle connections are
    cut after ~5 minutes, hence pre-ping and recycle.
    """
    parsed = sa.engine.make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(url, echo)
    # Without TLS asked for, say so: PyMySQL otherwise builds a TLS context for every connection.
    connect_args: dict = {"ssl_disabled": True}
    if tls or tls_ca:
        ctx = ssl.create_default_context(cafile=tls_ca) if tls_ca else ssl.create_default_context()
        ctx.check_hostname = True
        ctx.verify_mode = ssl.CERT_REQUIRED
        connect_args = {"ssl": ctx}
    # No pre-ping (a round trip per checkout): run_tx re-runs a transaction whose connection
    # turned out dead. Recycle before TiDB Cloud's ~5 min idle cut.
    return sa.create_engine(
        url,
        pool_pre_ping=False,
        # Every use ends its transaction itself (engine.begin() commits or rolls back, a closed
        # Connection rolls back), so the pool's own ROLLBACK on return is a wasted round trip.
        pool_reset_on_return=None,
        pool_recycle=240,
        pool_size=16,
        max_overflow=8,
        connect_args=connect_args,
        echo=echo,
    )


def _sqlite_engine(url: str, echo: bool) -> Engine:
    database = sa.engine.make_url(url).database
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, echo=echo)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
        # Let SQLAlchemy's begin event below emit BEGIN itself.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        # An ack promises durability: fsync every commit, even in WAL mode.
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # IMMEDIATE takes the write lock up front: a deferred transaction that
        # reads then writes can fail with SQLITE_BUSY without waiting.
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def now_us_sql(engine_or_conn: Engine | Connection) -> str:
    """SQL for the database's clock in microseconds: leases must not trust node clocks."""
    if engine_or_conn.dialect.name == "sqlite":
        return "CAST((julianday('now') - 2440587.5) * 86400000000.0 AS INTEGER)"
    return "CAST(UNIX_TIMESTAMP(NOW(6)) * 1000000 AS SIGNED)"


def now_us_expr(engine_or_conn: Engine | Connection) -> sa.ColumnElement[int]:
    return sa.literal_column(now_us_sql(engine_or_conn), sa.BigInteger)


def db_now_us(conn: Connection) -> int:
    return int(conn.execute(sa.select(now_us_expr(conn))).scalar_one())


def is_retryable(exc: DBAPIError) -> bool:
    if exc.connection_invalidated:
        return True
    args = getattr(exc.orig, "args", ())
    if args and isinstance(args[0], int) and args[0] in RETRYABLE_MYSQL_CODES:
        return True
    return "database is locked" in str(exc.orig)


def run_tx(engine: Engine, work: Callable[[Connection], T], what: str = "transaction") -> T:
    """Run `work` in a transaction, re-running it on conflict errors.

    Exponential backoff with full jitter, bounded attempts; anything that is
    not a known conflict propagates at once.
    """
    for attempt in range(1, MAX_ATTEMPTS + 1):
        try:
            with engine.begin() as conn:
                return work(conn)
        except DBAPIError as exc:
            if attempt == MAX_ATTEMPTS or not is_retryable(exc):
                raise
            delay = random.uniform(0, min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2**attempt))
            log.warning("%s: retryable database error (attempt %d): %s", what, attempt, exc.orig)
            time.sleep(delay)
    raise AssertionError("unreachable")


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest revision (idempotent)."""
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(Path(__file__).resolve().parent.parent / "migrations"))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        if not sa.inspect(conn).has_table("alembic_version"):
            return None
        return conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
