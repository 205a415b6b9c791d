"""Fixtures for the store-level node tests: neonize-created stores, a capturing "source" store.

The pytest process opens stores with Python's sqlite3, so neonize only ever runs in subprocesses
(``store.create_store``); the autouse fixture proves it never leaks into this process.
Helpers are handed out as fixtures so this works under any pytest import mode.
"""

from __future__ import annotations

import os
import sqlite3
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from session_node import capture, store

AddDevice = Callable[[sqlite3.Connection, str], None]


@pytest.fixture(autouse=True)
def _neonize_stays_out_of_pytest() -> Iterator[None]:
    yield
    assert "neonize" not in sys.modules, "neonize was imported into the pytest process"


@pytest.fixture(scope="session")
def store_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory holding the once-per-run neonize template store."""
    cache = tmp_path_factory.mktemp("store-cache")
    store.template_store(cache)  # pay the neonize subprocess once, up front
    return cache


@pytest.fixture
def empty_store(tmp_path: Path, store_cache: Path) -> Path:
    """A fresh, empty whatsmeow v15 store (a copy of the neonize-created template)."""
    return store.new_empty_store(tmp_path / "src" / store.STORE_FILE, store_cache)


def add_device(conn: sqlite3.Connection, jid: str) -> None:
    """A fake paired device row with random keys of the lengths whatsmeow checks."""
    r = os.urandom
    conn.execute(
        "INSERT INTO whatsmeow_device (jid, lid, registration_id, noise_key, identity_key, signed_pre_key,"
        " signed_pre_key_id, signed_pre_key_sig, adv_key, adv_details, adv_account_sig, adv_account_sig_key,"
        " adv_device_sig, push_name) VALUES (?, ?, ?, ?, ?, ?, 1, ?, ?, ?, ?, ?, ?, 'Fixture')",
        (jid, f"9{jid}", 12345, r(32), r(32), r(32), r(64), r(32), b"\x08\x01", r(64), r(32), r(64)),
    )


@pytest.fixture(scope="session")
def device() -> AddDevice:
    return add_device


@dataclass
class Source:
    """A store as the supervisor sees it while a worker writes: two connections, triggers on."""

    path: Path
    worker: sqlite3.Connection  # stands in for whatsmeow's connection (autocommit, FKs on)
    supervisor: sqlite3.Connection

    def log(self) -> list[tuple[object, ...]]:
        """The changelog as (tbl, k1, k2, k3, k4) rows in seq order."""
        return self.supervisor.execute(f"SELECT tbl, k1, k2, k3, k4 FROM {capture.CHANGELOG} ORDER BY seq").fetchall()


@pytest.fixture
def source(empty_store: Path) -> Iterator[Source]:
    supervisor = store.connect(empty_store)
    capture.install_triggers(supervisor)
    worker = store.connect(empty_store)
    yield Source(empty_store, worker, supervisor)
    worker.close()
    supervisor.close()


@pytest.fixture
def replica(tmp_path: Path, store_cache: Path) -> Iterator[sqlite3.Connection]:
    """An empty store without triggers, to apply deltas to."""
    path = store.new_empty_store(tmp_path / "replica" / store.STORE_FILE, store_cache)
    conn = store.connect(path)
    yield conn
    conn.close()
