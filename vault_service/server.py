"""Wiring: one function builds the gRPC server with its options, one runs it."""

from __future__ import annotations

import asyncio
import logging
import signal
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from sessionvault.v1 import admin_service_pb2, admin_service_pb2_grpc, sync_service_pb2, sync_service_pb2_grpc

from vault_service.admin_servicer import AdminServicer
from vault_service.auth import AuthInterceptor, TokenStore
from vault_service.committer import GroupCommitter
from vault_service.config import Config
from vault_service.storage import tokens
from vault_service.storage.engine import create_engine, db_now_us, migrate, run_tx
from vault_service.storage.tokens import Principal
from vault_service.sync_servicer import SyncServicer
from vault_service.vault import Settings, Vault

log = logging.getLogger(__name__)

SERVICE_NAMES = (
    sync_service_pb2.DESCRIPTOR.services_by_name["SyncService"].full_name,
    admin_service_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name,
)
# Chunks are <= 1 MiB, so gRPC's default 4 MiB limits stay; keepalive lets
# nodes notice a dead vault (and the vault a dead node) on idle Sync streams.
SERVER_OPTIONS = [
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
]


DB_THREADS = 16


@dataclass
class Running:
    server: grpc.aio.Server
    health: health.aio.HealthServicer
    port: int
    vault: Vault
    sync: SyncServicer


def open_vault(config: Config) -> Vault:
    engine = create_engine(config.database_url, tls_ca=config.database_tls_ca, tls=config.database_tls)
    migrate(engine)
    vault = Vault(engine, config.keyring, Settings(config.lease_ttl_s, 3600, config.keep_snapshots))

    def register(conn) -> None:  # type: ignore[no-untyped-def]
        now = db_now_us(conn)
        for t in config.tokens:
            tokens.put(conn, t.token, Principal(t.tenant, t.role, t.name), now)

    run_tx(engine, register, "register bootstrap tokens")
    removed = vault.collect_orphans()
    if removed:
        log.info("collected %d chunks of unfinished uploads", removed)
    return vault


def _credentials(config: Config) -> grpc.ServerCredentials | None:
    if not config.tls_cert:
        return None
    key = Path(config.tls_key or "").read_bytes()
    cert = Path(config.tls_cert).read_bytes()
    client_ca = Path(config.tls_client_ca).read_bytes() if config.tls_client_ca else None
    return grpc.ssl_server_credentials([(key, cert)], client_ca, require_client_auth=client_ca is not None)


async def start(config: Config, vault: Vault) -> Running:
    """Build, bind and start the server (health SERVING once it listens)."""
    # Blocking database work runs in threads: enough of them to keep the pool's connections busy.
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(DB_THREADS, thread_name_prefix="db"))
    store = TokenStore(vault.engine)
    store.reload()
    server = grpc.aio.server(interceptors=[AuthInterceptor(store)], options=SERVER_OPTIONS)
    committer = GroupCommitter(vault)
    committer.start()
    sync = SyncServicer(vault, committer)
    sync_service_pb2_grpc.add_SyncServiceServicer_to_server(sync, server)
    admin_service_pb2_grpc.add_AdminServiceServicer_to_server(AdminServicer(vault), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = (*SERVICE_NAMES, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME)
    reflection.enable_server_reflection(names, server)
    creds = _credentials(config)
    port = server.add_secure_port(config.listen, creds) if creds else server.add_insecure_port(config.listen)
    await server.start()
    for name in ("", *SERVICE_NAMES):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return Running(server, health_servicer, port, vault, sync)


async def stop(running: Running, grace_s: float) -> None:
    """Graceful: report NOT_SERVING, let RPCs in flight finish, then close."""
    await running.health.enter_graceful_shutdown()
    running.sync.close_streams()  # long-lived: they would otherwise hold the drain for the whole grace
    await running.server.stop(grace_s)
    await running.sync.committer.close()
    running.vault.engine.dispose()


async def serve(config: Config, vault: Vault) -> None:
    running = await start(config, vault)
    log.info("session vault listening on %s (database %s)", config.listen, vault.engine.url.render_as_string())
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await stopping.wait()
    log.info("shutting down: draining for up to %.0f s", config.grace_s)
    await stop(running, config.grace_s)
    log.info("stopped")
