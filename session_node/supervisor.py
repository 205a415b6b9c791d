"""The node process: checks its surroundings, then runs every session."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sessionvault.v1 import sync_service_pb2 as sync_pb

from session_node.config import ConfigError, NodeConfig
from session_node.lease import LeaseSettings
from session_node.pool import MOVE_CLAIM_WINDOW_S, Pool
from session_node.session import NodeContext, SessionRunner
from session_node.storeio import StoreIO
from session_node.sync import SyncSettings
from session_node.vault_client import SyncStream, VaultClient

log = logging.getLogger(__name__)


class EventLog:
    """DATA_DIR/events.jsonl: what happened to each session, one JSON object per line."""

    def __init__(self, path: Path, node_id: str) -> None:
        self.file = path.open("a", buffering=1)
        self.node_id = node_id

    def __call__(self, event: str, **fields: object) -> None:
        record = {"t": round(time.time(), 6), "node": self.node_id, "event": event, **fields}
        self.file.write(json.dumps(record, default=str) + "\n")

    def close(self) -> None:
        self.file.close()


def check_data_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-check-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"data dir {path} is not writable: {exc.strerror}") from None


async def check_vault(client: VaultClient, timeout_s: float) -> None:
    """A reachable vault that accepts our token, or one clear line."""
    health = health_pb2_grpc.HealthStub(client.channel)
    try:
        await health.Check(health_pb2.HealthCheckRequest(), timeout=timeout_s, wait_for_ready=True)
    except grpc.aio.AioRpcError as err:
        raise ConfigError(
            f"cannot reach the vault at {client.address} within {timeout_s:g} s ({err.code().name}); "
            "is it running, and is --vault HOST:PORT right?"
        ) from None
    try:  # any node-role call tells whether the token is good; this one reads nothing
        await client.stub.Restore(
            sync_pb.RestoreRequest(session_id="token-check"), metadata=client.metadata, timeout=timeout_s
        ).read()
    except grpc.aio.AioRpcError as err:
        if err.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
            raise ConfigError(f"the vault refused the token: {err.details()}") from None


class Supervisor:
    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.runners: dict[str, SessionRunner] = {}
        self.tasks: set[asyncio.Task] = set()
        self.stopping = asyncio.Event()

    async def run(self) -> int:
        cfg = self.config
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):  # from the start: a stop while connecting exits cleanly
            loop.add_signal_handler(sig, self.stop)
        check_data_dir(cfg.data_dir)
        client = VaultClient(cfg.vault, cfg.token, cfg.node_id)
        events = EventLog(cfg.data_dir / "events.jsonl", cfg.node_id)
        io = StoreIO()
        try:
            await check_vault(client, cfg.connect_timeout_s)
            stream = SyncStream(client, self._on_command)
            node = NodeContext(
                client=client, io=io, stream=stream, data_dir=cfg.data_dir, driver=cfg.driver,
                worker_args=cfg.worker_args, lease=LeaseSettings(cfg.lease_ttl_s, cfg.lease_margin_s),
                sync=SyncSettings(snapshot_every_deltas=cfg.snapshot_every), record=events,
                trace_acks=cfg.trace_acks,
            )  # fmt: skip
            events("node_started", sessions=cfg.sessions, driver=cfg.driver, pid=os.getpid())
            return await self._serve(node)
        finally:
            events("node_stopped")
            events.close()
            await client.close()
            io.shutdown()

    async def _serve(self, node: NodeContext) -> int:
        self.node = node
        self.pool = Pool(node.client, self.config.pool, self._owned, lambda: set(self.runners), self._start_claim)
        background = [
            asyncio.create_task(node.io.watch_loop()),
            asyncio.create_task(node.stream.run()),
            asyncio.create_task(self.pool.run()),
        ]
        for name in self.config.sessions:
            self._start(SessionRunner(node, name))
        log.info("node %s: sessions %s%s, vault %s, driver %s", self.config.node_id, self.config.sessions,
                 " + pool" if self.config.pool.enabled else "", self.config.vault, self.config.driver)  # fmt: skip
        try:
            await self._until_done()
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
        return 0

    async def _until_done(self) -> None:
        """Until SIGTERM (pool mode) or until every explicit session has ended, then drain."""
        while not (self.stopping.is_set() and not self.tasks):
            if not self.config.pool.enabled and not self.tasks:
                return
            waits = [asyncio.create_task(self.stopping.wait()), *self.tasks]
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            waits[0].cancel()

    def _start(self, runner: SessionRunner) -> None:
        self.runners[runner.session_id] = runner
        task = asyncio.create_task(runner.run())
        self.tasks.add(task)

        def done(t: asyncio.Task) -> None:
            self.tasks.discard(t)
            if self.runners.get(runner.session_id) is runner:
                del self.runners[runner.session_id]
            if not t.cancelled() and t.exception() is None:
                log.info("%s: %s", runner.session_id, t.result().value)

        task.add_done_callback(done)

    def _start_claim(self, session_id: str, window_s: float) -> None:
        if session_id in self.runners or self.stopping.is_set():
            return
        self._start(SessionRunner(self.node, session_id, claim_window_s=window_s))

    def _owned(self) -> list[str]:
        return [name for name, runner in self.runners.items() if runner.owns]

    def stop(self) -> None:
        log.info("stopping: flushing and releasing every session")
        self.stopping.set()
        for runner in self.runners.values():
            runner.stop()

    def _on_command(self, command: sync_pb.NodeCommand) -> None:
        runner = self.runners.get(command.session_id)
        self.node.record("command", session=command.session_id, kind=sync_pb.NodeCommandKind.Name(command.kind))
        if command.kind == sync_pb.NODE_COMMAND_KIND_CLAIM:
            if runner is not None:
                runner.claim(MOVE_CLAIM_WINDOW_S)
            else:
                self._start_claim(command.session_id, MOVE_CLAIM_WINDOW_S)
            return
        if runner is None:
            return
        if command.kind == sync_pb.NODE_COMMAND_KIND_SNAPSHOT_NOW and runner.sync is not None:
            runner.sync.snapshot_requested = True
            runner.sync.changed.set()
        elif command.kind == sync_pb.NODE_COMMAND_KIND_RELEASE:
            runner.hand_off()
