"""The node's side of the vault's SyncService: unary lease calls, Restore, and
the one long-lived Sync stream that carries every session's records."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import grpc
from sessionvault.v1 import common_pb2 as pb
from sessionvault.v1 import sync_service_pb2 as sync_pb
from sessionvault.v1 import sync_service_pb2_grpc as sync_grpc

from vault_service.errors import error_info

log = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20
CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]
RPC_TIMEOUT_S = 10.0
_CODES = {code.value[0]: code for code in grpc.StatusCode}


class VaultRefused(Exception):
    """The vault answered with a refusal (status code + ErrorInfo reason)."""

    def __init__(self, code: grpc.StatusCode, reason: str, message: str) -> None:
        super().__init__(f"{code.name} {reason}: {message}")
        self.code, self.reason, self.message = code, reason, message


class VaultUnavailable(Exception):
    """The vault could not be reached (or the Sync stream broke); try again later."""


FENCING_REASONS = frozenset({"STALE_EPOCH", "LEASE_NOT_HELD", "LEASE_EXPIRED", "SESSION_DELETED"})


def _translate(err: grpc.aio.AioRpcError) -> Exception:
    code = err.code()
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED):
        return VaultUnavailable(f"{code.name}: {err.details()}")
    info = error_info(err)
    return VaultRefused(code, info.reason if info else code.name, err.details() or "")


@dataclass(frozen=True)
class RestoredState:
    """What Restore delivered: the snapshot (compressed, spooled to a file) and the deltas after it."""

    version: int
    state: int
    snapshot_path: Path | None
    deltas: list[bytes]


class VaultClient:
    def __init__(self, address: str, token: str, node_id: str) -> None:
        self.address = address
        self.node_id = node_id
        self.channel = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
        self.stub = sync_grpc.SyncServiceStub(self.channel)
        self.metadata = (("authorization", f"Bearer {token}"),)

    async def close(self) -> None:
        await self.channel.close()

    async def _unary(self, method: Callable, request: object) -> object:
        try:
            return await method(request, metadata=self.metadata, timeout=RPC_TIMEOUT_S)
        except grpc.aio.AioRpcError as err:
            raise _translate(err) from None

    async def acquire(self, session_id: str, ttl_s: int) -> sync_pb.AcquireLeaseResponse:
        request = sync_pb.AcquireLeaseRequest(session_id=session_id, node_id=self.node_id, ttl_seconds=ttl_s)
        return await self._unary(self.stub.AcquireLease, request)  # type: ignore[return-value]

    async def renew(self, session_id: str, epoch: int, ttl_s: int) -> pb.Lease:
        request = sync_pb.RenewLeaseRequest(session_id=session_id, node_id=self.node_id, epoch=epoch, ttl_seconds=ttl_s)
        response = await self._unary(self.stub.RenewLease, request)
        return response.lease  # type: ignore[attr-defined]

    async def release(self, session_id: str, epoch: int) -> None:
        request = sync_pb.ReleaseLeaseRequest(session_id=session_id, node_id=self.node_id, epoch=epoch)
        await self._unary(self.stub.ReleaseLease, request)

    async def mark_logged_out(self, session_id: str, epoch: int, reason: str) -> None:
        request = sync_pb.MarkLoggedOutRequest(session_id=session_id, node_id=self.node_id, epoch=epoch, reason=reason)
        await self._unary(self.stub.MarkLoggedOut, request)

    async def heartbeat(
        self, address: str, session_ids: list[str], capacity: int, pool: bool
    ) -> sync_pb.HeartbeatResponse:
        request = sync_pb.HeartbeatRequest(
            node_id=self.node_id, address=address, session_ids=session_ids, capacity=capacity, pool=pool
        )
        return await self._unary(self.stub.Heartbeat, request)  # type: ignore[return-value]

    async def restore(self, session_id: str, spool_dir: Path) -> RestoredState:
        """Fetch the newest state; the snapshot is written to a file as it arrives (memory bounded)."""
        header = None
        snapshot: Path | None = None
        deltas: list[bytes] = []
        parts: list[bytes] = []
        request = sync_pb.RestoreRequest(session_id=session_id)
        try:
            async for msg in self.stub.Restore(request, metadata=self.metadata):
                if msg.WhichOneof("message") == "header":
                    header = msg.header
                    continue
                chunk = msg.chunk
                if chunk.kind == pb.RECORD_KIND_SNAPSHOT:
                    snapshot = spool_dir / f".restore-{session_id}.zst"
                    with snapshot.open("wb" if chunk.chunk_index == 0 else "ab") as fh:
                        fh.write(chunk.data)
                else:
                    parts.append(chunk.data)
                    if chunk.last:
                        deltas.append(b"".join(parts))
                        parts = []
        except grpc.aio.AioRpcError as err:
            raise _translate(err) from None
        if header is None:
            raise VaultUnavailable("restore stream ended before its header")
        return RestoredState(header.version, header.state, snapshot, deltas)


class Rejected(VaultRefused):
    """The vault refused one record; nothing of it was stored."""


class SyncStream:
    """The node's one Sync stream: records out, acks back, reconnecting with backoff.

    At most one record per session is in flight (callers guarantee it), so acks
    are matched by session id. When the stream breaks, every record in flight
    fails with VaultUnavailable and its sender retries on the next stream.
    """

    def __init__(self, client: VaultClient, on_command: Callable[[sync_pb.NodeCommand], None] | None = None) -> None:
        self.client = client
        self.on_command = on_command
        self.up = asyncio.Event()
        self._generation = 0
        # One outbox per stream. The request generator of a call that ended by itself is never closed
        # by gRPC (only cancel() stops it, and cancel() does nothing to a finished call): it stays
        # parked on its outbox until the None that _one_stream puts there on the way out. A single
        # shared queue let such a dead generator take (and drop) the records meant for the next
        # stream, and their senders waited for acks forever.
        self._outbox: asyncio.Queue[sync_pb.SyncRequest | None] = asyncio.Queue(maxsize=64)
        self._waiting: dict[str, asyncio.Future[int]] = {}
        self.connects = 0

    async def run(self) -> None:
        """Keep a stream open until cancelled."""
        delay = 0.2
        while True:
            try:
                await self._one_stream()
                delay = 0.2
            except grpc.aio.AioRpcError as err:
                log.warning("sync stream to %s lost: %s", self.client.address, err.code().name)
            self._lost()
            await asyncio.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(delay * 2, 5.0)

    async def _one_stream(self) -> None:
        self._generation += 1
        outbox: asyncio.Queue[sync_pb.SyncRequest | None] = asyncio.Queue(maxsize=64)
        self._outbox = outbox
        call = self.client.stub.Sync(self._requests(outbox), metadata=self.client.metadata)
        self.up.set()
        self.connects += 1
        try:
            async for response in call:
                self._dispatch(response)
        finally:
            while not outbox.empty():  # chunks queued for a dead stream are dropped
                outbox.get_nowait()
            outbox.put_nowait(None)  # and its request generator ends

    async def _requests(self, outbox: asyncio.Queue[sync_pb.SyncRequest | None]) -> AsyncIterator[sync_pb.SyncRequest]:
        yield sync_pb.SyncRequest(hello=sync_pb.SyncHello(node_id=self.client.node_id))
        while (request := await outbox.get()) is not None:
            yield request

    def _dispatch(self, response: sync_pb.SyncResponse) -> None:
        which = response.WhichOneof("message")
        if which == "command":
            if self.on_command:
                self.on_command(response.command)
            return
        body = response.ack if which == "ack" else response.rejection
        future = self._waiting.pop(body.session_id, None)
        if future is None or future.done():
            log.warning("unexpected %s for session %s", which, body.session_id)
            return
        if which == "ack":
            future.set_result(response.ack.version)
        else:
            rej = response.rejection
            future.set_exception(Rejected(_CODES.get(rej.code, grpc.StatusCode.UNKNOWN), rej.reason, rej.message))

    def _lost(self) -> None:
        self.up.clear()
        self._generation += 1
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(VaultUnavailable("sync stream lost"))
        self._waiting.clear()

    async def commit(self, session_id: str, base: int, epoch: int, kind: int, chunks: Iterable[bytes]) -> int:
        """Send one record and wait for its ack; returns the committed version."""
        await self.up.wait()
        generation, outbox = self._generation, self._outbox
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        if session_id in self._waiting:
            raise RuntimeError(f"{session_id}: a record is already in flight")
        self._waiting[session_id] = future
        pieces = iter(chunks)
        current = next(pieces, b"")
        index = 0
        while True:
            following = next(pieces, None)
            chunk = pb.RecordChunk(
                session_id=session_id,
                base_version=base,
                lease_epoch=epoch,
                kind=kind,  # type: ignore[arg-type]
                chunk_index=index,
                last=following is None,
                data=current,
            )
            if generation != self._generation:
                raise VaultUnavailable("sync stream lost while sending")
            await outbox.put(sync_pb.SyncRequest(chunk=chunk))
            if following is None:
                break
            current, index = following, index + 1
        return await future
