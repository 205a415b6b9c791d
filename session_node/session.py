"""One session's life on a node: stand by until the lease is ours, restore,
start the worker, ship its changes, and stop it before the lease can pass on."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sessionvault.v1 import common_pb2 as pb

from session_node import prepare as prepare_mod
from session_node import worker_protocol as wp
from session_node.lease import LeaseKeeper, LeaseLost, LeaseSettings
from session_node.storeio import StoreIO
from session_node.sync import Fenced, SessionSync, SyncSettings
from session_node.vault_client import SyncStream, VaultClient, VaultRefused, VaultUnavailable
from session_node.worker_handle import WorkerHandle

log = logging.getLogger(__name__)

RESTART_BACKOFF_MAX_S = 60.0
SYNC_STOP_TIMEOUT_S = 10.0  # how long a stopping session waits for its record in flight


class Outcome(enum.Enum):
    STOPPED = "stopped"  # asked to stop: flushed and released
    FENCED = "fenced"  # lost the lease: worker stopped, stand by again
    CONFLICT = "conflict"  # StreamReplaced: another process runs these keys; never restarted
    LOGGED_OUT = "logged_out"  # WhatsApp logged the device out; the vault keeps the last good state
    FAILED = "failed"  # the worker cannot run this store (store error, bad arguments)


FINAL = {Outcome.STOPPED, Outcome.CONFLICT, Outcome.LOGGED_OUT, Outcome.FAILED}
# Worker events copied into events.jsonl as "worker_<name>" (EV_ME: the device a worker loaded,
# reported with --worker-arg=--probe-me).
RECORDED_WORKER_EVENTS = frozenset(
    {wp.EV_PAIRED, wp.EV_CONNECTED, wp.EV_LOGGED_OUT, wp.EV_STREAM_REPLACED, wp.EV_CONNECT_FAILED, wp.EV_ME}
)


@dataclass
class NodeContext:
    """What every session of a node shares."""

    client: VaultClient
    io: StoreIO
    stream: SyncStream
    data_dir: Path
    driver: str
    worker_args: list[str]
    lease: LeaseSettings
    sync: SyncSettings
    record: Callable[..., None]  # node event log (events.jsonl)
    max_restores: int = 4  # restores running at once (a cold start of many sessions must not stampede)
    trace_acks: bool = False  # --trace-acks: record_acked events; traced worker changes to SESSION/changes.jsonl
    cache_dir: Path = field(init=False)
    restore_slots: asyncio.Semaphore = field(init=False)

    def __post_init__(self) -> None:
        self.cache_dir = self.data_dir / ".template"
        self.restore_slots = asyncio.Semaphore(self.max_restores)


class SessionRunner:
    """`claim_window_s` None: an explicit --session, stood by for as long as the node runs.
    A number: a claim (pool mode or a move to this node) that gives up if the lease is not
    won within that many seconds, and ends when the session is lost or handed off."""

    def __init__(self, node: NodeContext, session_id: str, claim_window_s: float | None = None) -> None:
        self.node = node
        self.session_id = session_id
        self.claim_window_s = claim_window_s
        self.poke = asyncio.Event()  # try to acquire now (a move names this node)
        self.brisk_until = 0.0  # monotonic: poll the lease often until then (a move is under way)
        self.handing_off = False
        self.dir = node.data_dir / session_id
        self.store_path = self.dir / "store.sqlite3"
        self.io = node.io.lane(session_id)  # this session's store work, always on the same store thread
        self.deadline_file = self.dir / "lease-deadline"
        self.status = "starting"
        self.stop_requested = asyncio.Event()
        self.sync: SessionSync | None = None
        self.keeper: LeaseKeeper | None = None
        self.worker: WorkerHandle | None = None
        self.worker_starts = 0
        self.last_event: dict[str, Any] = {}

    def _record(self, event: str, **fields: object) -> None:
        self.node.record(event, session=self.session_id, **fields)

    async def run(self) -> Outcome:
        self.dir.mkdir(parents=True, exist_ok=True)
        while True:
            lease = await self._acquire()
            if lease is None:
                return Outcome.STOPPED
            outcome = await self._own(lease)
            self.status = outcome.value
            self._record("session_" + outcome.value, handoff=self.handing_off)
            if self.handing_off and outcome == Outcome.STOPPED and self.claim_window_s is None:
                self.handing_off = False  # moved away: an explicit session goes back to standby
                self.stop_requested.clear()
                continue
            if outcome in FINAL or self.claim_window_s is not None:
                return outcome

    def stop(self) -> None:
        self.stop_requested.set()

    def hand_off(self) -> None:
        """The vault moves this session elsewhere: flush, release, stop the worker."""
        self.handing_off = True
        self.stop_requested.set()

    def claim(self, window_s: float) -> None:
        """A move names this node: poll for the lease briskly until its owner lets go."""
        self.brisk_until = time.monotonic() + window_s
        self.poke.set()

    @property
    def owns(self) -> bool:
        return self.keeper is not None

    # -- standby ----------------------------------------------------------------

    async def _acquire(self) -> pb.Lease | None:
        delay = 0.5
        give_up = None if self.claim_window_s is None else time.monotonic() + self.claim_window_s
        while not self.stop_requested.is_set():
            if give_up is not None and time.monotonic() > give_up:
                return None
            try:
                response = await self.node.client.acquire(self.session_id, self.node.lease.ttl_s)
            except VaultUnavailable as err:
                self.status = "waiting_for_vault"
                log.warning("%s: vault unavailable (%s)", self.session_id, err)
            except VaultRefused as err:
                self.status = "refused"
                log.error("%s: lease refused: %s", self.session_id, err)
                delay = max(delay, 5.0)
            else:
                if response.acquired:
                    self._record("lease_acquired", epoch=response.lease.epoch, head=response.lease.head_version)
                    return response.lease
                if self.status != "standby":
                    log.info("%s: standby, held by %s", self.session_id, response.lease.node_id)
                self.status = "standby"
                delay = self._until_expiry(response.lease)
            if self.claim_window_s is not None or time.monotonic() < self.brisk_until:
                delay = min(delay, 0.3)  # a claim polls briskly: a move should complete in about a second
            await self._pause(delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, self.node.lease.renew_every_s) if self.status != "standby" else delay
        return None

    async def _pause(self, seconds: float) -> None:
        """Sleep, but wake at once for a stop or a poke."""
        waits = [asyncio.create_task(self.stop_requested.wait()), asyncio.create_task(self.poke.wait())]
        try:
            await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
        self.poke.clear()

    def _until_expiry(self, lease: pb.Lease) -> float:
        """Poll again around the holder's expiry (judged by the vault), at least every TTL/3."""
        left = lease.expire_time.ToMicroseconds() / 1e6 - time.time()
        return max(0.2, min(self.node.lease.renew_every_s, left + 0.2))

    # -- ownership --------------------------------------------------------------

    async def _own(self, lease: pb.Lease) -> Outcome:
        keeper = LeaseKeeper(self.node.client, self.session_id, lease, self.node.lease, self.deadline_file)
        self.keeper = keeper
        lease_task = asyncio.create_task(keeper.run())
        try:
            self.status = "restoring"
            async with self.node.restore_slots:
                prepared = await prepare_mod.prepare(
                    self.node.client, self.io, self.session_id, self.store_path, lease, self.node.cache_dir
                )
            self._record("store_ready", decision=prepared.decision.value, head=lease.head_version)
            if prepared.vault_state == pb.SESSION_STATE_LOGGED_OUT:
                log.error("%s: logged out in the vault; delete or destroy it to pair again", self.session_id)
                await self._release(keeper)
                return Outcome.LOGGED_OUT
            sync = SessionSync(
                self.session_id, self.store_path, self.io, self.node.stream,
                lambda: keeper.epoch, self.node.sync, keeper.reacquire,
                on_ack=self._record if self.node.trace_acks else None,
            )  # fmt: skip
            self.sync = sync
            await sync.open()
            try:
                return await self._running(keeper, lease_task, sync)
            finally:
                await sync.close()
        except LeaseLost as lost:
            return await self._fenced(lost.reason)
        finally:
            lease_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, LeaseLost):
                await lease_task
            self.keeper = None

    async def _running(self, keeper: LeaseKeeper, lease_task: asyncio.Task, sync: SessionSync) -> Outcome:
        sync_task = asyncio.create_task(sync.run())
        worker_task = asyncio.create_task(self._worker_loop(keeper))
        stop_task = asyncio.create_task(self.stop_requested.wait())
        tasks = {lease_task, sync_task, worker_task, stop_task}
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            if lease_task in done or sync_task in done:
                reason = _failure_reason(lease_task if lease_task in done else sync_task)
                await self._kill_worker()
                return await self._fenced(reason)
            if stop_task in done:
                # One flusher at a time: the final flush takes over once the sync task is done.
                sync_ended = await self._stop_sync(sync, sync_task)
                await self._stop_worker()
                if sync_ended:
                    await self._final_flush(sync)
                await self._release(keeper)
                return Outcome.STOPPED
            outcome = worker_task.result()
            if not await self._stop_sync(sync, sync_task):
                sync = None  # no final flush after a record was cut short (see _stop_sync)
            return await self._after_worker(outcome, keeper, sync)
        finally:
            for task in (sync_task, worker_task, stop_task):
                task.cancel()
            await asyncio.gather(sync_task, worker_task, stop_task, return_exceptions=True)

    async def _stop_sync(self, sync: SessionSync, task: asyncio.Task) -> bool:
        """End the sync task between records (see SessionSync.stop). True if it ended so; False if
        it had to be cancelled (a record stuck in flight, e.g. the vault hung): the record's fate
        is then unknown, so no final flush follows and the changes stay in the local changelog."""
        sync.stop()
        done, _ = await asyncio.wait({task}, timeout=SYNC_STOP_TIMEOUT_S)
        if not done:
            await _cancel(task)
            log.warning("%s: a record stayed in flight for %.0f s; final flush skipped, changes stay in the local "
                        "store", self.session_id, SYNC_STOP_TIMEOUT_S)  # fmt: skip
            return False
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.warning("%s: sync ended with %r", self.session_id, exc)
        return True

    async def _after_worker(self, outcome: Outcome, keeper: LeaseKeeper, sync: SessionSync | None) -> Outcome:
        if outcome == Outcome.LOGGED_OUT:
            # The emptied store is not shipped: the vault keeps the last good state.
            with contextlib.suppress(VaultUnavailable, VaultRefused):
                await self.node.client.mark_logged_out(self.session_id, keeper.epoch, "logged out by WhatsApp")
            await self._release(keeper)
            return outcome
        if outcome == Outcome.FENCED:
            return await self._fenced("WORKER_LEASE_EXPIRED")
        if sync is not None:
            sync.hold_device_delete = False
            await self._final_flush(sync)
        await self._release(keeper)
        return outcome

    async def _worker_loop(self, keeper: LeaseKeeper) -> Outcome:
        """Run the worker, restarting it with backoff after crashes and failed connects."""
        if self.node.driver == "none":  # no worker: something else writes the store; capture and sync only
            self.status = "running"
            await asyncio.Event().wait()
        backoff = 1.0
        while True:
            self.status = "running"
            started = time.monotonic()
            rc = await self._run_worker_once()
            label = wp.describe_exit(rc)
            self._record("worker_exited", rc=rc, exit=label)
            if rc == wp.EXIT_STREAM_REPLACED:
                log.error("%s: StreamReplaced: another client runs these keys; not restarting", self.session_id)
                return Outcome.CONFLICT
            if rc == wp.EXIT_LOGGED_OUT:
                return Outcome.LOGGED_OUT
            if rc == wp.EXIT_LEASE_EXPIRED:
                return Outcome.FENCED
            if rc == wp.EXIT_OK:
                self.status = "idle"  # the worker finished by itself (simulated --count): keep the state synced
                await asyncio.Event().wait()
            if not wp.should_restart(rc):
                log.error("%s: worker exited with %s; not restarting", self.session_id, label)
                return Outcome.FAILED
            if time.monotonic() - started > RESTART_BACKOFF_MAX_S:
                backoff = 1.0
            self.status = "backoff"
            log.warning("%s: worker exited (%s); restarting in %.0f s", self.session_id, label, backoff)
            await asyncio.sleep(backoff * random.uniform(0.8, 1.2))
            backoff = min(backoff * 2, RESTART_BACKOFF_MAX_S)

    async def _run_worker_once(self) -> int:
        args = self.node.worker_args
        if self.node.trace_acks and self.node.driver == "simulated":
            args = [*args, "--trace-file", str(self.dir / "changes.jsonl")]  # used with --sim-trace-changes
        worker = WorkerHandle(
            self.session_id, self.store_path, self.node.driver, self.deadline_file, args,
            self._on_worker_event, activity_log=self.dir / "activity.jsonl",
        )  # fmt: skip
        self.worker = worker
        try:
            await worker.start()
            self.worker_starts += 1
            self._record("worker_started", pid=worker.pid)
            return await worker.wait()
        finally:
            if worker.proc is not None and worker.proc.returncode is None:
                await worker.kill()

    def _on_worker_event(self, event: dict[str, Any]) -> None:
        self.last_event = event
        name = event.get("event")
        if name == wp.EV_QR:
            log.info("%s: scan the QR code shown by the worker to pair this session", self.session_id)
        elif name == wp.EV_CONNECT_FAILED:
            log.warning("%s: cannot reach WhatsApp (%s); the worker is retried with backoff",
                        self.session_id, event.get("message", "?"))  # fmt: skip
        if name in RECORDED_WORKER_EVENTS:
            self._record("worker_" + str(name), **{k: v for k, v in event.items() if k not in ("event", "t")})
        if name == wp.EV_PAIRED and self.sync is not None:
            self.sync.snapshot_requested = True  # a fresh pairing: ship the whole store
            self.sync.changed.set()

    async def _stop_worker(self) -> None:
        if self.worker is not None:
            await self.worker.stop()

    async def _kill_worker(self) -> None:
        if self.keeper is not None:
            self.keeper.revoke_locally()
        if self.worker is not None:
            await self.worker.kill()

    async def _final_flush(self, sync: SessionSync) -> None:
        """Ship what is left before letting go; whatever cannot be shipped stays in the changelog."""
        try:
            async with asyncio.timeout(10):
                while await sync.flush_once(force=True):
                    pass
        except (VaultUnavailable, VaultRefused, Fenced, TimeoutError) as err:
            log.warning("%s: final flush incomplete (%s); changes stay in the local store", self.session_id, err)

    async def _release(self, keeper: LeaseKeeper) -> None:
        keeper.revoke_locally()
        try:
            await self.node.client.release(self.session_id, keeper.epoch)
            self._record("lease_released", epoch=keeper.epoch)
        except (VaultUnavailable, VaultRefused) as err:
            log.warning("%s: could not release the lease (%s); it will expire", self.session_id, err)

    async def _fenced(self, reason: str) -> Outcome:
        await self._kill_worker()
        log.error("%s: FENCED (%s): worker stopped; unacked changes stay in the local store", self.session_id, reason)
        self._record("fenced", reason=reason)
        self.status = "fenced"
        return Outcome.FENCED


async def _cancel(task: asyncio.Task) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def _failure_reason(task: asyncio.Task) -> str:
    exc = task.exception()
    if isinstance(exc, (LeaseLost, Fenced)):
        return exc.reason
    if exc is not None:
        log.error("session task failed: %r", exc, exc_info=exc)
        return type(exc).__name__
    return "ENDED"
