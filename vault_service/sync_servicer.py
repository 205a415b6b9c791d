"""SyncService: leases, the Sync stream and Restore, for session nodes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable

import grpc
from sessionvault.v1 import common_pb2 as pb
from sessionvault.v1 import sync_service_pb2 as sync_pb
from sessionvault.v1 import sync_service_pb2_grpc as sync_grpc

from vault_service import convert
from vault_service.auth import current_principal
from vault_service.committer import GroupCommitter
from vault_service.errors import VaultError, invalid
from vault_service.ids import check_id
from vault_service.storage.tokens import Principal
from vault_service.vault import MAX_CHUNK_BYTES, NodeBeat, RecordHeader, Upload, Vault

log = logging.getLogger(__name__)

MAX_RECORD_BYTES = 1 << 30
COMMAND_POLL_S = 0.25
MAX_CONCURRENT_COMMITS = 32
KINDS = (pb.RECORD_KIND_SNAPSHOT, pb.RECORD_KIND_DELTA)


class SyncServicer(sync_grpc.SyncServiceServicer):
    def __init__(self, vault: Vault, committer: GroupCommitter) -> None:
        self.vault = vault
        self.committer = committer
        self.closing = asyncio.Event()

    def close_streams(self) -> None:
        """Shutting down: every Sync stream stops taking records, lets its commits in flight finish
        (their acks go out) and ends, so nodes reconnect to the next vault at once instead of the
        streams holding the drain for its whole grace while lease renewals are refused."""
        self.closing.set()

    async def AcquireLease(self, request: sync_pb.AcquireLeaseRequest, context) -> sync_pb.AcquireLeaseResponse:
        who = current_principal()
        sid, node = check_id(request.session_id, "session_id"), check_id(request.node_id, "node_id")
        acquired, view = await asyncio.to_thread(self.vault.acquire_lease, who, sid, node, request.ttl_seconds)
        return sync_pb.AcquireLeaseResponse(acquired=acquired, lease=convert.lease(view))

    async def RenewLease(self, request: sync_pb.RenewLeaseRequest, context) -> sync_pb.RenewLeaseResponse:
        who = current_principal()
        sid, node = check_id(request.session_id, "session_id"), check_id(request.node_id, "node_id")
        view = await asyncio.to_thread(self.vault.renew_lease, who, sid, node, request.epoch, request.ttl_seconds)
        return sync_pb.RenewLeaseResponse(lease=convert.lease(view))

    async def ReleaseLease(self, request: sync_pb.ReleaseLeaseRequest, context) -> sync_pb.ReleaseLeaseResponse:
        who = current_principal()
        sid, node = check_id(request.session_id, "session_id"), check_id(request.node_id, "node_id")
        view = await asyncio.to_thread(self.vault.release_lease, who, sid, node, request.epoch)
        return sync_pb.ReleaseLeaseResponse(lease=convert.lease(view))

    async def MarkLoggedOut(self, request: sync_pb.MarkLoggedOutRequest, context) -> sync_pb.MarkLoggedOutResponse:
        who = current_principal()
        sid, node = check_id(request.session_id, "session_id"), check_id(request.node_id, "node_id")
        await asyncio.to_thread(self.vault.mark_logged_out, who, sid, node, request.epoch, request.reason[:500])
        return sync_pb.MarkLoggedOutResponse()

    async def Heartbeat(self, request: sync_pb.HeartbeatRequest, context) -> sync_pb.HeartbeatResponse:
        who = current_principal()
        node = check_id(request.node_id, "node_id")
        sessions = [check_id(s, "session_ids") for s in request.session_ids[:10_000]]
        beat = NodeBeat(node, request.address, sessions, request.capacity, request.pool)
        view = await asyncio.to_thread(self.vault.heartbeat, who, beat)
        return sync_pb.HeartbeatResponse(
            claimable_session_ids=view.claimable,
            live_nodes=view.live_nodes,
            live_pool_nodes=view.live_pool_nodes,
            active_sessions=view.active_sessions,
        )

    async def Sync(self, request_iterator, context) -> AsyncIterator[sync_pb.SyncResponse]:
        """Requests are read by one task and commands polled by another; both feed
        one outbox, so the vault can speak (commands) while the node is quiet."""
        stream = _SyncStream(self.vault, self.committer, current_principal())
        outbox: asyncio.Queue[sync_pb.SyncResponse | BaseException | None] = asyncio.Queue()
        tasks = [
            asyncio.create_task(_read_requests(stream, _until_set(request_iterator, self.closing), outbox)),
            asyncio.create_task(_deliver_commands(self.vault, stream, outbox)),
        ]
        try:
            while (item := await outbox.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            for task in tasks:
                task.cancel()
            # No await here: a cancelled RPC may never run this coroutine again.
            stream.discard_pending()

    async def Restore(self, request: sync_pb.RestoreRequest, context) -> AsyncIterator[sync_pb.RestoreResponse]:
        who = current_principal()
        sid = check_id(request.session_id, "session_id")
        plan = await asyncio.to_thread(self.vault.plan_restore, who, sid, request.version)
        yield sync_pb.RestoreResponse(
            header=sync_pb.RestoreHeader(
                session_id=sid,
                version=plan.version,
                snapshot_version=plan.snapshot_version,
                record_count=len(plan.records),
                total_bytes=plan.total_bytes,
                state=plan.row.state,  # type: ignore[arg-type]
            )
        )
        for rec in plan.records:
            chunks = self.vault.read_chunks(who, plan, rec)
            while (piece := await asyncio.to_thread(next, chunks, None)) is not None:
                yield sync_pb.RestoreResponse(
                    chunk=pb.RecordChunk(
                        session_id=sid,
                        version=piece.version,
                        base_version=piece.version - 1,
                        kind=piece.kind,  # type: ignore[arg-type]
                        chunk_index=piece.index,
                        last=piece.last,
                        data=piece.data,
                    )
                )


async def _until_set(requests: AsyncIterator, closing: asyncio.Event) -> AsyncIterator:
    """The stream's requests until `closing` is set (a request half-read then is dropped)."""
    it = aiter(requests)
    closed = asyncio.create_task(closing.wait())
    try:
        while True:
            following = asyncio.ensure_future(anext(it))
            await asyncio.wait({following, closed}, return_when=asyncio.FIRST_COMPLETED)
            if not following.done():
                following.cancel()
                return
            try:
                request = following.result()
            except StopAsyncIteration:
                return
            yield request
    finally:
        closed.cancel()


