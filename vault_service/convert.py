"""Conversions from the vault's rows to sessionvault.v1 messages."""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp
from sessionvault.v1 import admin_service_pb2 as admin_pb
from sessionvault.v1 import common_pb2 as pb

from vault_service.storage.leases import LeaseView
from vault_service.storage.records import RecordRow
from vault_service.vault import SessionInfo


def timestamp(us: int | None) -> Timestamp | None:
    if us is None:
        return None
    ts = Timestamp()
    ts.FromMicroseconds(us)
    return ts


def lease(view: LeaseView) -> pb.Lease:
    return pb.Lease(
        session_id=view.session_id,
        node_id=view.node_id or "",
        epoch=view.epoch,
        expire_time=timestamp(view.expires_us),
        head_version=view.head_version,
        head_epoch=view.head_epoch,
    )


def session(info: SessionInfo) -> admin_pb.Session:
    row = info.row
    live = row.lease_live()
    return admin_pb.Session(
        session_id=row.session_id,
        state=row.state,  # type: ignore[arg-type]
        head_version=row.head_version,
        snapshot_version=row.snapshot_version,
        snapshot_bytes=row.snapshot_bytes,
        stored_bytes=info.stored_bytes,
        record_count=info.record_count,
        lease=pb.Lease(
            session_id=row.session_id,
            node_id=row.lease_owner if live and row.lease_owner else "",
            epoch=row.lease_epoch,
            expire_time=timestamp(row.lease_expires_us),
            head_version=row.head_version,
            head_epoch=row.head_epoch,
        ),
        last_sync_time=timestamp(row.last_sync_us),
        create_time=timestamp(row.created_us),
        delete_time=timestamp(row.deleted_us),
    )


def version(rec: RecordRow) -> admin_pb.Version:
    return admin_pb.Version(
        version=rec.version,
        kind=rec.kind,  # type: ignore[arg-type]
        size_bytes=rec.size_bytes,
        chunk_count=rec.chunk_count,
        node_id=rec.node_id,
        lease_epoch=rec.lease_epoch,
        key_id=rec.key_id,
        create_time=timestamp(rec.created_us),
    )
