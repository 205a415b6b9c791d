"""Configuration from flags and environment variables (flags win)."""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from vault_service import crypto
from vault_service.storage.tokens import ROLES


class ConfigError(ValueError):
    """A configuration problem, reported as one line at start-up."""


@dataclass(frozen=True)
class BootstrapToken:
    token: str
    role: str
    tenant: str
    name: str


@dataclass(frozen=True)
class Config:
    listen: str
    database_url: str
    database_tls: bool
    database_tls_ca: str | None
    keyring: crypto.Keyring
    tokens: list[BootstrapToken] = field(default_factory=list)
    dev: bool = False
    lease_ttl_s: int = 15
    keep_snapshots: int = 3
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None
    grace_s: float = 10.0
    log_level: str = "INFO"
    migrate_only: bool = False


def build_parser() -> argparse.ArgumentParser:
    env = os.environ.get
    p = argparse.ArgumentParser(
        prog="python -m vault_service",
        description="Session Vault service: encrypted, versioned, leased storage of WhatsApp sessions over gRPC.",
        epilog=(
            "Master key: VAULT_MASTER_KEY (32 bytes as 64 hex digits or base64) or VAULT_MASTER_KEY_FILE, "
            "with id VAULT_MASTER_KEY_ID (default k1); refused if missing or weak unless --dev. "
            "Bootstrap tokens of the --tenant: VAULT_ADMIN_TOKEN (admin role) and VAULT_NODE_TOKEN (node role)."
        ),
    )
    p.add_argument(
        "--listen",
        default=env("VAULT_LISTEN", "127.0.0.1:50051"),
        help="host:port to serve gRPC on [VAULT_LISTEN, default 127.0.0.1:50051]",
    )
    p.add_argument(
        "--database-url",
        default=env("VAULT_DATABASE_URL", "sqlite:///vault.db"),
        help="SQLAlchemy URL: sqlite:///path (default sqlite:///vault.db) or "
        "mysql+pymysql://user:pw@host:port/db for MariaDB/MySQL/TiDB [VAULT_DATABASE_URL]",
    )
    p.add_argument(
        "--database-tls",
        action="store_true",
        default=env("VAULT_DATABASE_TLS", "") == "1",
        help="TLS to the database with the system CA bundle and hostname check, as TiDB Cloud "
        "requires [VAULT_DATABASE_TLS=1]",
    )
    p.add_argument(
        "--database-tls-ca",
        default=env("VAULT_DATABASE_TLS_CA"),
        help="CA file for database TLS (implies --database-tls) [VAULT_DATABASE_TLS_CA]",
    )
    p.add_argument(
        "--tenant",
        default=env("VAULT_TENANT", "default"),
        help="tenant of the bootstrap tokens [VAULT_TENANT, default 'default']",
    )
    p.add_argument(
        "--tokens-file",
        default=env("VAULT_TOKENS_FILE"),
        help="JSON list of {token, role: admin|node, tenant, name} to register [VAULT_TOKENS_FILE]",
    )
    p.add_argument(
        "--lease-ttl",
        type=int,
        default=int(env("VAULT_LEASE_TTL", "15")),
        help="default lease lifetime in seconds [VAULT_LEASE_TTL, default 15]",
    )
    p.add_argument(
        "--keep-snapshots",
        type=int,
        default=int(env("VAULT_KEEP_SNAPSHOTS", "3")),
        help="history kept per session: this many newest snapshots and the deltas after the "
        "oldest of them [VAULT_KEEP_SNAPSHOTS, default 3]",
    )
    p.add_argument("--tls-cert", default=env("VAULT_TLS_CERT"), help="server certificate (PEM) [VAULT_TLS_CERT]")
    p.add_argument("--tls-key", default=env("VAULT_TLS_KEY"), help="server private key (PEM) [VAULT_TLS_KEY]")
    p.add_argument(
        "--tls-client-ca",
        default=env("VAULT_TLS_CLIENT_CA"),
        help="CA of client certificates; set to require mTLS [VAULT_TLS_CLIENT_CA]",
    )
    p.add_argument("--grace", type=float, default=10.0, help="seconds to let RPCs finish on SIGTERM (default 10)")
    p.add_argument("--log-level", default=env("VAULT_LOG_LEVEL", "INFO"), help="[VAULT_LOG_LEVEL, default INFO]")
    p.add_argument("--migrate-only", action="store_true", help="apply database migrations and exit")
    p.add_argument(
        "--dev",
        action="store_true",
        help="development mode: without a master key use an EPHEMERAL one (data written is "
        "unreadable after a restart) and without tokens generate and print them",
    )
    return p  # fmt: skip


def load(argv: list[str] | None = None) -> Config:
    args = build_parser().parse_args(argv)
    if args.lease_ttl < 1 or args.keep_snapshots < 1:
        raise ConfigError("--lease-ttl and --keep-snapshots must be at least 1")
    if bool(args.tls_cert) != bool(args.tls_key):
        raise ConfigError("--tls-cert and --tls-key go together")
    return Config(
        listen=args.listen,
        database_url=args.database_url,
        database_tls=args.database_tls or bool(args.database_tls_ca),
        database_tls_ca=args.database_tls_ca,
        keyring=_keyring(args.dev),
        tokens=_tokens(args.tenant, args.tokens_file),
        dev=args.dev,
        lease_ttl_s=args.lease_ttl,
        keep_snapshots=args.keep_snapshots,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_client_ca=args.tls_client_ca,
        grace_s=args.grace,
        log_level=args.log_level.upper(),
        migrate_only=args.migrate_only,
    )


def _keyring(dev: bool) -> crypto.Keyring:
    text = os.environ.get("VAULT_MASTER_KEY")
    path = os.environ.get("VAULT_MASTER_KEY_FILE")
    if text and path:
        raise ConfigError("set VAULT_MASTER_KEY or VAULT_MASTER_KEY_FILE, not both")
    if path:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read VAULT_MASTER_KEY_FILE {path}: {exc.strerror}") from exc
    if not text:
        if dev:
            return crypto.Keyring.ephemeral_dev()
        raise ConfigError("no master key: set VAULT_MASTER_KEY or VAULT_MASTER_KEY_FILE (or use --dev)")
    key_id = os.environ.get("VAULT_MASTER_KEY_ID", "k1")
    try:
        return crypto.Keyring({key_id: crypto.parse_master_key(text)}, key_id)
    except crypto.MasterKeyError as exc:
        raise ConfigError(str(exc)) from exc


def _tokens(tenant: str, tokens_file: str | None) -> list[BootstrapToken]:
    found = []
    for var, role in (("VAULT_ADMIN_TOKEN", "admin"), ("VAULT_NODE_TOKEN", "node")):
        if value := os.environ.get(var):
            found.append(BootstrapToken(value, role, tenant, f"bootstrap-{role}"))
    if tokens_file:
        found.extend(_read_tokens_file(tokens_file))
    for t in found:
        if len(t.token) < 16:
            raise ConfigError(f"token {t.name!r} is shorter than 16 characters")
        if t.role not in ROLES:
            raise ConfigError(f"token {t.name!r} has unknown role {t.role!r} (admin or node)")
    return found


def _read_tokens_file(path: str) -> list[BootstrapToken]:
    try:
        entries = json.loads(Path(path).read_text())
        return [
            BootstrapToken(e["token"], e["role"], e.get("tenant", "default"), e.get("name", e["role"])) for e in entries
        ]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"cannot read tokens file {path}: {exc}") from exc
