"""Leases: one owner, fencing epochs, database clock; stale writes store nothing."""

from __future__ import annotations

import asyncio
import os

import grpc
import pytest
from sessionvault.v1 import admin_service_pb2 as admin_pb
from sessionvault.v1 import common_pb2 as pb
from sessionvault.v1 import sync_service_pb2 as sync_pb
from support import ADMIN_A, NODE_A, acquire, auth, put, reason_of, restore

SNAP, DELTA = pb.RECORD_KIND_SNAPSHOT, pb.RECORD_KIND_DELTA


async def test_contention_between_two_clients(vault) -> None:
    a, b = vault.sync(), vault.sync()
    results = await asyncio.gather(acquire(a, "s", "node-a"), acquire(b, "s", "node-b"))
    winners = [r for r in results if r.acquired]
    losers = [r for r in results if not r.acquired]
    assert len(winners) == 1 and len(losers) == 1
    owner = winners[0].lease.node_id
    assert losers[0].lease.node_id == owner  # the loser learns who holds it
    assert winners[0].lease.epoch == 1
    # the holder re-acquiring extends its lease with the same epoch
    again = await acquire(a if owner == "node-a" else b, "s", owner)
    assert again.acquired and again.lease.epoch == 1


async def test_release_then_takeover_bumps_epoch_and_fences_old_owner(vault) -> None:
    stub = vault.sync()
    first = (await acquire(stub, "s", "node-a")).lease
    assert (await put(stub, "node-a", "s", first.epoch, 0, SNAP, b"state-1")).ack.version == 1
    await stub.ReleaseLease(
        sync_pb.ReleaseLeaseRequest(session_id="s", node_id="node-a", epoch=first.epoch), metadata=auth(NODE_A)
    )
    second = await acquire(stub, "s", "node-b")
    assert second.acquired and second.lease.epoch == first.epoch + 1 and second.lease.head_version == 1
    assert second.lease.head_epoch == first.epoch  # version 1 was written under the first epoch

    stale = await put(stub, "node-a", "s", first.epoch, 1, DELTA, b"from the past")
    assert stale.WhichOneof("message") == "rejection"
    assert stale.rejection.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    assert stale.rejection.reason == "STALE_EPOCH"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.RenewLease(
            sync_pb.RenewLeaseRequest(session_id="s", node_id="node-a", epoch=first.epoch),
            metadata=auth(NODE_A),
        )
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and reason_of(err.value) == "STALE_EPOCH"
    # nothing of the stale write was stored
    assert vault.count("records") == 1 and vault.count("chunks") == 1
    assert (await restore(stub, "s"))[1] == [(1, SNAP, b"state-1")]


async def test_stale_epoch_multi_chunk_write_stores_nothing(vault) -> None:
    stub = vault.sync()
    old = (await acquire(stub, "s", "node-a", ttl=1)).lease
    new = await _take_over_after_expiry(stub, "s", "node-b")
    assert new.epoch == old.epoch + 1
    big = os.urandom(3 * (1 << 20))
    resp = await put(stub, "node-a", "s", old.epoch, 0, SNAP, big)
    assert resp.rejection.reason == "STALE_EPOCH"
    assert vault.count("chunks") == 0 and vault.count("records") == 0


async def _take_over_after_expiry(stub, session_id: str, node_id: str) -> pb.Lease:
    """Poll until the old 1-second lease has run out by the database clock."""
    for _ in range(100):
        got = await acquire(stub, session_id, node_id)
        if got.acquired:
            return got.lease
        await asyncio.sleep(0.05)
    raise AssertionError("the lease never expired")


async def test_expired_lease_cannot_write_or_renew(vault) -> None:
    stub = vault.sync()
    lease = (await acquire(stub, "s", "node-a", ttl=1)).lease
    # wait (polling the vault's view) until it has expired by the database clock
    admin = vault.admin()
    for _ in range(100):
        got = await admin.GetSession(admin_pb.GetSessionRequest(session_id="s"), metadata=auth(ADMIN_A))
        if got.session.lease.node_id == "":
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("lease did not expire")
    resp = await put(stub, "node-a", "s", lease.epoch, 0, SNAP, b"late")
    assert resp.rejection.reason == "LEASE_EXPIRED"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.RenewLease(
            sync_pb.RenewLeaseRequest(session_id="s", node_id="node-a", epoch=lease.epoch),
            metadata=auth(NODE_A),
        )
    assert reason_of(err.value) == "LEASE_EXPIRED"
    assert vault.count("records") == 0


async def test_stale_version_is_rejected(vault) -> None:
    stub = vault.sync()
    epoch = (await acquire(stub, "s", "n1")).lease.epoch
    assert (await put(stub, "n1", "s", epoch, 0, SNAP, b"a")).ack.version == 1
    again = await put(stub, "n1", "s", epoch, 0, DELTA, b"b")  # same base twice
    assert again.rejection.reason == "STALE_VERSION"
    assert again.rejection.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    ahead = await put(stub, "n1", "s", epoch, 5, DELTA, b"c")
    assert ahead.rejection.reason == "STALE_VERSION"
    assert vault.count("records") == 1


async def test_audit_log_records_lease_changes(vault) -> None:
    from vault_service.storage import audit

    stub = vault.sync()
    lease = (await acquire(stub, "s", "node-a")).lease
    await stub.ReleaseLease(
        sync_pb.ReleaseLeaseRequest(session_id="s", node_id="node-a", epoch=lease.epoch),
        metadata=auth(NODE_A),
    )
    await acquire(stub, "s", "node-b")
    with vault.engine.connect() as conn:
        actions = [e["action"] for e in audit.entries(conn, "default", "s")]
    assert actions == ["lease.acquired", "lease.released", "lease.acquired"]
