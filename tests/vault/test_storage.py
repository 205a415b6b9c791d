"""Storage mechanics: migrations from empty, TiDB conflict retries, orphan collection."""

from __future__ import annotations

import pymysql
import pytest
import sqlalchemy as sa
from sqlalchemy import event
from support import mariadb_database

from vault_service.storage import engine as engine_mod
from vault_service.storage.engine import create_engine, current_revision, migrate, run_tx

HEAD = "0010"
TABLES = {"sessions", "records", "chunks", "tokens", "audit_log", "nodes", "commands", "alembic_version"}


def test_migrations_from_empty_are_idempotent(database_url: str) -> None:
    engine = create_engine(database_url)
    assert current_revision(engine) is None
    migrate(engine)
    assert current_revision(engine) == HEAD
    migrate(engine)  # a second start changes nothing
    assert current_revision(engine) == HEAD
    assert set(sa.inspect(engine).get_table_names()) >= TABLES
    if engine.dialect.name == "mysql":
        with engine.connect() as conn:
            ddl = conn.exec_driver_sql("SHOW CREATE TABLE chunks").one()[1]
            coll = conn.exec_driver_sql("SHOW CREATE TABLE sessions").one()[1]
        assert "`data` mediumblob" in ddl  # 16 MiB rows, not BLOB's 64 KiB
        assert "utf8mb4_bin" in coll  # TiDB's collation on both
    engine.dispose()


class _Injector:
    """Raise a given MySQL error code from the server for the first `times`
    statements matching `needle`: what PyMySQL raises when TiDB answers so."""

    def __init__(self, engine: sa.Engine, code: int, times: int, needle: str = "INSERT INTO tokens") -> None:
        self.code, self.left, self.needle, self.raised = code, times, needle, 0
        event.listen(engine, "before_cursor_execute", self)

    def __call__(self, conn, cursor, statement, parameters, context, executemany) -> None:
        if self.needle in statement and self.left > 0:
            self.left -= 1
            self.raised += 1
            raise pymysql.err.OperationalError(self.code, f"injected error {self.code}")


def _insert_token(conn) -> int:
    conn.execute(
        sa.text("INSERT INTO tokens (token_hash, tenant, role, name, created_us) VALUES ('h', 't', 'node', 'n', 1)")
    )
    return 42


@pytest.fixture
def maria_engine():
    with mariadb_database() as url:
        engine = create_engine(url)
        migrate(engine)
        yield engine
        engine.dispose()


@pytest.mark.parametrize("code", sorted(engine_mod.RETRYABLE_MYSQL_CODES))
def test_tidb_conflicts_are_retried(maria_engine, monkeypatch, code: int) -> None:
    monkeypatch.setattr(engine_mod, "BACKOFF_BASE_S", 0.0001)
    injector = _Injector(maria_engine, code, times=3)
    assert run_tx(maria_engine, _insert_token) == 42
    assert injector.raised == 3
    with maria_engine.connect() as conn:  # committed exactly once
        assert conn.execute(sa.text("SELECT COUNT(*) FROM tokens")).scalar_one() == 1


def test_other_errors_are_not_retried(maria_engine) -> None:
    injector = _Injector(maria_engine, 1146, times=5)  # table doesn't exist
    with pytest.raises(sa.exc.OperationalError):
        run_tx(maria_engine, _insert_token)
    assert injector.raised == 1


def test_retries_are_bounded(maria_engine, monkeypatch) -> None:
    monkeypatch.setattr(engine_mod, "BACKOFF_BASE_S", 0.0001)
    injector = _Injector(maria_engine, 9007, times=100)
    with pytest.raises(sa.exc.OperationalError):
        run_tx(maria_engine, _insert_token)
    assert injector.raised == engine_mod.MAX_ATTEMPTS
    with maria_engine.connect() as conn:
        assert conn.execute(sa.text("SELECT COUNT(*) FROM tokens")).scalar_one() == 0


def test_real_mariadb_deadlock_is_retried(maria_engine, monkeypatch) -> None:
    """Two transactions locking two rows in opposite order: MariaDB kills one with 1213."""
    import threading

    with maria_engine.begin() as conn:
        for i in (1, 2):
            conn.execute(
                sa.text(
                    "INSERT INTO tokens (token_hash, tenant, role, name, created_us) VALUES (:h, 't', 'node', 'n', 0)"
                ),
                {"h": f"row{i}"},
            )
    barrier = threading.Barrier(2)
    attempts = {"a": 0, "b": 0}

    def worker(name: str, first: str, second: str) -> None:
        def work(conn) -> None:
            attempts[name] += 1
            conn.execute(sa.text("UPDATE tokens SET created_us=created_us+1 WHERE token_hash=:h"), {"h": first})
            if attempts[name] == 1:
                barrier.wait(timeout=10)
            conn.execute(sa.text("UPDATE tokens SET created_us=created_us+1 WHERE token_hash=:h"), {"h": second})

        run_tx(maria_engine, work)

    threads = [
        threading.Thread(target=worker, args=("a", "row1", "row2")),
        threading.Thread(target=worker, args=("b", "row2", "row1")),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    with maria_engine.connect() as conn:
        values = conn.execute(sa.text("SELECT created_us FROM tokens ORDER BY token_hash")).scalars().all()
    assert values == [2, 2]  # both transactions committed in full, exactly once
    assert attempts["a"] + attempts["b"] == 3  # one of them was a deadlock victim and re-ran


def test_orphan_chunks_are_collected(database_url: str) -> None:
    from vault_service.storage import records

    engine = create_engine(database_url)
    migrate(engine)
    with engine.begin() as conn:
        records.insert_chunk(conn, "t", "s", b"\x01" * 16, 0, b"sealed", 1000)
        records.insert_chunk(conn, "t", "s", b"\x02" * 16, 0, b"sealed", 5000)
    assert run_tx(engine, lambda c: records.collect_orphans(c, older_than_us=2000)) == 1
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT COUNT(*) FROM chunks")).scalar_one() == 1
    engine.dispose()
