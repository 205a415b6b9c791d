"""store.py: file layout, neonize-created stores, connections, schema metadata read from the database."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from session_node import store


def test_store_path_layout(tmp_path: Path) -> None:
    assert store.store_path(tmp_path, "s1") == tmp_path / "s1" / "store.sqlite3"
    for bad in ("", "a/b", "..", "."):
        with pytest.raises(ValueError):
            store.store_path(tmp_path, bad)


def test_create_store_uses_neonize_schema_v15(tmp_path: Path) -> None:
    path = store.create_store(tmp_path / "new" / "store.sqlite3")
    conn = store.connect(path)
    try:
        assert conn.execute("SELECT version, compat FROM whatsmeow_version").fetchall() == [(15, 8)]
        assert len(store.data_tables(conn)) == 16
        assert "whatsmeow_version" not in store.data_tables(conn)
    finally:
        conn.close()
    assert sorted(p.name for p in path.parent.iterdir()) == ["store.sqlite3"]  # no temp files left
    with pytest.raises(FileExistsError):
        store.create_store(path)


def test_create_store_rejects_paths_neonize_would_misparse(tmp_path: Path) -> None:
    target = tmp_path / "odd?dir" / "store.sqlite3"
    with pytest.raises(store.StoreError, match="neonize cannot open"):
        store.create_store(target)
    assert not target.exists()


def test_template_created_once_and_copied(store_cache: Path, tmp_path: Path) -> None:
    first = store.template_store(store_cache)
    stamp = first.stat().st_mtime_ns
    assert store.template_store(store_cache) == first
    copy = store.new_empty_store(tmp_path / "a" / "store.sqlite3", store_cache)
    assert copy.read_bytes() == first.read_bytes()
    assert first.stat().st_mtime_ns == stamp
    with pytest.raises(FileExistsError):
        store.new_empty_store(copy, store_cache)


def test_connect_refuses_missing_store_and_enables_foreign_keys(tmp_path: Path, empty_store: Path) -> None:
    with pytest.raises(store.StoreError):
        store.connect(tmp_path / "nope.sqlite3")
    assert not (tmp_path / "nope.sqlite3").exists()
    conn = store.connect(empty_store)
    try:
        assert conn.execute("PRAGMA foreign_keys").fetchone() == (1,)
        assert conn.isolation_level is None
        with pytest.raises(sqlite3.IntegrityError):  # no device row: the FK must bite
            conn.execute("INSERT INTO whatsmeow_sessions VALUES ('nobody', 'x', x'00')")
    finally:
        conn.close()
    ro = store.connect(empty_store, readonly=True)
    try:
        with pytest.raises(sqlite3.OperationalError):
            ro.execute("DELETE FROM whatsmeow_version")
    finally:
        ro.close()


def test_schema_metadata_from_pragmas(empty_store: Path) -> None:
    conn = store.connect(empty_store)
    try:
        schema = store.load_schema(conn)
    finally:
        conn.close()
    assert len(schema) == 16
    assert schema["whatsmeow_message_secrets"].pk == ("our_jid", "chat_jid", "sender_jid", "message_id")
    assert schema["whatsmeow_app_state_mutation_macs"].pk == ("jid", "name", "version", "index_mac")
    assert schema["whatsmeow_lid_map"].unique == (("pn",),)
    assert schema["whatsmeow_sessions"].unique == ()
    assert schema["whatsmeow_device"].columns[0] == "jid"
    assert len(schema["whatsmeow_device"].columns) == 19
    macs = schema["whatsmeow_app_state_mutation_macs"].foreign_keys
    assert [(f.parent, f.columns, f.parent_columns) for f in macs] == [
        ("whatsmeow_app_state_version", ("jid", "name"), ("jid", "name"))
    ]
    order = list(schema)
    assert order[0] == "whatsmeow_device"
    for name, info in schema.items():
        for fk in info.foreign_keys:
            assert order.index(fk.parent) < order.index(name), (name, fk.parent)


def test_table_without_primary_key_is_refused(empty_store: Path) -> None:
    conn = store.connect(empty_store)
    try:
        conn.execute("CREATE TABLE whatsmeow_future_log (a TEXT, b BLOB)")
        with pytest.raises(store.SchemaError, match="whatsmeow_future_log"):
            store.load_schema(conn)
    finally:
        conn.close()


def test_unsupported_schema_version_is_refused(empty_store: Path) -> None:
    conn = store.connect(empty_store)
    try:
        assert store.check_schema_supported(conn) == 15
        conn.execute("UPDATE whatsmeow_version SET version = 99, compat = 99")
        with pytest.raises(store.SchemaError, match="v99"):
            store.check_schema_supported(conn)
    finally:
        conn.close()


def test_diff_tables_reports_differences(tmp_path: Path, store_cache: Path, device) -> None:
    a = store.new_empty_store(tmp_path / "a.sqlite3", store_cache)
    b = store.new_empty_store(tmp_path / "b.sqlite3", store_cache)
    assert store.diff_tables(a, b) == [] and store.tables_equal(a, b)
    conn = store.connect(b)
    try:
        device(conn, "1:1@s.whatsapp.net")
    finally:
        conn.close()
    diff = store.diff_tables(a, b)
    assert len(diff) == 1 and diff[0].startswith("whatsmeow_device: 0 vs 1 rows")
    assert not store.tables_equal(a, b)
