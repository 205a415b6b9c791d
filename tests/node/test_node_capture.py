"""capture.py and restore.apply_delta on hand-picked cases: the trigger semantics whatsmeow relies on."""

from __future__ import annotations

import sqlite3

import pytest
from sessionvault.v1 import store_delta_pb2

from session_node import capture, restore, store

J1 = "15550001111:7@s.whatsapp.net"
J2 = "15550002222:9@s.whatsapp.net"

SESSION_UPSERT = (
    "INSERT INTO whatsmeow_sessions (our_jid, their_id, session) VALUES (?, ?, ?)"
    " ON CONFLICT (our_jid, their_id) DO UPDATE SET session = excluded.session"
)


def rows(conn: sqlite3.Connection, table: str) -> list[tuple[object, ...]]:
    return conn.execute(f"SELECT * FROM {table} ORDER BY 1, 2").fetchall()


def sync(source, replica: sqlite3.Connection) -> capture.Batch:
    """Drain everything into one delta, ship it through the payload encoding, apply and ack it."""
    batch = capture.drain(source.supervisor)
    restore.apply_delta(replica, capture.encode(batch.delta))
    capture.ack(source.supervisor, batch.upto_seq)
    return batch


def assert_same(source, replica: sqlite3.Connection) -> None:
    for table in store.data_tables(replica):
        assert rows(source.worker, table) == rows(replica, table), table


def test_insert_records_typed_primary_key(source, device) -> None:
    device(source.worker, J1)
    source.worker.execute(
        "INSERT INTO whatsmeow_app_state_sync_keys VALUES (?, ?, ?, ?, ?)", (J1, b"\x00\x01key", b"d", 7, b"f")
    )
    assert source.log() == [
        ("whatsmeow_device", J1, None, None, None),
        ("whatsmeow_app_state_sync_keys", J1, b"\x00\x01key", None, None),  # BLOB key stays a BLOB
    ]


def test_upsert_fires_update_and_ships_latest_value(source, replica, device) -> None:
    device(source.worker, J1)
    sync(source, replica)
    for n in range(3):
        source.worker.execute(SESSION_UPSERT, (J1, "peer", bytes([n]) * 10))
    assert [r[0] for r in source.log()] == ["whatsmeow_sessions"] * 3
    batch = sync(source, replica)
    assert batch.entries == 3 and batch.hot
    assert len(batch.delta.changes) == 1  # de-duplicated per primary key
    assert list(batch.delta.changes[0].values)[2].blob == b"\x02" * 10
    assert rows(replica, "whatsmeow_sessions") == [(J1, "peer", b"\x02" * 10)]
    assert capture.pending(source.supervisor) == 0


def test_device_delete_cascade_is_captured(source, replica, device) -> None:
    device(source.worker, J1)
    device(source.worker, J2)
    for jid in (J1, J2):
        source.worker.execute(SESSION_UPSERT, (jid, "peer", b"s"))
        source.worker.execute("INSERT INTO whatsmeow_pre_keys VALUES (?, 1, ?, 0)", (jid, b"k" * 32))
        source.worker.execute("INSERT INTO whatsmeow_app_state_version VALUES (?, 'regular', 3, ?)", (jid, b"h" * 128))
        source.worker.execute(
            "INSERT INTO whatsmeow_app_state_mutation_macs VALUES (?, 'regular', 3, ?, ?)", (jid, b"i" * 32, b"v" * 32)
        )
    sync(source, replica)
    source.worker.execute("DELETE FROM whatsmeow_device WHERE jid = ?", (J1,))
    logged = {r[0] for r in source.log()}
    assert {"whatsmeow_sessions", "whatsmeow_pre_keys", "whatsmeow_app_state_mutation_macs"} <= logged
    batch = sync(source, replica)
    assert all(c.deleted for c in batch.delta.changes)
    assert len(batch.delta.changes) == 5
    assert_same(source, replica)
    assert rows(replica, "whatsmeow_sessions") == [(J2, "peer", b"s")]


