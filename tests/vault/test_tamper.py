"""Edits made directly in the database fail restore with DATA_LOSS, never wrong bytes."""

from __future__ import annotations

import os

import grpc
import pytest
import sqlalchemy as sa
from sessionvault.v1 import common_pb2 as pb
from support import MIB, acquire, put, reason_of, restore

SNAP, DELTA = pb.RECORD_KIND_SNAPSHOT, pb.RECORD_KIND_DELTA


async def _two_sessions(vault) -> dict[str, bytes]:
    stub = vault.sync()
    data = {"s1": os.urandom(2 * MIB + 10), "s2": os.urandom(2 * MIB + 10)}
    for sid, payload in data.items():
        epoch = (await acquire(stub, sid, "n1")).lease.epoch
        assert (await put(stub, "n1", sid, epoch, 0, SNAP, payload)).ack.version == 1
        assert (await put(stub, "n1", sid, epoch, 1, DELTA, b"delta of " + sid.encode())).ack.version == 2
    return data


def _exec(vault, sql: str, **params) -> int:
    with vault.engine.begin() as conn:
        return conn.execute(sa.text(sql), params).rowcount


def _record_id(vault, sid: str, version: int) -> bytes:
    with vault.engine.connect() as conn:
        return conn.execute(
            sa.text("SELECT record_id FROM records WHERE session_id=:s AND version=:v"), {"s": sid, "v": version}
        ).scalar_one()


async def _restore_fails(vault, sid: str, reason: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await restore(vault.sync(), sid)
    assert err.value.code() == grpc.StatusCode.DATA_LOSS, err.value.details()
    assert reason_of(err.value) == reason


async def test_untouched_restores(vault) -> None:
    data = await _two_sessions(vault)
    _, records = await restore(vault.sync(), "s1")
    assert records[0][2] == data["s1"]


async def test_flipped_ciphertext_byte(vault) -> None:
    await _two_sessions(vault)
    rid = _record_id(vault, "s1", 1)
    with vault.engine.begin() as conn:
        blob = conn.execute(
            sa.text("SELECT data FROM chunks WHERE record_id=:r AND chunk_index=1"), {"r": rid}
        ).scalar_one()
        flipped = blob[:100] + bytes([blob[100] ^ 1]) + blob[101:]
        conn.execute(
            sa.text("UPDATE chunks SET data=:d WHERE record_id=:r AND chunk_index=1"), {"d": flipped, "r": rid}
        )
    await _restore_fails(vault, "s1", "INTEGRITY_CHECK_FAILED")


async def test_chunk_moved_from_another_session(vault) -> None:
    await _two_sessions(vault)
    src, dst = _record_id(vault, "s2", 1), _record_id(vault, "s1", 1)
    with vault.engine.begin() as conn:
        blob = conn.execute(
            sa.text("SELECT data FROM chunks WHERE record_id=:r AND chunk_index=0"), {"r": src}
        ).scalar_one()
        conn.execute(sa.text("UPDATE chunks SET data=:d WHERE record_id=:r AND chunk_index=0"), {"d": blob, "r": dst})
    await _restore_fails(vault, "s1", "INTEGRITY_CHECK_FAILED")


async def test_record_replayed_as_another_version(vault) -> None:
    await _two_sessions(vault)
    # make version 2 (a delta) point at version 1's chunks with matching metadata
    rid1 = _record_id(vault, "s1", 1)
    _exec(vault, "DELETE FROM records WHERE session_id='s1' AND version=2")
    _exec(
        vault,
        "INSERT INTO records (tenant, session_id, version, record_id, kind, size_bytes, chunk_count, key_id, "
        "node_id, lease_epoch, created_us) SELECT tenant, session_id, 2, record_id, 2, size_bytes, chunk_count, "
        "key_id, node_id, lease_epoch, created_us FROM records WHERE session_id='s1' AND version=1",
    )
    assert _record_id(vault, "s1", 2) == rid1
    await _restore_fails(vault, "s1", "INTEGRITY_CHECK_FAILED")


async def test_reordered_chunks(vault) -> None:
    await _two_sessions(vault)
    rid = _record_id(vault, "s1", 1)
    _exec(vault, "UPDATE chunks SET chunk_index=99 WHERE record_id=:r AND chunk_index=0", r=rid)
    _exec(vault, "UPDATE chunks SET chunk_index=0 WHERE record_id=:r AND chunk_index=1", r=rid)
    _exec(vault, "UPDATE chunks SET chunk_index=1 WHERE record_id=:r AND chunk_index=99", r=rid)
    await _restore_fails(vault, "s1", "INTEGRITY_CHECK_FAILED")


async def test_truncated_record(vault) -> None:
    await _two_sessions(vault)
    rid = _record_id(vault, "s1", 1)
    assert _exec(vault, "DELETE FROM chunks WHERE record_id=:r AND chunk_index=2", r=rid) == 1
    _exec(vault, "UPDATE records SET chunk_count=2 WHERE record_id=:r", r=rid)
    await _restore_fails(vault, "s1", "INTEGRITY_CHECK_FAILED")  # chunk 1 was not sealed as the last one


async def test_missing_chunk(vault) -> None:
    await _two_sessions(vault)
    rid = _record_id(vault, "s1", 1)
    assert _exec(vault, "DELETE FROM chunks WHERE record_id=:r AND chunk_index=1", r=rid) == 1
    await _restore_fails(vault, "s1", "CHUNK_MISSING")


async def test_changed_salt(vault) -> None:
    await _two_sessions(vault)
    _exec(vault, "UPDATE sessions SET salt=:s WHERE session_id='s1'", s=os.urandom(32))
    await _restore_fails(vault, "s1", "INTEGRITY_CHECK_FAILED")


async def test_database_holds_only_ciphertext(vault) -> None:
    marker = b"PLAINTEXT-MARKER-" * 100
    stub = vault.sync()
    epoch = (await acquire(stub, "s", "n1")).lease.epoch
    await put(stub, "n1", "s", epoch, 0, SNAP, marker)
    with vault.engine.connect() as conn:
        blobs = conn.execute(sa.text("SELECT data FROM chunks")).scalars().all()
    assert blobs and all(b"PLAINTEXT-MARKER" not in b for b in blobs)
