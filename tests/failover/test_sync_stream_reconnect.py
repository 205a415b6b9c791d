"""The node's Sync stream after the vault went away and came back on the same address: records are
delivered and acked on the new stream (a dead stream's request generator must not swallow them)."""

from __future__ import annotations

import asyncio

from sessionvault.v1 import common_pb2 as pb
from support import NODE_A, free_port, start_vault, stop_vault

from session_node.vault_client import SyncStream, VaultClient, VaultUnavailable


async def _commit_until_acked(stream: SyncStream, epoch: int, base: int) -> int:
    """What SessionSync does: send, and on a lost stream wait for the next one and send again."""
    while True:
        try:
            return await stream.commit("s1", base, epoch, pb.RECORD_KIND_DELTA, [b"delta %d" % base])
        except VaultUnavailable:
            await stream.up.wait()


async def test_records_flow_again_after_the_vault_restarts(tmp_path) -> None:  # type: ignore[no-untyped-def]
    url, listen = f"sqlite:///{tmp_path}/vault.db", f"127.0.0.1:{free_port()}"
    vault = await start_vault(url, listen=listen)
    client = VaultClient(listen, NODE_A, "a")
    stream = SyncStream(client)
    runner = asyncio.create_task(stream.run())
    try:
        lease = (await client.acquire("s1", 60)).lease
        assert await asyncio.wait_for(_commit_until_acked(stream, lease.epoch, 0), 10) == 1
        await stop_vault(vault)  # the stream ends by itself (cancelled by the server), not by the node
        vault = await start_vault(url, listen=listen)
        for base in (1, 2, 3):  # the first records after the restart are the ones a dead stream could eat
            assert await asyncio.wait_for(_commit_until_acked(stream, lease.epoch, base), 20) == base + 1
        assert stream.connects >= 2
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        await client.close()
        await stop_vault(vault)