def test_insert_or_replace_on_unique_pn_is_reproduced(source, replica) -> None:
    source.worker.execute("INSERT INTO whatsmeow_lid_map VALUES ('111@lid', '555@s.whatsapp.net')")
    sync(source, replica)
    # whatsmeow re-points a phone number to a new LID: REPLACE removes the old row, no DELETE trigger fires.
    source.worker.execute("INSERT OR REPLACE INTO whatsmeow_lid_map VALUES ('222@lid', '555@s.whatsapp.net')")
    assert source.log() == [("whatsmeow_lid_map", "222@lid", None, None, None)]
    batch = sync(source, replica)
    assert [c.deleted for c in batch.delta.changes] == [False]
    assert rows(replica, "whatsmeow_lid_map") == [("222@lid", "555@s.whatsapp.net")]


def test_swapping_unique_values_between_rows(source, replica) -> None:
    source.worker.execute("INSERT INTO whatsmeow_lid_map VALUES ('a@lid', 'x'), ('b@lid', 'y')")
    sync(source, replica)
    with source.worker:
        source.worker.execute("BEGIN")
        source.worker.execute("UPDATE whatsmeow_lid_map SET pn = 'tmp' WHERE lid = 'a@lid'")
        source.worker.execute("UPDATE whatsmeow_lid_map SET pn = 'x' WHERE lid = 'b@lid'")
        source.worker.execute("UPDATE whatsmeow_lid_map SET pn = 'y' WHERE lid = 'a@lid'")
    sync(source, replica)
    assert rows(replica, "whatsmeow_lid_map") == [("a@lid", "y"), ("b@lid", "x")]


def test_apply_upsert_does_not_cascade_children(source, replica, device) -> None:
    device(source.worker, J1)
    source.worker.execute(SESSION_UPSERT, (J1, "peer", b"s"))
    sync(source, replica)
    source.worker.execute("UPDATE whatsmeow_device SET push_name = 'New' WHERE jid = ?", (J1,))
    batch = sync(source, replica)
    assert [c.table for c in batch.delta.changes] == ["whatsmeow_device"]
    assert rows(replica, "whatsmeow_sessions") == [(J1, "peer", b"s")]  # REPLACE would have wiped it
    assert_same(source, replica)


def test_primary_key_changing_update_with_on_update_cascade(source, replica, device) -> None:
    device(source.worker, J1)
    source.worker.execute(SESSION_UPSERT, (J1, "peer", b"s"))
    source.worker.execute("INSERT INTO whatsmeow_contacts (our_jid, their_jid, full_name) VALUES (?, 'c', 'C')", (J1,))
    sync(source, replica)
    source.worker.execute("UPDATE whatsmeow_device SET jid = ? WHERE jid = ?", (J2, J1))
    logged = source.log()
    assert ("whatsmeow_device", J1, None, None, None) in logged  # OLD key: now a tombstone
    assert ("whatsmeow_device", J2, None, None, None) in logged
    assert ("whatsmeow_sessions", J1, "peer", None, None) in logged  # cascaded child update, old key
    batch = sync(source, replica)
    assert {(c.table, c.deleted) for c in batch.delta.changes} == {
        ("whatsmeow_device", True),
        ("whatsmeow_device", False),
        ("whatsmeow_sessions", True),
        ("whatsmeow_sessions", False),
        ("whatsmeow_contacts", True),
        ("whatsmeow_contacts", False),
    }
    assert_same(source, replica)
    assert rows(replica, "whatsmeow_sessions") == [(J2, "peer", b"s")]


def test_install_triggers_is_idempotent(source, device) -> None:
    def triggers() -> list[tuple[str, str]]:
        return source.supervisor.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' ORDER BY name"
        ).fetchall()

    before = triggers()
    assert len(before) == 48
    assert capture.install_triggers(source.supervisor) == list(store.load_schema(source.supervisor))
    assert triggers() == before
    device(source.worker, J1)
    assert len(source.log()) == 1  # one write, one changelog row: no duplicate triggers
    assert capture.triggers_installed(source.supervisor)


