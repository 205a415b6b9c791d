"""The vault's core: leases, encrypted commits and verified restores.

The gRPC servicers validate input and translate errors; this layer joins the
crypto and storage modules. Everything here is blocking (SQLAlchemy), and the
servicers call it from worker threads.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import grpc
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, IntegrityError

from vault_service import crypto
from vault_service.errors import VaultError, data_loss, invalid, precondition
from vault_service.storage import audit, commands, leases, nodes, records, sessions
from vault_service.storage.engine import db_now_us, run_tx
from vault_service.storage.leases import LeaseView
from vault_service.storage.records import KIND_DELTA, KIND_SNAPSHOT, NewRecord, RecordRow
from vault_service.storage.schema import STATE_ACTIVE, STATE_DELETED, STATE_LOGGED_OUT
from vault_service.storage.sessions import SessionRow
from vault_service.storage.tokens import Principal

log = logging.getLogger(__name__)

MAX_CHUNK_BYTES = 1 << 20
MOVE_RESERVATION_US = 30 * 1_000_000
ORPHAN_AGE_US = 3600 * 1_000_000


@dataclass(frozen=True)
class Settings:
    default_ttl_s: int = 15
    max_ttl_s: int = 3600
    keep_snapshots: int = 3


@dataclass(frozen=True)
class RecordHeader:
    """What the first chunk of a record says about it."""

    session_id: str
    node_id: str
    lease_epoch: int
    base_version: int
    kind: int


@dataclass(frozen=True)
class SessionInfo:
    row: SessionRow
    record_count: int
    stored_bytes: int


@dataclass(frozen=True)
class RestorePlan:
    row: SessionRow
    version: int
    snapshot_version: int
    records: list[RecordRow]

    @property
    def total_bytes(self) -> int:
        return sum(r.size_bytes for r in self.records)


@dataclass(frozen=True)
class RestoredChunk:
    version: int
    kind: int
    index: int
    last: bool
    data: bytes


class Vault:
    def __init__(self, engine: Engine, keyring: crypto.Keyring, settings: Settings | None = None) -> None:
        self.engine = engine
        self.keyring = keyring
        self.settings = settings or Settings()
        # Per-session salts never change while a session exists; cached for the commit fast path.
        self._salts: dict[tuple[str, str], bytes] = {}

    # -- leases ---------------------------------------------------------------

    def _ttl_us(self, ttl_s: int) -> int:
        if ttl_s > self.settings.max_ttl_s:
            raise invalid("TTL_TOO_LONG", f"ttl_seconds must be at most {self.settings.max_ttl_s}")
        return (ttl_s or self.settings.default_ttl_s) * 1_000_000

    def acquire_lease(self, who: Principal, session_id: str, node_id: str, ttl_s: int) -> tuple[bool, LeaseView]:
        ttl_us = self._ttl_us(ttl_s)

        def work(conn: Connection) -> tuple[bool, LeaseView]:
            return leases.acquire(conn, who.tenant, session_id, node_id, ttl_us, crypto.new_salt(), str(who))

        try:
            return run_tx(self.engine, work, "acquire lease")
        except IntegrityError:
            # Two nodes created the session at once; the loser now sees the row.
            return run_tx(self.engine, work, "acquire lease")

    def renew_lease(self, who: Principal, session_id: str, node_id: str, epoch: int, ttl_s: int) -> LeaseView:
        ttl_us = self._ttl_us(ttl_s)
        return run_tx(
            self.engine, lambda c: leases.renew(c, who.tenant, session_id, node_id, epoch, ttl_us), "renew lease"
        )

    def release_lease(self, who: Principal, session_id: str, node_id: str, epoch: int) -> LeaseView:
        return run_tx(
            self.engine,
            lambda c: leases.release(c, who.tenant, session_id, node_id, epoch, str(who)),
            "release lease",
        )

    # -- writes ---------------------------------------------------------------

    def commit(self, who: Principal, header: RecordHeader, data: bytes) -> int:
        """Commit a one-chunk record; returns its version."""
        result = self.commit_many([(who, header, data)])[0]
        if isinstance(result, Exception):
            raise result
        return result

    def commit_many(self, items: Sequence[tuple[Principal, RecordHeader, bytes]]) -> list[int | Exception]:
        """Commit one-chunk records; per item its version, or the error that refused it.

        Records of sessions seen before go in one transaction (group commit: one commit,
        one fsync, for many sessions), sealed outside it with the cached per-session salt.
        The salt is part of each compare-and-set, so a stale cache entry (a destroyed and
        re-created session) misses like a stale epoch or base does. Those, and sessions not
        seen yet, take the slow path one by one, in order, which says why it refuses.
        """
        results: list[int | Exception | None] = [None] * len(items)
        fast = [(i, f) for i, item in enumerate(items) if (f := self._fast_record(*item)) is not None]
        if fast:
            for (i, f), hit in zip(fast, self._publish_fast([f for _, f in fast]), strict=True):
                if hit:
                    results[i] = f.rec.version
                else:
                    self._salts.pop((f.tenant, f.rec.session_id), None)
        for i, item in enumerate(items):
            if results[i] is None:
                try:
                    results[i] = self._commit_slow(*item)
                except Exception as exc:  # reported per record; VaultErrors become rejections
                    results[i] = exc
        for (who, header, _), result in zip(items, results, strict=True):
            if isinstance(result, int):
                self._after_commit(who, header)
        return results  # type: ignore[return-value]

    def _fast_record(self, who: Principal, header: RecordHeader, data: bytes) -> records.FastRecord | None:
        salt = self._salts.get((who.tenant, header.session_id))
        if salt is None:
            return None
        rec = self._new_record(header, os.urandom(16), len(data), 1)
        return records.FastRecord(who.tenant, rec, salt, self._seal_with_salt(who, salt, rec, 0, True, data))

    def _publish_fast(self, batch: list[records.FastRecord]) -> list[bool]:
        try:
            return run_tx(self.engine, lambda c: records.fast_commit_many(c, batch), "group commit")
        except DBAPIError as exc:  # not a conflict (those were retried): let each record try alone
            log.warning("group commit of %d records failed, committing them one by one: %s", len(batch), exc.orig)
            return [False] * len(batch)

    def _commit_slow(self, who: Principal, header: RecordHeader, data: bytes) -> int:
        rec = self._new_record(header, os.urandom(16), len(data), 1)

        def work(conn: Connection) -> int:
            row = sessions.require(conn, who.tenant, header.session_id, for_update=True)
            records.check_writable(row, rec)
            sealed = self._seal(who, row, rec, 0, True, data)
            records.insert_chunk(conn, who.tenant, header.session_id, rec.record_id, 0, sealed, row.now_us)
            records.publish(conn, who.tenant, row, rec)
            self._salts[(who.tenant, header.session_id)] = row.salt
            return rec.version

        return run_tx(self.engine, work, "commit record")

    def begin_upload(self, who: Principal, header: RecordHeader) -> Upload:
        """Start a multi-chunk record; fails fast if it could never be published."""

        def check(conn: Connection) -> SessionRow:
            row = sessions.require(conn, who.tenant, header.session_id)
            records.check_writable(row, self._new_record(header, b"", 0, 0))
            return row

        row = run_tx(self.engine, check, "check upload")
        return Upload(self, who, header, row.salt)

    def _new_record(self, header: RecordHeader, record_id: bytes, size: int, count: int) -> NewRecord:
        return NewRecord(
            session_id=header.session_id,
            node_id=header.node_id,
            lease_epoch=header.lease_epoch,
            base_version=header.base_version,
            kind=header.kind,
            record_id=record_id,
            size_bytes=size,
            chunk_count=count,
            key_id=self.keyring.active_id,
        )

    def _seal(self, who: Principal, row: SessionRow, rec: NewRecord, index: int, last: bool, data: bytes) -> bytes:
        return self._seal_with_salt(who, row.salt, rec, index, last, data)

    def _seal_with_salt(
        self, who: Principal, salt: bytes, rec: NewRecord, index: int, last: bool, data: bytes
    ) -> bytes:
        cipher = self.keyring.session_cipher(rec.key_id, salt, who.tenant, rec.session_id)
        ctx = crypto.ChunkContext(who.tenant, rec.session_id, rec.version, rec.kind, rec.key_id)
        return crypto.seal_chunk(cipher, ctx, index, last, data)

    def _after_commit(self, who: Principal, header: RecordHeader) -> None:
        if header.kind == KIND_SNAPSHOT:
            removed = run_tx(
                self.engine,
                lambda c: records.prune(c, who.tenant, header.session_id, self.settings.keep_snapshots),
                "prune history",
            )
            if removed:
                log.info("pruned %d old records of %s/%s", removed, who.tenant, header.session_id)

    def mark_logged_out(self, who: Principal, session_id: str, node_id: str, epoch: int, reason: str) -> None:
        def work(conn: Connection) -> None:
            row = sessions.require(conn, who.tenant, session_id, for_update=True)
            leases.check_owner(row, node_id, epoch)
            sessions.update(conn, row, state=STATE_LOGGED_OUT)
            audit.record(conn, who.tenant, row.now_us, str(who), "session.logged_out", session_id, reason=reason)

        run_tx(self.engine, work, "mark logged out")

    # -- reads ----------------------------------------------------------------

    def plan_restore(self, who: Principal, session_id: str, version: int) -> RestorePlan:
        def work(conn: Connection) -> RestorePlan:
            row = sessions.require(conn, who.tenant, session_id)
            sessions.require_not_deleted(row)
            recs = records.for_restore(conn, who.tenant, row, version)
            snap = recs[0].version if recs and recs[0].kind == KIND_SNAPSHOT else 0
            return RestorePlan(row, recs[-1].version if recs else 0, snap, recs)

        return run_tx(self.engine, work, "plan restore")

    def read_chunks(self, who: Principal, plan: RestorePlan, rec: RecordRow) -> Iterator[RestoredChunk]:
        """Decrypt and verify one record, a chunk at a time (memory bounded by chunk size)."""
        if not self.keyring.has(rec.key_id):
            raise precondition(
                "KEY_UNAVAILABLE", f"version {rec.version} is sealed with key {rec.key_id!r}, which is not loaded"
            )
        sid = plan.row.session_id
        cipher = self.keyring.session_cipher(rec.key_id, plan.row.salt, who.tenant, sid)
        ctx = crypto.ChunkContext(who.tenant, sid, rec.version, rec.kind, rec.key_id)
        for index in range(rec.chunk_count):
            sealed = run_tx(self.engine, lambda c, i=index: records.chunk(c, who.tenant, sid, rec.record_id, i))
            if sealed is None:
                self._missing_chunk(who, sid, rec, index)
            last = index == rec.chunk_count - 1
            try:
                data = crypto.open_chunk(cipher, ctx, index, last, sealed)  # type: ignore[arg-type]
            except crypto.IntegrityError as exc:
                raise data_loss("INTEGRITY_CHECK_FAILED", str(exc), version=str(rec.version)) from exc
            yield RestoredChunk(rec.version, rec.kind, index, last, data)

    def _missing_chunk(self, who: Principal, sid: str, rec: RecordRow, index: int) -> None:
        still = run_tx(self.engine, lambda c: records.exists(c, who.tenant, sid, rec.version, rec.record_id))
        if not still:
            raise VaultError(
                grpc.StatusCode.ABORTED, "VERSION_PRUNED", f"version {rec.version} was pruned during the restore"
            )
        raise data_loss("CHUNK_MISSING", f"chunk {index} of version {rec.version} is missing")

    # -- admin ----------------------------------------------------------------

    def list_sessions(self, who: Principal, after: str, limit: int) -> list[SessionInfo]:
        def work(conn: Connection) -> list[SessionInfo]:
            rows = sessions.page(conn, who.tenant, after, limit)
            return [SessionInfo(r, *records.totals(conn, who.tenant, r.session_id)) for r in rows]

        return run_tx(self.engine, work, "list sessions")

    def get_session(self, who: Principal, session_id: str) -> SessionInfo:
        def work(conn: Connection) -> SessionInfo:
            row = sessions.require(conn, who.tenant, session_id)
            return SessionInfo(row, *records.totals(conn, who.tenant, session_id))

        return run_tx(self.engine, work, "get session")

    def delete_session(self, who: Principal, session_id: str) -> SessionInfo:
        def work(conn: Connection) -> None:
            row = sessions.require(conn, who.tenant, session_id, for_update=True)
            sessions.require_not_deleted(row)
            leases.revoke(conn, row, str(who), "session deleted", state=STATE_DELETED, deleted_us=row.now_us)
            audit.record(conn, who.tenant, row.now_us, str(who), "session.deleted", session_id)

        run_tx(self.engine, work, "delete session")
        return self.get_session(who, session_id)

    def undelete_session(self, who: Principal, session_id: str) -> SessionInfo:
        def work(conn: Connection) -> None:
            row = sessions.require(conn, who.tenant, session_id, for_update=True)
            if row.state != STATE_DELETED:
                raise precondition("SESSION_NOT_DELETED", f"session {session_id!r} is not deleted")
            sessions.update(conn, row, state=STATE_ACTIVE, deleted_us=None)
            audit.record(conn, who.tenant, row.now_us, str(who), "session.undeleted", session_id)

        run_tx(self.engine, work, "undelete session")
        return self.get_session(who, session_id)

    def destroy_session(self, who: Principal, session_id: str) -> int:
        def work(conn: Connection) -> int:
            sessions.require(conn, who.tenant, session_id, for_update=True)
            count = records.destroy(conn, who.tenant, session_id)
            audit.record(conn, who.tenant, db_now_us(conn), str(who), "session.destroyed", session_id, records=count)
            return count

        return run_tx(self.engine, work, "destroy session")

    def list_versions(self, who: Principal, session_id: str, below: int, limit: int) -> list[RecordRow]:
        def work(conn: Connection) -> list[RecordRow]:
            sessions.require(conn, who.tenant, session_id)
            return records.history(conn, who.tenant, session_id, below, limit)

        return run_tx(self.engine, work, "list versions")

    # -- nodes ----------------------------------------------------------------

    def heartbeat(self, who: Principal, beat: NodeBeat) -> PoolView:
        def work(conn: Connection) -> PoolView:
            now = db_now_us(conn)
            nodes.beat(conn, who.tenant, beat.node_id, beat.address, beat.session_ids, beat.capacity, beat.pool, now)
            live = nodes.live(conn, who.tenant, now)
            return PoolView(
                claimable=nodes.claimable(conn, who.tenant, beat.node_id, now) if beat.pool else [],
                live_nodes=len(live),
                live_pool_nodes=sum(1 for n in live if n.pool),
                active_sessions=nodes.active_sessions(conn, who.tenant),
            )

        return run_tx(self.engine, work, "heartbeat")

    def list_nodes(self, who: Principal) -> list[nodes.NodeRow]:
        return run_tx(self.engine, lambda c: nodes.live(c, who.tenant, db_now_us(c)), "list nodes")

    def move_session(self, who: Principal, session_id: str, target: str) -> tuple[str, str]:
        """Reserve the session for the target and tell both nodes; returns (target, previous owner)."""

        def work(conn: Connection) -> tuple[str, str]:
            row = sessions.require(conn, who.tenant, session_id, for_update=True)
            sessions.require_not_deleted(row)
            owner = row.lease_owner if row.lease_live() else None
            live = nodes.live(conn, who.tenant, row.now_us)
            chosen = _pick_target(live, target, owner)
            sessions.update(conn, row, move_target=chosen, move_expires_us=row.now_us + MOVE_RESERVATION_US)
            if owner:
                commands.enqueue(conn, who.tenant, owner, session_id, commands.KIND_RELEASE, row.now_us)
            commands.enqueue(conn, who.tenant, chosen, session_id, commands.KIND_CLAIM, row.now_us)
            audit.record(conn, who.tenant, row.now_us, str(who), "session.move_requested", session_id,
                         target=chosen, previous_owner=owner)  # fmt: skip
            return chosen, owner or ""

        return run_tx(self.engine, work, "move session")

    def take_commands(self, who: Principal, node_id: str) -> list[commands.Command]:
        return run_tx(self.engine, lambda c: commands.take(c, who.tenant, node_id, db_now_us(c)), "take commands")

    def collect_orphans(self) -> int:
        return run_tx(self.engine, lambda c: records.collect_orphans(c, db_now_us(c) - ORPHAN_AGE_US))


@dataclass(frozen=True)
class NodeBeat:
    node_id: str
    address: str
    session_ids: list[str]
    capacity: int
    pool: bool


@dataclass(frozen=True)
class PoolView:
    claimable: list[str]
    live_nodes: int
    live_pool_nodes: int
    active_sessions: int


def _pick_target(live: list[nodes.NodeRow], target: str, owner: str | None) -> str:
    if target == "any":
        others = [n for n in live if n.node_id != owner]
        if not others:
            raise precondition("NO_TARGET_NODE", "no other live node to move the session to")
        return min(others, key=lambda n: (len(n.session_ids), n.node_id)).node_id
    if target == owner:
        raise precondition("ALREADY_THERE", f"node {target!r} already runs the session")
    if target not in {n.node_id for n in live}:
        raise precondition("NODE_NOT_LIVE", f"node {target!r} has not sent a heartbeat recently")
    return target


class Upload:
    """A record arriving in several chunks: each chunk is sealed and stored as
    it comes (memory bounded by chunk size), then published by `finish`."""

    def __init__(self, vault: Vault, who: Principal, header: RecordHeader, salt: bytes) -> None:
        self.vault = vault
        self.who = who
        self.header = header
        self.salt = salt
        self.record_id = os.urandom(16)
        self.next_index = 0
        self.size = 0
        # abort() may run in another thread while add() is storing a chunk
        # (the stream was cut): the lock orders them so no chunk survives.
        self._lock = threading.Lock()
        self._aborted = False

    def add(self, data: bytes, last: bool) -> None:
        rec = self.vault._new_record(self.header, self.record_id, 0, 0)
        sealed = self.vault._seal_with_salt(self.who, self.salt, rec, self.next_index, last, data)
        index = self.next_index

        def work(conn: Connection) -> None:
            now = db_now_us(conn)
            records.insert_chunk(conn, self.who.tenant, self.header.session_id, self.record_id, index, sealed, now)

        with self._lock:
            if self._aborted:
                raise precondition("UPLOAD_ABORTED", "the upload was aborted")
            run_tx(self.vault.engine, work, "store chunk")
        self.next_index += 1
        self.size += len(data)

    def finish(self) -> int:
        rec = self.vault._new_record(self.header, self.record_id, self.size, self.next_index)

        def work(conn: Connection) -> int:
            row = sessions.require(conn, self.who.tenant, self.header.session_id, for_update=True)
            if row.salt != self.salt:
                raise precondition("SESSION_RECREATED", "the session was destroyed and re-created meanwhile")
            records.publish(conn, self.who.tenant, row, rec)
            return rec.version

        try:
            version = run_tx(self.vault.engine, work, "publish record")
        except VaultError:
            self.abort()
            raise
        self.vault._after_commit(self.who, self.header)
        return version

    def abort(self) -> None:
        """Forget the stored chunks; they were never visible."""
        with self._lock:
            self._aborted = True
            self._delete_chunks()

    def _delete_chunks(self) -> None:
        try:
            run_tx(
                self.vault.engine,
                lambda c: records.delete_chunks(c, self.who.tenant, self.header.session_id, self.record_id),
                "abort upload",
            )
        except Exception:  # the orphan collector will get them
            log.exception("could not delete the chunks of an aborted upload")


__all__ = ["KIND_DELTA", "KIND_SNAPSHOT", "RecordHeader", "Settings", "Upload", "Vault"]
