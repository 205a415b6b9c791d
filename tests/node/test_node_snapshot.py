"""snapshot.py + restore.rebuild_store: full snapshots, restore from snapshot and deltas, failure paths."""

from __future__ import annotations

import io
import sqlite3
from pathlib import Path

import pytest
import zstandard

from session_node import capture, restore, snapshot, store

J1 = "15550001111:7@s.whatsapp.net"
MARKER = b"plaintext-that-was-deleted-" * 4


def fill(conn: sqlite3.Connection, device, n: int = 200) -> None:
    device(conn, J1)
    with conn:
        conn.execute("BEGIN")
        for i in range(n):
            conn.execute("INSERT INTO whatsmeow_sessions VALUES (?, ?, randomblob(300))", (J1, f"peer{i}"))
            conn.execute("INSERT INTO whatsmeow_lid_map VALUES (?, ?)", (f"{i}@lid", f"{i}"))


def private_objects(path: Path) -> list[str]:
    conn = store.connect(path, readonly=True)
    try:
        return [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE name LIKE 'sessionvault%'")]
    finally:
        conn.close()


def compress(data: bytes) -> bytes:
    return zstandard.ZstdCompressor(write_checksum=True).compress(data)


def test_snapshot_round_trip_in_small_chunks(source, device, tmp_path: Path) -> None:
    fill(source.worker, device)
    with snapshot.take_snapshot(source.path) as snap:
        assert snap.schema_version == 15
        (high,) = source.supervisor.execute("SELECT max(seq) FROM sessionvault_changelog").fetchone()
        assert snap.covers_seq == high
        chunks = list(snap.chunks(4096))
        assert len(chunks) > 1 and all(len(c) <= 4096 for c in chunks)
        assert b"".join(chunks) == snap.read() and snap.size == len(snap.read())
        temp = snap.path
    assert not temp.exists()  # the compressed temp file is removed on close
    target = restore.rebuild_store(tmp_path / "restored" / "store.sqlite3", iter(chunks), [])
    assert store.diff_tables(source.path, target) == []
    assert private_objects(target) == []  # changelog and triggers never leave the node
    assert private_objects(source.path) != []  # ... and the live store keeps them
    assert sorted(p.name for p in target.parent.iterdir()) == ["store.sqlite3"]


def test_snapshot_then_deltas(source, device, tmp_path: Path, store_cache: Path) -> None:
    fill(source.worker, device, n=20)
    with snapshot.take_snapshot(source.path, work_dir=tmp_path) as snap:
        data = snap.read()
        capture.ack(source.supervisor, snap.covers_seq)  # the snapshot made these entries redundant
    source.worker.execute("UPDATE whatsmeow_sessions SET session = x'01' WHERE their_id = 'peer3'")
    source.worker.execute("INSERT OR REPLACE INTO whatsmeow_lid_map VALUES ('new@lid', '5')")
    source.worker.execute("DELETE FROM whatsmeow_sessions WHERE their_id = 'peer4'")
    first = capture.drain(source.supervisor, limit=2)
    rest = capture.drain(source.supervisor, after_seq=first.upto_seq)
    target = tmp_path / "t" / "store.sqlite3"
    restore.rebuild_store(target, [data], [capture.encode(first.delta), rest.delta], cache_dir=store_cache)
    assert store.diff_tables(source.path, target) == []


def test_new_session_without_snapshot_starts_from_neonize_store(source, device, tmp_path: Path, store_cache) -> None:
    fill(source.worker, device, n=5)
    batch = capture.drain(source.supervisor)
    target = restore.rebuild_store(tmp_path / "n" / "store.sqlite3", None, [batch.delta], cache_dir=store_cache)
    assert store.diff_tables(source.path, target) == []
    empty = restore.rebuild_store(tmp_path / "e" / "store.sqlite3", None, [])  # neonize subprocess path
    assert store.diff_tables(store.template_store(store_cache), empty) == []


def test_snapshot_does_not_ship_deleted_plaintext(source, device) -> None:
    source.worker.execute("PRAGMA secure_delete = OFF")  # as neonize: its SQLite lacks SECURE_DELETE
    device(source.worker, J1)
    source.worker.execute("INSERT INTO whatsmeow_event_buffer VALUES (?, ?, ?, 1, 1)", (J1, b"h" * 32, MARKER * 50))
    source.worker.execute("DELETE FROM whatsmeow_event_buffer")
    assert MARKER in source.path.read_bytes()  # SQLite leaves it in a free page of the live file
    with snapshot.take_snapshot(source.path) as snap:
        raw = io.BytesIO()
        snapshot.decompress_into(snap.chunks(), raw)
    assert raw.getvalue().startswith(snapshot.SQLITE_MAGIC)
    assert len(raw.getvalue()) == snap.raw_size
    assert MARKER not in raw.getvalue()  # vacuumed


def test_broken_snapshot_streams_are_refused(source, device, tmp_path: Path) -> None:
    fill(source.worker, device, n=20)
    with snapshot.take_snapshot(source.path) as snap:
        good = snap.read()
    flipped = bytearray(good)
    flipped[len(flipped) // 2] ^= 0x55
    cases = {
        "truncated": good[: len(good) // 2],
        "corrupt": bytes(flipped),
        "not sqlite": compress(b"hello" * 1000),
        "not zstd": b"SQLite format 3\x00" + bytes(5000),
        "empty": b"",
        "unknown size": zstandard.ZstdCompressor(write_content_size=False).compress(good),
    }
    target = tmp_path / "t" / "store.sqlite3"
    restore.rebuild_store(target, [good], [])
    before = target.read_bytes()
    for name, data in cases.items():
        with pytest.raises(snapshot.SnapshotError):
            restore.rebuild_store(target, [data[:7], data[7:]], [])
        assert target.read_bytes() == before, name  # a failed restore leaves the old file alone
    assert sorted(p.name for p in target.parent.iterdir()) == ["store.sqlite3"]  # temp files cleaned


def corrupt_indexes(path: Path) -> None:
    """Swap the root pages of lid_map's two unique indexes: a file SQLite opens but integrity_check fails."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        roots = dict(conn.execute("SELECT name, rootpage FROM sqlite_master WHERE tbl_name = 'whatsmeow_lid_map'"))
        conn.execute("PRAGMA writable_schema = ON")
        for a, b in (("1", "2"), ("2", "1")):
            conn.execute(
                "UPDATE sqlite_master SET rootpage = ? WHERE name = ?",
                (roots[f"sqlite_autoindex_whatsmeow_lid_map_{b}"], f"sqlite_autoindex_whatsmeow_lid_map_{a}"),
            )
    finally:
        conn.close()


def test_integrity_failures_raise(source, device, tmp_path: Path) -> None:
    fill(source.worker, device, n=20)
    source.worker.close()
    source.supervisor.close()
    corrupt_indexes(source.path)
    with pytest.raises(snapshot.SnapshotError, match="integrity_check"):
        snapshot.take_snapshot(source.path)  # a corrupt live store never becomes the vault's last good state
    assert sorted(p.name for p in source.path.parent.iterdir()) == ["store.sqlite3"]
    target = tmp_path / "t" / "store.sqlite3"
    with pytest.raises(restore.IntegrityError, match="integrity_check"):
        restore.rebuild_store(target, [compress(source.path.read_bytes())], [])
    assert not target.exists()


def test_foreign_key_orphans_raise(empty_store: Path, tmp_path: Path) -> None:
    conn = sqlite3.connect(empty_store, isolation_level=None)  # foreign keys off: whatsmeow never is
    conn.execute("INSERT INTO whatsmeow_sessions VALUES ('ghost@s.whatsapp.net', 'x', x'00')")
    conn.close()
    with pytest.raises(restore.IntegrityError, match="foreign_key_check"):
        restore.rebuild_store(tmp_path / "t" / "store.sqlite3", [compress(empty_store.read_bytes())], [])


def test_failing_delta_leaves_target_untouched(source, device, tmp_path: Path, store_cache: Path) -> None:
    fill(source.worker, device, n=3)
    batch = capture.drain(source.supervisor)
    target = restore.rebuild_store(tmp_path / "t" / "store.sqlite3", None, [batch.delta], cache_dir=store_cache)
    before = target.read_bytes()
    batch.delta.schema_version = 16
    with pytest.raises(restore.DeltaError, match="v16"):
        restore.rebuild_store(target, None, [batch.delta], cache_dir=store_cache)
    assert target.read_bytes() == before
    assert sorted(p.name for p in target.parent.iterdir()) == ["store.sqlite3"]


def test_stale_journal_of_old_store_is_removed(source, device, tmp_path: Path) -> None:
    fill(source.worker, device, n=3)
    target = tmp_path / "t" / "store.sqlite3"
    target.parent.mkdir()
    target.write_bytes(b"old store")
    Path(f"{target}-journal").write_bytes(b"a hot journal of the old file would be replayed into the new one")
    with snapshot.take_snapshot(source.path) as snap:
        restore.rebuild_store(target, snap.chunks(), [])
    assert not Path(f"{target}-journal").exists()
    assert store.diff_tables(source.path, target) == []


def test_rebuild_refuses_store_neonize_cannot_open(empty_store: Path, tmp_path: Path) -> None:
    conn = sqlite3.connect(empty_store, isolation_level=None)
    conn.execute("UPDATE whatsmeow_version SET version = 20, compat = 18")
    conn.close()
    with pytest.raises(store.SchemaError, match="v18"):
        restore.rebuild_store(tmp_path / "t" / "store.sqlite3", [compress(empty_store.read_bytes())], [])