def test_triggers_recreated_after_table_rebuild_and_for_new_tables(source, replica, device) -> None:
    device(source.worker, J1)
    sync(source, replica)
    # A whatsmeow migration that rebuilds a table (create new, copy, drop, rename) drops its triggers.
    src = source.worker
    src.executescript(
        """
        BEGIN;
        CREATE TABLE contacts_new (our_jid TEXT, their_jid TEXT, first_name TEXT, full_name TEXT,
            push_name TEXT, business_name TEXT, redacted_phone TEXT, PRIMARY KEY (our_jid, their_jid),
            FOREIGN KEY (our_jid) REFERENCES whatsmeow_device(jid) ON DELETE CASCADE ON UPDATE CASCADE);
        DROP TABLE whatsmeow_contacts;
        ALTER TABLE contacts_new RENAME TO whatsmeow_contacts;
        CREATE TABLE whatsmeow_future (a TEXT, b BLOB, c INTEGER, d TEXT, e TEXT, v TEXT,
            PRIMARY KEY (a, b, c, d, e));
        COMMIT;
        """
    )
    assert not capture.triggers_installed(source.supervisor)
    src.execute("INSERT INTO whatsmeow_contacts (our_jid, their_jid) VALUES (?, 'lost')", (J1,))
    assert source.log() == []  # the gap the re-install at every start exists for
    capture.install_triggers(source.supervisor)
    assert capture.triggers_installed(source.supervisor)
    src.execute("INSERT INTO whatsmeow_contacts (our_jid, their_jid) VALUES (?, 'seen')", (J1,))
    src.execute("INSERT INTO whatsmeow_future VALUES ('a', x'01', 3, 'd', 'e', 'v')")
    assert source.log()[0] == ("whatsmeow_contacts", J1, "seen", None, None)
    five = source.supervisor.execute(f"SELECT k1, k2, k3, k4, k5 FROM {capture.CHANGELOG} ORDER BY seq").fetchall()
    assert five[-1] == ("a", b"\x01", 3, "d", "e")  # the changelog grew a fifth key column
    replica.execute(
        "CREATE TABLE whatsmeow_future (a TEXT, b BLOB, c INTEGER, d TEXT, e TEXT, v TEXT, PRIMARY KEY (a, b, c, d, e))"
    )
    sync(source, replica)
    assert rows(replica, "whatsmeow_future") == [("a", b"\x01", 3, "d", "e", "v")]


def test_drain_does_not_delete_and_ack_deletes_only_up_to_seq(source, device) -> None:
    device(source.worker, J1)
    source.worker.execute(SESSION_UPSERT, (J1, "a", b"1"))
    first = capture.drain(source.supervisor, limit=1)
    assert (first.entries, first.more) == (1, True)
    again = capture.drain(source.supervisor, limit=1)
    assert again.upto_seq == first.upto_seq  # nothing is lost before the vault acks
    second = capture.drain(source.supervisor, after_seq=first.upto_seq)
    assert (second.entries, second.more) == (1, False) and second.upto_seq > first.upto_seq
    assert capture.ack(source.supervisor, first.upto_seq) == 1
    assert capture.pending(source.supervisor) == 1
    capture.ack(source.supervisor, second.upto_seq)
    assert capture.drain(source.supervisor).empty
    source.worker.execute(SESSION_UPSERT, (J1, "a", b"2"))
    (seq,) = source.supervisor.execute(f"SELECT seq FROM {capture.CHANGELOG}").fetchone()
    assert seq > second.upto_seq  # AUTOINCREMENT: seqs are never reused after an ack emptied the log


def test_hot_and_cold_batches(source, device) -> None:
    device(source.worker, J1)
    capture.ack(source.supervisor, capture.drain(source.supervisor).upto_seq)
    source.worker.execute("INSERT INTO whatsmeow_contacts (our_jid, their_jid) VALUES (?, 'c')", (J1,))
    source.worker.execute("INSERT INTO whatsmeow_lid_map VALUES ('1@lid', '1')")
    cold = capture.drain(source.supervisor)
    assert cold.tables == {"whatsmeow_contacts", "whatsmeow_lid_map"} and not cold.hot
    source.worker.execute("INSERT INTO whatsmeow_pre_keys VALUES (?, 1, ?, 0)", (J1, b"k" * 32))
    assert capture.drain(source.supervisor).hot
    assert capture.is_hot("whatsmeow_some_future_table")


def test_data_version_signals_foreign_commits(source, device) -> None:
    before = capture.data_version(source.supervisor)
    assert capture.data_version(source.supervisor) == before
    device(source.worker, J1)
    assert capture.data_version(source.supervisor) != before


