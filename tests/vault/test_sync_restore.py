"""Sync and Restore end to end on a real gRPC server (SQLite and MariaDB)."""

from __future__ import annotations

import os
import time

import grpc
import pytest
from sessionvault.v1 import admin_service_pb2 as admin_pb
from sessionvault.v1 import common_pb2 as pb
from support import ADMIN_A, MIB, acquire, auth, put, reason_of, restore

SNAP, DELTA = pb.RECORD_KIND_SNAPSHOT, pb.RECORD_KIND_DELTA


async def test_10_mib_round_trip_with_default_message_limits(vault) -> None:
    stub = vault.sync()
    lease = (await acquire(stub, "big", "n1")).lease
    data = os.urandom(10 * MIB + 12345)
    t0 = time.perf_counter()
    resp = await put(stub, "n1", "big", lease.epoch, 0, SNAP, data)
    t1 = time.perf_counter()
    assert resp.WhichOneof("message") == "ack" and resp.ack.version == 1
    header, records = await restore(stub, "big")
    t2 = time.perf_counter()
    print(
        f"\n10 MiB ({vault.engine.dialect.name}): Sync to ack {(t1 - t0) * 1e3:.0f} ms, Restore {(t2 - t1) * 1e3:.0f} ms"
    )
    assert (header.version, header.snapshot_version, header.record_count) == (1, 1, 1)
    assert header.total_bytes == len(data)
    assert records == [(1, SNAP, data)]
    assert vault.count("chunks") == 11  # 1 MiB chunks, the database never sees a bigger row


async def test_history_and_point_in_time_restore(vault) -> None:
    stub = vault.sync()
    epoch = (await acquire(stub, "s1", "n1")).lease.epoch
    payloads = [os.urandom(3000) for _ in range(6)]
    kinds = [SNAP, DELTA, DELTA, SNAP, DELTA, DELTA]
    for base, (kind, data) in enumerate(zip(kinds, payloads, strict=True)):
        resp = await put(stub, "n1", "s1", epoch, base, kind, data)
        assert resp.ack.version == base + 1
    _, latest = await restore(stub, "s1")
    assert latest == [(4, SNAP, payloads[3]), (5, DELTA, payloads[4]), (6, DELTA, payloads[5])]
    header, at3 = await restore(stub, "s1", version=3)
    assert header.version == 3 and header.snapshot_version == 1
    assert at3 == [(1, SNAP, payloads[0]), (2, DELTA, payloads[1]), (3, DELTA, payloads[2])]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await restore(stub, "s1", version=7)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND and reason_of(err.value) == "VERSION_NOT_FOUND"

    admin = vault.admin()
    page1 = await admin.ListVersions(admin_pb.ListVersionsRequest(session_id="s1", page_size=4), metadata=auth(ADMIN_A))
    assert [v.version for v in page1.versions] == [6, 5, 4, 3]
    assert page1.versions[2].kind == SNAP and page1.versions[0].node_id == "n1"
    page2 = await admin.ListVersions(
        admin_pb.ListVersionsRequest(session_id="s1", page_size=4, page_token=page1.next_page_token),
        metadata=auth(ADMIN_A),
    )
    assert [v.version for v in page2.versions] == [2, 1] and page2.next_page_token == ""
    got = await admin.GetSession(admin_pb.GetSessionRequest(session_id="s1"), metadata=auth(ADMIN_A))
    s = got.session
    assert (s.head_version, s.snapshot_version, s.snapshot_bytes, s.record_count) == (6, 4, 3000, 6)
    assert s.stored_bytes == 18000 and s.lease.node_id == "n1" and s.state == pb.SESSION_STATE_ACTIVE
    assert s.last_sync_time.seconds > 0


async def test_new_session_restores_empty(vault) -> None:
    stub = vault.sync()
    await acquire(stub, "fresh", "n1")
    header, records = await restore(stub, "fresh")
    assert header.version == 0 and records == []


async def test_empty_record_round_trips(vault) -> None:
    stub = vault.sync()
    epoch = (await acquire(stub, "e", "n1")).lease.epoch
    assert (await put(stub, "n1", "e", epoch, 0, DELTA, b"")).ack.version == 1
    assert (await restore(stub, "e"))[1] == [(1, DELTA, b"")]


@pytest.fixture
async def vault_keep2(database_url):
    from support import start_vault, stop_vault

    handle = await start_vault(database_url, keep_snapshots=2)
    yield handle
    await stop_vault(handle)


async def test_pruning_keeps_the_newest_snapshots_and_their_deltas(vault_keep2) -> None:
    vault = vault_keep2
    stub = vault.sync()
    epoch = (await acquire(stub, "p", "n1")).lease.epoch
    kinds = [SNAP, DELTA, SNAP, DELTA, DELTA, SNAP, DELTA]  # snapshots at 1, 3, 6
    big = os.urandom(2 * MIB + 1)  # multi-chunk records are pruned with all their chunks
    for base, kind in enumerate(kinds):
        data = big if kind == SNAP else os.urandom(100)
        assert (await put(stub, "n1", "p", epoch, base, kind, data)).ack.version == base + 1
    admin = vault.admin()
    versions = await admin.ListVersions(admin_pb.ListVersionsRequest(session_id="p"), metadata=auth(ADMIN_A))
    assert [v.version for v in versions.versions] == [7, 6, 5, 4, 3]
    assert vault.count("chunks") == 3 + 1 + 1 + 3 + 1  # no chunk of a pruned record is left
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await restore(stub, "p", version=2)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND and reason_of(err.value) == "VERSION_PRUNED"
    header, records = await restore(stub, "p", version=4)
    assert header.snapshot_version == 3 and [r[0] for r in records] == [3, 4]
