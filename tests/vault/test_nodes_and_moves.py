"""Heartbeats, pool views, moves and commands delivered on the Sync stream."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from sessionvault.v1 import admin_service_pb2 as admin_pb
from sessionvault.v1 import sync_service_pb2 as sync_pb
from support import ADMIN_A, NODE_A, acquire, auth, reason_of

from vault_service.storage import audit


async def _beat(stub, node: str, sessions=(), pool=True, capacity=0) -> sync_pb.HeartbeatResponse:
    return await stub.Heartbeat(
        sync_pb.HeartbeatRequest(
            node_id=node, address=f"host-{node}", session_ids=list(sessions), pool=pool, capacity=capacity
        ),
        metadata=auth(NODE_A),
    )


async def test_heartbeat_lists_live_nodes_and_claimable_sessions(vault) -> None:
    stub = vault.sync()
    await acquire(stub, "owned", "a")
    free = (await acquire(stub, "free", "a")).lease
    await stub.ReleaseLease(
        sync_pb.ReleaseLeaseRequest(session_id="free", node_id="a", epoch=free.epoch), metadata=auth(NODE_A)
    )
    await _beat(stub, "a", ["owned"], pool=False)
    view = await _beat(stub, "b", [], pool=True, capacity=5)
    assert list(view.claimable_session_ids) == ["free"]
    assert (view.live_nodes, view.live_pool_nodes, view.active_sessions) == (2, 1, 2)
    nodes = await vault.admin().ListNodes(admin_pb.ListNodesRequest(), metadata=auth(ADMIN_A))
    assert [(n.node_id, list(n.session_ids), n.pool, n.capacity) for n in nodes.nodes] == [
        ("a", ["owned"], False, 0),
        ("b", [], True, 5),
    ]
    assert nodes.nodes[0].last_heartbeat_time.seconds > 0 and nodes.nodes[1].address == "host-b"


async def test_move_reserves_the_session_and_commands_both_nodes(vault) -> None:
    stub, admin = vault.sync(), vault.admin()
    lease = (await acquire(stub, "s", "a")).lease
    await _beat(stub, "a", ["s"])
    await _beat(stub, "b", [])
    await _beat(stub, "c", ["x", "y"])

    # the Sync streams of a and b receive the commands
    received: dict[str, list[sync_pb.NodeCommand]] = {"a": [], "b": []}
    got_both = asyncio.Event()

    async def listen(node: str) -> None:
        async def hello():
            yield sync_pb.SyncRequest(hello=sync_pb.SyncHello(node_id=node))
            await got_both.wait()

        async for response in stub.Sync(hello(), metadata=auth(NODE_A)):
            received[node].append(response.command)
            if all(received.values()):
                got_both.set()

    listeners = [asyncio.create_task(listen(n)) for n in ("a", "b")]
    moved = await admin.MoveSession(
        admin_pb.MoveSessionRequest(session_id="s", target_node_id="any"), metadata=auth(ADMIN_A)
    )
    assert (moved.target_node_id, moved.previous_node_id) == ("b", "a")  # least loaded other node
    async with asyncio.timeout(10):
        await got_both.wait()
    for task in listeners:
        task.cancel()
    assert [(c.session_id, c.kind) for c in received["a"]] == [("s", sync_pb.NODE_COMMAND_KIND_RELEASE)]
    assert [(c.session_id, c.kind) for c in received["b"]] == [("s", sync_pb.NODE_COMMAND_KIND_CLAIM)]

    await stub.ReleaseLease(
        sync_pb.ReleaseLeaseRequest(session_id="s", node_id="a", epoch=lease.epoch), metadata=auth(NODE_A)
    )
    # reserved: neither the old owner nor a third node may take it, only the target
    assert not (await acquire(stub, "s", "a")).acquired
    assert not (await acquire(stub, "s", "c")).acquired
    assert list((await _beat(stub, "c", [])).claimable_session_ids) == []
    got = await acquire(stub, "s", "b")
    assert got.acquired and got.lease.epoch == lease.epoch + 1
    with vault.engine.connect() as conn:
        actions = [e["action"] for e in audit.entries(conn, "default", "s")]
    assert actions[-3:] == ["session.move_requested", "lease.released", "lease.moved"]


async def test_move_errors(vault) -> None:
    stub, admin = vault.sync(), vault.admin()
    await acquire(stub, "s", "a")
    await _beat(stub, "a", ["s"])
    for target, reason in (("any", "NO_TARGET_NODE"), ("a", "ALREADY_THERE"), ("ghost", "NODE_NOT_LIVE")):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await admin.MoveSession(
                admin_pb.MoveSessionRequest(session_id="s", target_node_id=target), metadata=auth(ADMIN_A)
            )
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and reason_of(err.value) == reason
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await admin.MoveSession(
            admin_pb.MoveSessionRequest(session_id="nope", target_node_id="any"), metadata=auth(ADMIN_A)
        )
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
