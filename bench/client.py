"""A node's side of the vault protocol, as thin as possible: leases and one
long-lived Sync stream carrying records as chunks of at most 1 MiB."""

from __future__ import annotations

from collections.abc import Iterable

import grpc
from sessionvault.v1 import common_pb2 as pb
from sessionvault.v1 import sync_service_pb2 as sync_pb
from sessionvault.v1 import sync_service_pb2_grpc

from bench.vaultproc import auth

MIB = 1 << 20
DELTA = pb.RECORD_KIND_DELTA
SNAPSHOT = pb.RECORD_KIND_SNAPSHOT
LEASE_TTL_S = 3600


class Rejected(RuntimeError):
    """The vault refused a record."""


async def acquire(stub: sync_service_pb2_grpc.SyncServiceStub, session_id: str, node_id: str) -> int:
    """Take the lease on a (new) session; returns its epoch."""
    response = await stub.AcquireLease(
        sync_pb.AcquireLeaseRequest(session_id=session_id, node_id=node_id, ttl_seconds=LEASE_TTL_S),
        metadata=auth(),
    )
    if not response.acquired:
        raise RuntimeError(f"lease on {session_id} not acquired")
    return response.lease.epoch


def chunk_request(
    session_id: str, epoch: int, base: int, kind: int, index: int, last: bool, data: bytes
) -> sync_pb.SyncRequest:
    return sync_pb.SyncRequest(
        chunk=pb.RecordChunk(
            session_id=session_id,
            base_version=base,
            lease_epoch=epoch,
            kind=kind,  # type: ignore[arg-type]
            chunk_index=index,
            last=last,
            data=data,
        )
    )


class SyncStream:
    """One Sync stream; records are written and their acks read by the caller."""

    def __init__(self, stub: sync_service_pb2_grpc.SyncServiceStub, node_id: str) -> None:
        self.stub = stub
        self.node_id = node_id
        self.call: grpc.aio.StreamStreamCall | None = None

    async def open(self) -> SyncStream:
        self.call = self.stub.Sync(metadata=auth())
        await self.call.write(sync_pb.SyncRequest(hello=sync_pb.SyncHello(node_id=self.node_id)))
        return self

    async def send(self, session_id: str, epoch: int, base: int, data: bytes, kind: int = DELTA) -> None:
        """Write one record (a single chunk if it fits)."""
        await self.send_chunks(session_id, epoch, base, [data], kind)

    async def send_chunks(self, session_id: str, epoch: int, base: int, pieces: Iterable[bytes], kind: int) -> None:
        assert self.call is not None
        pending: bytes | None = None
        index = 0
        for piece in pieces:
            if pending is not None:
                await self.call.write(chunk_request(session_id, epoch, base, kind, index, False, pending))
                index += 1
            pending = piece
        await self.call.write(chunk_request(session_id, epoch, base, kind, index, True, pending or b""))

    async def ack(self) -> sync_pb.RecordAck:
        """The next ack; a rejection or the end of the stream raise."""
        assert self.call is not None
        response = await self.call.read()
        if response is grpc.aio.EOF:
            raise RuntimeError("the vault closed the Sync stream")
        if response.WhichOneof("message") != "ack":
            raise Rejected(str(response))
        return response.ack

    async def commit(self, session_id: str, epoch: int, base: int, data: bytes) -> int:
        await self.send(session_id, epoch, base, data)
        return (await self.ack()).version

    async def close(self) -> None:
        if self.call is None:
            return
        await self.call.done_writing()
        while await self.call.read() is not grpc.aio.EOF:
            pass
        self.call = None


class Session:
    """A session this benchmark holds the lease of, with its head version."""

    def __init__(self, session_id: str, epoch: int) -> None:
        self.session_id = session_id
        self.epoch = epoch
        self.version = 0

    async def commit(self, stream: SyncStream, data: bytes) -> None:
        self.version = await stream.commit(self.session_id, self.epoch, self.version, data)


async def new_sessions(
    stub: sync_service_pb2_grpc.SyncServiceStub, prefix: str, count: int, node_id: str
) -> list[Session]:
    return [Session(f"{prefix}-{i}", await acquire(stub, f"{prefix}-{i}", node_id)) for i in range(count)]
