"""Bad input gets the right status and ErrorInfo reason, and changes nothing."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from sessionvault.v1 import admin_service_pb2 as admin_pb
from sessionvault.v1 import common_pb2 as pb
from sessionvault.v1 import sync_service_pb2 as sync_pb
from support import (
    ADMIN_A,
    ADMIN_B,
    MIB,
    NODE_A,
    NODE_B,
    acquire,
    auth,
    chunk_requests,
    put,
    reason_of,
    wait_until,
)

SNAP, DELTA = pb.RECORD_KIND_SNAPSHOT, pb.RECORD_KIND_DELTA
BAD_IDS = {
    "": "EMPTY_ID",
    "x" * 129: "ID_TOO_LONG",
    "é" * 65: "ID_TOO_LONG",  # 130 bytes in UTF-8
    "a/b": "INVALID_ID",
    "..": "INVALID_ID",
    "a..b": "INVALID_ID",
    "a\x00b": "INVALID_ID",
    "a\nb": "INVALID_ID",
    "a\x1bb": "INVALID_ID",
    "-leading-dash": "INVALID_ID",
}


@pytest.mark.parametrize("bad", list(BAD_IDS), ids=repr)
async def test_bad_session_ids_are_invalid_argument(vault, bad: str) -> None:
    stub = vault.sync()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await acquire(stub, bad, "n1")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason_of(err.value) == BAD_IDS[bad]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await acquire(stub, "ok", bad)
    assert reason_of(err.value) == BAD_IDS[bad]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await vault.admin().GetSession(admin_pb.GetSessionRequest(session_id=bad), metadata=auth(ADMIN_A))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert vault.count("sessions") == 0


async def test_128_byte_id_is_fine(vault) -> None:
    assert (await acquire(vault.sync(), "s" * 128, "n" * 128)).acquired


async def test_unknown_session(vault) -> None:
    stub, admin = vault.sync(), vault.admin()
    for call in (
        admin.GetSession(admin_pb.GetSessionRequest(session_id="nope"), metadata=auth(ADMIN_A)),
        admin.DeleteSession(admin_pb.DeleteSessionRequest(session_id="nope"), metadata=auth(ADMIN_A)),
        admin.ListVersions(admin_pb.ListVersionsRequest(session_id="nope"), metadata=auth(ADMIN_A)),
        stub.RenewLease(sync_pb.RenewLeaseRequest(session_id="nope", node_id="n", epoch=1), metadata=auth(NODE_A)),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.NOT_FOUND and reason_of(err.value) == "SESSION_NOT_FOUND"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for _ in stub.Restore(sync_pb.RestoreRequest(session_id="nope"), metadata=auth(NODE_A)):
            pass
    assert reason_of(err.value) == "SESSION_NOT_FOUND"
    resp = await put(stub, "n1", "nope", 1, 0, DELTA, b"x")
    assert resp.rejection.reason == "SESSION_NOT_FOUND" and resp.rejection.code == grpc.StatusCode.NOT_FOUND.value[0]
    assert vault.count("sessions") == 0 and vault.count("chunks") == 0


async def test_wrong_tenant_sees_nothing(vault) -> None:
    stub = vault.sync()
    epoch = (await acquire(stub, "shared-name", "n1")).lease.epoch
    await put(stub, "n1", "shared-name", epoch, 0, SNAP, b"tenant A secret")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await vault.admin().GetSession(admin_pb.GetSessionRequest(session_id="shared-name"), metadata=auth(ADMIN_B))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    listed = await vault.admin().ListSessions(admin_pb.ListSessionsRequest(), metadata=auth(ADMIN_B))
    assert list(listed.sessions) == []
    # tenant B's node may use the same name: it is another session, empty
    other = await acquire(stub, "shared-name", "n1", token=NODE_B)
    assert other.acquired and other.lease.head_version == 0
    from support import restore

    header, records = await restore(stub, "shared-name", token=NODE_B)
    assert header.version == 0 and records == []


@pytest.mark.parametrize(
    ("token", "service", "code", "reason"),
    [
        (None, "sync", grpc.StatusCode.UNAUTHENTICATED, "MISSING_TOKEN"),
        (None, "admin", grpc.StatusCode.UNAUTHENTICATED, "MISSING_TOKEN"),
        ("not-a-real-token-at-all", "sync", grpc.StatusCode.UNAUTHENTICATED, "INVALID_TOKEN"),
        ("not-a-real-token-at-all", "admin", grpc.StatusCode.UNAUTHENTICATED, "INVALID_TOKEN"),
        (ADMIN_A, "sync", grpc.StatusCode.PERMISSION_DENIED, "WRONG_ROLE"),
        (NODE_A, "admin", grpc.StatusCode.PERMISSION_DENIED, "WRONG_ROLE"),
        (NODE_A, "sync", None, None),
        (ADMIN_A, "admin", None, None),
        (NODE_B, "sync", None, None),
        (ADMIN_B, "admin", None, None),
    ],
)
async def test_auth_matrix(vault, token, service, code, reason) -> None:
    metadata = auth(token) if token else ()
    if service == "sync":
        call = vault.sync().AcquireLease(sync_pb.AcquireLeaseRequest(session_id="s", node_id="n"), metadata=metadata)
    else:
        call = vault.admin().ListSessions(admin_pb.ListSessionsRequest(), metadata=metadata)
    if code is None:
        await call
        return
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    assert err.value.code() == code and reason_of(err.value) == reason
    assert vault.count("sessions") == 0


async def test_auth_applies_to_streams(vault) -> None:
    async def hello_then_wait():
        # Only the hello: writing more after the server has closed the call
        # would race the status with a client-side write error.
        yield sync_pb.SyncRequest(hello=sync_pb.SyncHello(node_id="n1"))
        await asyncio.Event().wait()

    call = vault.sync().Sync(hello_then_wait(), metadata=auth("wrong-token-xxxxxxxx"))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for _ in call:
            pass
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED and reason_of(err.value) == "INVALID_TOKEN"


async def _stream_error(vault, requests, hello=True) -> grpc.aio.AioRpcError:
    stub = vault.sync()

    async def gen():
        if hello:
            yield sync_pb.SyncRequest(hello=sync_pb.SyncHello(node_id="n1"))
        for r in requests:
            yield r
        await asyncio.Event().wait()  # no half-close racing the server's status

    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for _ in stub.Sync(gen(), metadata=auth(NODE_A)):
            pass
    return err.value


async def test_oversize_chunk(vault) -> None:
    epoch = (await acquire(vault.sync(), "s", "n1")).lease.epoch
    err = await _stream_error(vault, chunk_requests("s", epoch, 0, SNAP, b"x" * (MIB + 1), chunk_size=MIB + 1))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and reason_of(err) == "CHUNK_TOO_LARGE"
    # over gRPC's own 4 MiB message limit: refused by the transport
    err = await _stream_error(vault, chunk_requests("s", epoch, 0, SNAP, b"x" * (5 * MIB), chunk_size=5 * MIB))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert vault.count("chunks") == 0 and vault.count("records") == 0


async def test_out_of_order_chunks(vault) -> None:
    epoch = (await acquire(vault.sync(), "s", "n1")).lease.epoch
    reqs = chunk_requests("s", epoch, 0, SNAP, b"y" * (3 * MIB))
    err = await _stream_error(vault, [reqs[0], reqs[2]])
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and reason_of(err) == "OUT_OF_ORDER_CHUNK"
    err = await _stream_error(vault, [reqs[1]])
    assert reason_of(err) == "OUT_OF_ORDER_CHUNK"
    err = await _stream_error(vault, [reqs[0], reqs[0]])
    assert reason_of(err) == "OUT_OF_ORDER_CHUNK"
    changed = chunk_requests("s", epoch, 0, DELTA, b"y" * (3 * MIB))  # same index, other kind
    err = await _stream_error(vault, [reqs[0], changed[1]])
    assert reason_of(err) == "OUT_OF_ORDER_CHUNK"
    await wait_until(lambda: vault.count("chunks") == 0)
    assert vault.count("records") == 0


async def test_hello_required_and_bad_kind(vault) -> None:
    err = await _stream_error(vault, chunk_requests("s", 1, 0, SNAP, b"x"), hello=False)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and reason_of(err) == "HELLO_REQUIRED"
    err = await _stream_error(vault, chunk_requests("s", 1, 0, pb.RECORD_KIND_UNSPECIFIED, b"x"))
    assert reason_of(err) == "INVALID_KIND"


async def test_stream_cut_mid_record_leaves_nothing_visible(vault) -> None:
    stub = vault.sync()
    epoch = (await acquire(stub, "s", "n1")).lease.epoch
    reqs = chunk_requests("s", epoch, 0, SNAP, b"z" * (3 * MIB))
    sent = asyncio.Event()

    async def gen():
        yield sync_pb.SyncRequest(hello=sync_pb.SyncHello(node_id="n1"))
        yield reqs[0]
        yield reqs[1]
        sent.set()
        await asyncio.Event().wait()  # never sends the last chunk

    call = stub.Sync(gen(), metadata=auth(NODE_A))
    await sent.wait()
    await wait_until(lambda: vault.count("chunks") == 2)  # stored, but unpublished
    call.cancel()
    await wait_until(lambda: vault.count("chunks") == 0)
    assert vault.count("records") == 0
    from support import restore

    header, records = await restore(stub, "s")
    assert header.version == 0 and records == []


async def test_bad_page_token_and_size(vault) -> None:
    admin = vault.admin()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await admin.ListSessions(admin_pb.ListSessionsRequest(page_token="%%%"), metadata=auth(ADMIN_A))
    assert reason_of(err.value) == "INVALID_PAGE_TOKEN"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await admin.ListSessions(admin_pb.ListSessionsRequest(page_size=5000), metadata=auth(ADMIN_A))
    assert reason_of(err.value) == "INVALID_PAGE_SIZE"


async def test_ttl_too_long(vault) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await acquire(vault.sync(), "s", "n1", ttl=100000)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and reason_of(err.value) == "TTL_TOO_LONG"
