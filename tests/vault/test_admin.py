"""Soft delete, undelete, destroy and listing."""

from __future__ import annotations

import grpc
import pytest
from sessionvault.v1 import admin_service_pb2 as admin_pb
from sessionvault.v1 import common_pb2 as pb
from sessionvault.v1 import sync_service_pb2 as sync_pb
from support import ADMIN_A, NODE_A, acquire, auth, put, reason_of, restore

from vault_service.storage import audit

SNAP, DELTA = pb.RECORD_KIND_SNAPSHOT, pb.RECORD_KIND_DELTA


async def test_delete_undelete_destroy(vault) -> None:
    stub, admin = vault.sync(), vault.admin()
    lease = (await acquire(stub, "s", "n1")).lease
    await put(stub, "n1", "s", lease.epoch, 0, SNAP, b"snap")
    deleted = await admin.DeleteSession(admin_pb.DeleteSessionRequest(session_id="s"), metadata=auth(ADMIN_A))
    assert deleted.session.state == pb.SESSION_STATE_DELETED and deleted.session.delete_time.seconds > 0
    assert deleted.session.lease.node_id == ""  # lease revoked

    # the old holder is fenced, nobody can lease, restore or write
    resp = await put(stub, "n1", "s", lease.epoch, 1, DELTA, b"after delete")
    assert resp.rejection.reason in ("STALE_EPOCH", "SESSION_DELETED")
    for call in (
        acquire(stub, "s", "n2"),
        stub.RenewLease(
            sync_pb.RenewLeaseRequest(session_id="s", node_id="n1", epoch=lease.epoch), metadata=auth(NODE_A)
        ),
        restore(stub, "s"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and reason_of(err.value) == "SESSION_DELETED"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await admin.DeleteSession(admin_pb.DeleteSessionRequest(session_id="s"), metadata=auth(ADMIN_A))
    assert reason_of(err.value) == "SESSION_DELETED"

    undeleted = await admin.UndeleteSession(admin_pb.UndeleteSessionRequest(session_id="s"), metadata=auth(ADMIN_A))
    assert undeleted.session.state == pb.SESSION_STATE_ACTIVE and undeleted.session.head_version == 1
    assert (await restore(stub, "s"))[1] == [(1, SNAP, b"snap")]
    new = await acquire(stub, "s", "n2")
    assert new.acquired and new.lease.epoch == lease.epoch + 2  # revoked once, taken once
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await admin.UndeleteSession(admin_pb.UndeleteSessionRequest(session_id="s"), metadata=auth(ADMIN_A))
    assert reason_of(err.value) == "SESSION_NOT_DELETED"

    destroyed = await admin.DestroySession(admin_pb.DestroySessionRequest(session_id="s"), metadata=auth(ADMIN_A))
    assert destroyed.records_destroyed == 1
    assert vault.count("records") == 0 and vault.count("chunks") == 0 and vault.count("sessions") == 0
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await admin.GetSession(admin_pb.GetSessionRequest(session_id="s"), metadata=auth(ADMIN_A))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with vault.engine.connect() as conn:
        actions = [e["action"] for e in audit.entries(conn, "default", "s")]
    for action in ("session.deleted", "session.undeleted", "session.destroyed", "lease.revoked"):
        assert action in actions


async def test_list_sessions_pages(vault) -> None:
    stub, admin = vault.sync(), vault.admin()
    names = [f"s{i:02d}" for i in range(7)]
    for name in names:
        await acquire(stub, name, "n1")
    seen, token = [], ""
    while True:
        page = await admin.ListSessions(
            admin_pb.ListSessionsRequest(page_size=3, page_token=token), metadata=auth(ADMIN_A)
        )
        seen += [s.session_id for s in page.sessions]
        token = page.next_page_token
        if not token:
            break
    assert seen == names


async def test_logged_out_keeps_last_good_state(vault) -> None:
    stub, admin = vault.sync(), vault.admin()
    lease = (await acquire(stub, "s", "n1")).lease
    await put(stub, "n1", "s", lease.epoch, 0, SNAP, b"paired state")
    await stub.MarkLoggedOut(
        sync_pb.MarkLoggedOutRequest(session_id="s", node_id="n1", epoch=lease.epoch, reason="401"),
        metadata=auth(NODE_A),
    )
    got = await admin.GetSession(admin_pb.GetSessionRequest(session_id="s"), metadata=auth(ADMIN_A))
    assert got.session.state == pb.SESSION_STATE_LOGGED_OUT
    resp = await put(stub, "n1", "s", lease.epoch, 1, DELTA, b"emptied store")
    assert resp.rejection.reason == "SESSION_LOGGED_OUT"
    header, records = await restore(stub, "s")
    assert header.state == pb.SESSION_STATE_LOGGED_OUT and records == [(1, SNAP, b"paired state")]
    # a fresh pairing (snapshot) reactivates it
    assert (await put(stub, "n1", "s", lease.epoch, 1, SNAP, b"new pairing")).ack.version == 2
    got = await admin.GetSession(admin_pb.GetSessionRequest(session_id="s"), metadata=auth(ADMIN_A))
    assert got.session.state == pb.SESSION_STATE_ACTIVE


async def test_recreated_session_after_destroy_uses_its_new_key(vault) -> None:
    """The vault caches per-session salts for its commit fast path; a destroyed and re-created
    session has a new salt, and its records must be sealed (and restorable) with it."""
    stub, admin = vault.sync(), vault.admin()
    lease = (await acquire(stub, "s", "n1")).lease
    assert (await put(stub, "n1", "s", lease.epoch, 0, SNAP, b"first life")).ack.version == 1
    assert (await put(stub, "n1", "s", lease.epoch, 1, DELTA, b"cached salt used here")).ack.version == 2
    await admin.DestroySession(admin_pb.DestroySessionRequest(session_id="s"), metadata=auth(ADMIN_A))
    lease = (await acquire(stub, "s", "n1")).lease
    assert (await put(stub, "n1", "s", lease.epoch, 0, SNAP, b"second life")).ack.version == 1
    assert (await put(stub, "n1", "s", lease.epoch, 1, DELTA, b"and on")).ack.version == 2
    assert (await restore(stub, "s"))[1] == [(1, SNAP, b"second life"), (2, DELTA, b"and on")]
