"""Full snapshots of a live store: SQLite online backup, node-private objects stripped, zstd-compressed.

Snapshot format: one zstd frame (content size and checksum in the frame) whose content is a complete
SQLite database file, the whatsmeow store as the worker left it minus everything named
``sessionvault_*`` (changelog, triggers), vacuumed so freed pages (deleted message plaintext, the
changelog) are not shipped. It travels as chunks of at most CHUNK_SIZE bytes of the compressed
stream (gRPC's 4 MiB limit, TiDB's entry-size limit). ``decompress_into`` is the inverse and refuses
a truncated or corrupted stream.

Memory stays bounded by the chunk size: the backup copies page by page into a temporary file, and
compression and decompression stream between files.

Ordering contract with capture (what the supervisor must keep): a restore applies the deltas *drained
after* the snapshot was taken, in drain order. A delta drained before the snapshot holds older row
values and must not be replayed on top of it. After the vault stored the snapshot,
``capture.ack(conn, snap.covers_seq)`` drops the changelog rows it covers; later drains may start at
``after_seq=max(last_upto, covers_seq)`` (re-shipping covered rows is harmless, just wasted bytes).
The source's journal mode is kept: a snapshot of a WAL store restores as a WAL store.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

import zstandard

from session_node.store import PRIVATE_PREFIX, StoreError, connect, quote, schema_version

CHUNK_SIZE = 1024 * 1024
SQLITE_MAGIC = b"SQLite format 3\x00"
_FRAME_HEADER_MAX = 18  # ZSTD_FRAMEHEADERSIZE_MAX
_CONTENT_SIZE_UNKNOWN = 2**64 - 1  # ZSTD_CONTENTSIZE_UNKNOWN as python-zstandard reports it
_COMPRESSION_LEVEL = 6  # stores are small; a bit more effort than the default saves vault space


class SnapshotError(StoreError):
    """A snapshot stream is truncated, corrupt or not a SQLite database."""


@dataclass
class Snapshot:
    """A compressed snapshot in a private temporary file; delete it with ``close()`` (or ``with``)."""

    path: Path
    size: int  # compressed bytes
    raw_size: int  # bytes of the SQLite file inside
    schema_version: int
    # Highest changelog seq whose change the snapshot contains: once the vault has stored the snapshot,
    # capture.ack(conn, covers_seq) drops exactly the changes it made redundant.
    covers_seq: int

    def chunks(self, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
        """The compressed stream in pieces of at most ``chunk_size`` bytes."""
        with self.path.open("rb") as fh:
            while chunk := fh.read(chunk_size):
                yield chunk

    def read(self) -> bytes:
        """The whole compressed snapshot (small stores and tests)."""
        return self.path.read_bytes()

    def close(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def __enter__(self) -> Snapshot:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def take_snapshot(store_path: str | os.PathLike[str], *, work_dir: str | os.PathLike[str] | None = None) -> Snapshot:
    """Snapshot the store at ``store_path`` (live: the worker may be writing) into a temporary file.

    Temporary files go to ``work_dir`` (default: next to the store, the one place known to be as
    private as the store itself) with mode 0600.
    """
    src_path = Path(store_path)
    tmp_dir = Path(work_dir) if work_dir is not None else src_path.parent
    raw = _temp_path(tmp_dir, src_path.name, "snap-raw")
    try:
        covers_seq, version = _backup_and_strip(src_path, raw)
        raw_size = raw.stat().st_size
        packed = _temp_path(tmp_dir, src_path.name, "snap")
        try:
            _compress_file(raw, packed, raw_size)
        except BaseException:
            packed.unlink(missing_ok=True)
            raise
    finally:
        _unlink_db(raw)
    return Snapshot(
        path=packed,
        size=packed.stat().st_size,
        raw_size=raw_size,
        schema_version=version,
        covers_seq=covers_seq,
    )


def _temp_path(directory: Path, base: str, tag: str) -> Path:
    fd, name = tempfile.mkstemp(prefix=f".{base}.{tag}-", dir=directory)
    os.close(fd)
    return Path(name)


def _unlink_db(path: Path) -> None:
    for p in (path, Path(f"{path}-journal"), Path(f"{path}-wal"), Path(f"{path}-shm")):
        p.unlink(missing_ok=True)


def _backup_and_strip(src_path: Path, raw: Path) -> tuple[int, int]:
    """Online backup of ``src_path`` into ``raw``, then strip and vacuum the copy; (covers_seq, version)."""
    src = connect(src_path, readonly=True)
    try:
        dst = sqlite3.connect(raw, isolation_level=None)
        try:
            # pages=-1: one step under one read lock, so the copy is a single committed state even
            # while the worker writes (a multi-step backup would restart on every foreign write).
            src.backup(dst, pages=-1)
            covers_seq = _changelog_high_water(dst)
            version = schema_version(dst)
            if version is None:
                raise SnapshotError(f"{src_path} has no whatsmeow_version row")
            strip_private(dst)
            check = dst.execute("PRAGMA integrity_check").fetchall()
            if check != [("ok",)]:  # never ship a corrupt store as the new "last good" state
                raise SnapshotError(f"snapshot of {src_path} fails integrity_check: {check[:5]}")
            dst.execute("VACUUM")
        finally:
            dst.close()
    finally:
        src.close()
    return covers_seq, version


def _changelog_high_water(conn: sqlite3.Connection) -> int:
    # sqlite_sequence keeps the highest seq ever assigned, even after acks deleted every row.
    has_seq = conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'sqlite_sequence'").fetchone()
    if has_seq is None:
        return 0
    row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = ?", (f"{PRIVATE_PREFIX}changelog",)).fetchone()
    return 0 if row is None else int(row[0])


def strip_private(conn: sqlite3.Connection) -> None:
    """Drop every node-private object (``sessionvault_*`` triggers, tables, indexes) from a store copy."""
    objects = conn.execute(
        "SELECT type, name FROM sqlite_master WHERE substr(name, 1, ?) = ? AND type IN ('trigger', 'table')",
        (len(PRIVATE_PREFIX), PRIVATE_PREFIX),
    ).fetchall()
    # Triggers first: dropping a table the triggers write to would leave them broken until dropped.
    for kind, name in sorted(objects, key=lambda o: o[0] != "trigger"):
        conn.execute(f"DROP {kind.upper()} IF EXISTS {quote(name)}")
    has_seq = conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'sqlite_sequence'").fetchone()
    if has_seq is not None:
        conn.execute("DELETE FROM sqlite_sequence WHERE substr(name, 1, ?) = ?", (len(PRIVATE_PREFIX), PRIVATE_PREFIX))


def _compress_file(raw: Path, packed: Path, raw_size: int) -> None:
    # The content size in the frame header lets decompress_into detect a truncated stream.
    cctx = zstandard.ZstdCompressor(level=_COMPRESSION_LEVEL, write_checksum=True)
    with raw.open("rb") as ifh, packed.open("wb") as ofh:
        cctx.copy_stream(ifh, ofh, size=raw_size, read_size=CHUNK_SIZE, write_size=CHUNK_SIZE)


def decompress_into(chunks: Iterable[bytes], out: BinaryIO) -> int:
    """Decompress a snapshot stream into ``out``; returns the bytes written.

    Raises SnapshotError if the stream is corrupt (checksum), truncated (fewer bytes than the frame
    declares) or does not contain a SQLite database.
    """
    dctx = zstandard.ZstdDecompressor()
    counter = _CountingWriter(out)
    header = b""  # the first compressed bytes, until the frame header (<= 18 bytes) can be parsed
    expected: int | None = None
    try:
        with dctx.stream_writer(counter, write_size=CHUNK_SIZE, closefd=False) as writer:
            for chunk in chunks:
                if expected is None and len(header) < _FRAME_HEADER_MAX:
                    header += bytes(chunk[: _FRAME_HEADER_MAX - len(header)])
                    expected = _content_size(header)
                writer.write(chunk)
    except zstandard.ZstdError as e:
        raise SnapshotError(f"corrupt snapshot stream: {e}") from e
    if expected is None:
        raise SnapshotError("empty or headerless snapshot stream")
    if counter.written != expected:
        raise SnapshotError(f"truncated snapshot stream: {counter.written} of {expected} bytes")
    if not counter.head.startswith(SQLITE_MAGIC):
        raise SnapshotError("snapshot does not contain a SQLite database")
    return counter.written


def _content_size(header: bytes) -> int | None:
    try:
        size = zstandard.get_frame_parameters(header).content_size
    except zstandard.ZstdError:
        if len(header) >= _FRAME_HEADER_MAX:
            raise
        return None  # not enough bytes yet
    if size == _CONTENT_SIZE_UNKNOWN:
        raise SnapshotError("snapshot stream does not declare its size, so truncation would go unnoticed")
    return size


class _CountingWriter:
    """Passes writes through, counting bytes and keeping the first 100 (the SQLite header)."""

    def __init__(self, inner: BinaryIO) -> None:
        self.inner = inner
        self.written = 0
        self.head = b""

    def write(self, data: bytes) -> int:
        if len(self.head) < 100:
            self.head += bytes(data[: 100 - len(self.head)])
        self.written += len(data)
        return self.inner.write(data)

    def flush(self) -> None:
        self.inner.flush()