async def _read_requests(stream: _SyncStream, requests, outbox: asyncio.Queue) -> None:  # type: ignore[no-untyped-def]
    """One-chunk records (the usual delta) commit concurrently, so a node's
    sessions don't queue behind each other's database round trips; a session
    has at most one record in flight, so its own order is kept."""
    in_flight: set[asyncio.Task] = set()
    slots = asyncio.Semaphore(MAX_CONCURRENT_COMMITS)

    async def commit(pending: Awaitable[sync_pb.SyncResponse]) -> None:
        try:
            await outbox.put(await pending)
        except Exception as exc:  # not a refusal (those are responses): end the stream with it
            await outbox.put(exc)
        finally:
            slots.release()

    try:
        async for request in requests:
            response = await stream.handle(request)
            if isinstance(response, sync_pb.SyncResponse):
                await outbox.put(response)
            elif response is not None:
                await slots.acquire()
                task = asyncio.create_task(commit(response))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
        if in_flight:
            await asyncio.gather(*in_flight)
        await outbox.put(None)  # the node half-closed the stream
    except Exception as exc:
        await outbox.put(exc)


async def _deliver_commands(vault: Vault, stream: _SyncStream, outbox: asyncio.Queue) -> None:
    """Commands persisted for this node (by any vault replica) go out on its stream."""
    await stream.identified.wait()
    assert stream.node_id is not None
    while True:
        for cmd in await asyncio.to_thread(vault.take_commands, stream.who, stream.node_id):
            command = sync_pb.NodeCommand(command_id=cmd.command_id, session_id=cmd.session_id, kind=cmd.kind)  # type: ignore[arg-type]
            await outbox.put(sync_pb.SyncResponse(command=command))
        await asyncio.sleep(COMMAND_POLL_S)


class _Rejected:
    """An upload refused at its first chunk: its remaining chunks are skipped."""

    def __init__(self, header: RecordHeader, next_index: int) -> None:
        self.header = header
        self.next_index = next_index