def test_limit_cut_ships_parents_so_every_batch_applies(source, replica, device) -> None:
    device(source.worker, J1)
    source.worker.execute(SESSION_UPSERT, (J1, "peer", b"s"))
    sync(source, replica)
    # seq u: device updated; then the device is deleted (cascade: session, then device) and re-created.
    source.worker.execute("UPDATE whatsmeow_device SET push_name = 'x' WHERE jid = ?", (J1,))
    source.worker.execute("DELETE FROM whatsmeow_device WHERE jid = ?", (J1,))
    first = capture.drain(source.supervisor, limit=1)  # only "device updated", read while deleted
    assert [c.deleted for c in first.delta.changes] == [True]
    restore.apply_delta(replica, first.delta)  # replica cascades the session away
    device(source.worker, J1)
    source.worker.execute(SESSION_UPSERT, (J1, "peer", b"t"))
    second = capture.drain(source.supervisor, limit=1, after_seq=first.upto_seq)  # the session's delete
    assert second.more
    # The session exists again, but its device's entries lie beyond the cut: the parent rides along.
    assert [c.table for c in second.delta.changes] == ["whatsmeow_device", "whatsmeow_sessions"]
    restore.apply_delta(replica, second.delta)
    after = second.upto_seq
    while True:
        batch = capture.drain(source.supervisor, limit=1, after_seq=after)
        if batch.empty:
            break
        restore.apply_delta(replica, batch.delta)
        after = batch.upto_seq
    assert_same(source, replica)


def test_uncut_drain_ships_only_changed_rows(source, device) -> None:
    device(source.worker, J1)
    capture.ack(source.supervisor, capture.drain(source.supervisor).upto_seq)
    source.worker.execute(SESSION_UPSERT, (J1, "peer", b"s"))
    batch = capture.drain(source.supervisor)
    assert [c.table for c in batch.delta.changes] == ["whatsmeow_sessions"]


def test_drain_without_triggers_is_an_error(empty_store) -> None:
    conn = store.connect(empty_store)
    try:
        with pytest.raises(store.StoreError, match="install_triggers"):
            capture.drain(conn)
    finally:
        conn.close()


@pytest.mark.parametrize("size", [10, 5000])
def test_payload_round_trip(size: int) -> None:
    delta = store_delta_pb2.StoreDelta(schema_version=15)
    delta.changes.append(
        store_delta_pb2.RowChange(
            table="whatsmeow_sessions",
            key=[capture.to_sql_value("a"), capture.to_sql_value("b")],
            columns=["our_jid", "their_id", "session", "n", "r"],
            values=[capture.to_sql_value(v) for v in ("a", "b", b"\x00" * size, None, 1.5)],
        )
    )
    payload = capture.encode(delta)
    assert payload[0] == (capture.PAYLOAD_ZSTD if size > 1000 else capture.PAYLOAD_RAW)
    assert capture.decode(payload) == delta
    assert [capture.from_sql_value(v) for v in capture.decode(payload).changes[0].values] == [
        "a",
        "b",
        b"\x00" * size,
        None,
        1.5,
    ]


def test_decode_rejects_garbage() -> None:
    packed = capture.encode(
        store_delta_pb2.StoreDelta(schema_version=15, changes=[store_delta_pb2.RowChange(table="t" * 5000)])
    )
    assert packed[0] == capture.PAYLOAD_ZSTD
    for bad in (b"", b"\x07abc", packed[:-5], b"\x00\xff\xff\xff"):
        with pytest.raises(ValueError):
            capture.decode(bad)


def test_apply_rejects_foreign_schema_and_rolls_back(replica, device) -> None:
    row = store_delta_pb2.RowChange(
        table="whatsmeow_lid_map",
        key=[capture.to_sql_value("1@lid")],
        columns=["lid", "pn"],
        values=[capture.to_sql_value("1@lid"), capture.to_sql_value("1")],
    )
    with pytest.raises(restore.DeltaError, match="v16"):
        restore.apply_delta(replica, store_delta_pb2.StoreDelta(schema_version=16, changes=[row]))
    bad = store_delta_pb2.RowChange(table="whatsmeow_nope", key=[capture.to_sql_value("x")])
    with pytest.raises(restore.DeltaError, match="whatsmeow_nope"):
        restore.apply_delta(replica, store_delta_pb2.StoreDelta(schema_version=15, changes=[row, bad]))
    assert rows(replica, "whatsmeow_lid_map") == []  # the whole delta or nothing
    wrong_key = store_delta_pb2.RowChange()
    wrong_key.CopyFrom(row)
    wrong_key.key[0].text = "2@lid"
    with pytest.raises(restore.DeltaError, match="key does not match"):
        restore.apply_delta(replica, store_delta_pb2.StoreDelta(schema_version=15, changes=[wrong_key]))