class _SyncStream:
    """State of one node's Sync stream: the records in flight, per session."""

    def __init__(self, vault: Vault, committer: GroupCommitter, who: Principal) -> None:
        self.vault = vault
        self.committer = committer
        self.who = who
        self.node_id: str | None = None
        self.identified = asyncio.Event()
        self.pending: dict[str, Upload | _Rejected] = {}

    async def handle(
        self, request: sync_pb.SyncRequest
    ) -> sync_pb.SyncResponse | Awaitable[sync_pb.SyncResponse] | None:
        """A response now, an awaitable one (a commit to run concurrently), or nothing."""
        which = request.WhichOneof("message")
        if self.node_id is None:
            if which != "hello":
                raise invalid("HELLO_REQUIRED", "the first message of a Sync stream must be hello")
            self.node_id = check_id(request.hello.node_id, "node_id")
            self.identified.set()
            return None
        if which != "chunk":
            raise invalid("UNEXPECTED_MESSAGE", f"expected a chunk, got {which or 'nothing'}")
        return await self._on_chunk(request.chunk)

    def _header(self, chunk: pb.RecordChunk) -> RecordHeader:
        assert self.node_id is not None
        sid = check_id(chunk.session_id, "session_id")
        if chunk.kind not in KINDS:
            raise invalid("INVALID_KIND", "kind must be RECORD_KIND_SNAPSHOT or RECORD_KIND_DELTA")
        if len(chunk.data) > MAX_CHUNK_BYTES:
            raise invalid("CHUNK_TOO_LARGE", f"a chunk carries at most {MAX_CHUNK_BYTES} bytes of data")
        return RecordHeader(sid, self.node_id, chunk.lease_epoch, chunk.base_version, chunk.kind)

    async def _on_chunk(self, chunk: pb.RecordChunk) -> sync_pb.SyncResponse | Awaitable[sync_pb.SyncResponse] | None:
        header = self._header(chunk)
        upload = self.pending.get(header.session_id)
        if chunk.chunk_index == 0:
            if upload is not None:
                raise invalid("OUT_OF_ORDER_CHUNK", f"{header.session_id}: a new record began before the last ended")
            if chunk.last:
                return self._acked(header, self.committer.commit(self.who, header, chunk.data))
            return await self._begin(header, chunk.data)
        if upload is None or upload.header != header or chunk.chunk_index != upload.next_index:
            raise invalid(
                "OUT_OF_ORDER_CHUNK",
                f"{header.session_id}: chunk {chunk.chunk_index} does not continue the record in flight",
            )
        if isinstance(upload, _Rejected):
            upload.next_index += 1
            if chunk.last:
                del self.pending[header.session_id]
            return None
        if (upload.size + len(chunk.data)) > MAX_RECORD_BYTES:
            raise invalid("RECORD_TOO_LARGE", f"a record may hold at most {MAX_RECORD_BYTES} bytes")
        await asyncio.to_thread(upload.add, chunk.data, chunk.last)
        if not chunk.last:
            return None
        del self.pending[header.session_id]
        return await self._outcome(header, upload.finish)

    async def _begin(self, header: RecordHeader, data: bytes) -> sync_pb.SyncResponse | None:
        try:
            upload = await asyncio.to_thread(self.vault.begin_upload, self.who, header)
        except VaultError as err:
            self.pending[header.session_id] = _Rejected(header, 1)
            return _rejection(header, err)
        self.pending[header.session_id] = upload
        try:
            await asyncio.to_thread(upload.add, data, False)
        except VaultError as err:
            del self.pending[header.session_id]
            upload.abort()
            return _rejection(header, err)
        return None

    async def _outcome(self, header: RecordHeader, fn, *args) -> sync_pb.SyncResponse:  # type: ignore[no-untyped-def]
        return await self._acked(header, asyncio.to_thread(fn, *args))

    async def _acked(self, header: RecordHeader, committed: Awaitable[int]) -> sync_pb.SyncResponse:
        try:
            version = await committed
        except VaultError as err:
            return _rejection(header, err)
        return sync_pb.SyncResponse(
            ack=sync_pb.RecordAck(session_id=header.session_id, version=version, kind=header.kind)  # type: ignore[arg-type]
        )

    def discard_pending(self) -> None:
        """A stream that ends mid-record leaves nothing visible behind (the
        chunks are deleted in the background; the orphan collector is the
        backstop if the vault dies first)."""
        loop = asyncio.get_running_loop()
        for upload in self.pending.values():
            if isinstance(upload, Upload):
                loop.run_in_executor(None, upload.abort)
        self.pending.clear()


def _rejection(header: RecordHeader, err: VaultError) -> sync_pb.SyncResponse:
    code: grpc.StatusCode = err.code
    return sync_pb.SyncResponse(
        rejection=sync_pb.RecordRejection(
            session_id=header.session_id,
            base_version=header.base_version,
            code=code.value[0],
            reason=err.reason,
            message=err.message,
        )
    )
