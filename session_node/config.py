"""Command line of the session node (flags, with environment fallbacks)."""

from __future__ import annotations

import argparse
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

from session_node.pool import PoolSettings
from vault_service.errors import VaultError
from vault_service.ids import check_id


class ConfigError(ValueError):
    """Reported as one line, exit code 2."""


@dataclass(frozen=True)
class NodeConfig:
    node_id: str
    vault: str
    token: str
    data_dir: Path
    sessions: list[str]
    driver: str = "neonize"
    lease_ttl_s: int = 15
    lease_margin_s: float = 3.0
    snapshot_every: int = 1000
    connect_timeout_s: float = 10.0
    log_level: str = "INFO"
    worker_args: list[str] = field(default_factory=list)
    pool: PoolSettings = field(default_factory=PoolSettings)
    trace_acks: bool = False


def build_parser() -> argparse.ArgumentParser:
    env = os.environ.get
    p = argparse.ArgumentParser(
        prog="python -m session_node",
        description="Session node: runs WhatsApp sessions (one worker process each), streams every change "
        "of their credential stores to the vault, and restores them before start.",
    )
    p.add_argument(
        "--node-id",
        default=env("SESSION_NODE_ID", socket.gethostname().split(".")[0]),
        help="this node's id [SESSION_NODE_ID, default: the host name]",
    )
    p.add_argument(
        "--vault",
        default=env("SESSION_NODE_VAULT", "127.0.0.1:50051"),
        help="vault address HOST:PORT [SESSION_NODE_VAULT, default 127.0.0.1:50051]",
    )
    p.add_argument(
        "--token", default=env("SESSION_NODE_TOKEN"), help="node-role bearer token of the vault [SESSION_NODE_TOKEN]"
    )
    p.add_argument(
        "--data-dir",
        default=env("SESSION_NODE_DATA_DIR", "node-data"),
        help="where session stores live, DATA_DIR/SESSION/store.sqlite3, and the node's event log "
        "DATA_DIR/events.jsonl [SESSION_NODE_DATA_DIR, default ./node-data]",
    )
    p.add_argument(
        "--session",
        action="append",
        default=[],
        metavar="NAME",
        help="a session to run (repeatable); the node stands by while another node holds it",
    )
    p.add_argument(
        "--driver",
        choices=("neonize", "simulated", "none"),
        default=env("SESSION_NODE_DRIVER", "neonize"),
        help="neonize: the real WhatsApp client (QR code on first start); simulated: offline "
        "whatsmeow-shaped traffic for demos and tests; none: no worker at all, the node only restores, "
        "captures and syncs a store that something else writes (benchmarks; warming stores up) "
        "[SESSION_NODE_DRIVER, default neonize]",
    )
    p.add_argument(
        "--lease-ttl", type=int, default=15, help="lease lifetime in seconds (default 15); renewed every TTL/3"
    )
    p.add_argument(
        "--lease-margin",
        type=float,
        default=3.0,
        help="stop the worker this many seconds before an unrenewed lease runs out (default 3)",
    )
    p.add_argument(
        "--snapshot-every", type=int, default=1000, help="send a full snapshot after this many deltas (default 1000)"
    )
    p.add_argument(
        "--connect-timeout",
        type=float,
        default=10.0,
        help="seconds to wait for the vault at start-up before giving up (default 10)",
    )
    p.add_argument(
        "--log-level",
        default=env("SESSION_NODE_LOG_LEVEL", "INFO"),
        help="DEBUG, INFO, WARNING or ERROR [SESSION_NODE_LOG_LEVEL, default INFO]",
    )
    p.add_argument(
        "--worker-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="pass ARG on to every worker (repeatable; diagnostics and tests), e.g. --worker-arg=--probe-me "
        "(neonize: report the loaded device after a failed connect) or --worker-arg=--logout-after=50 "
        "(simulated); see python -m session_node.worker --help",
    )
    p.add_argument(
        "--pool",
        action="store_true",
        help="also run sessions of the tenant that no live node owns, up to a fair share "
        "(ceil(active sessions / live pool nodes)) and --capacity",
    )
    p.add_argument("--capacity", type=int, default=0, help="pool mode: most sessions this node runs (0: no limit)")
    p.add_argument(
        "--trace-acks",
        action="store_true",
        help="benchmarks: record every acked record in events.jsonl (record_acked: session, version, kind, "
        "bytes, upto_seq = highest changelog seq it holds, acked_t); with --sim-trace-changes the workers "
        "write their changes (seq, committed_t) to DATA_DIR/SESSION/changes.jsonl",
    )
    sim = p.add_argument_group("simulated driver")
    sim.add_argument("--sim-rate", type=float, default=3.0, help="changes per second per session (default 3)")
    sim.add_argument(
        "--sim-count", type=int, default=0, help="changes per session, then idle (default 0: until stopped)"
    )
    sim.add_argument("--sim-seed", type=int, default=None, help="random seed")
    sim.add_argument("--sim-initial-rows", type=int, default=0, help="pre-populate each store with this many rows")
    sim.add_argument("--sim-trace-changes", action="store_true", help="workers report every change (benchmarks)")
    return p  # fmt: skip


def load(argv: list[str] | None = None) -> NodeConfig:
    args = build_parser().parse_args(argv)
    if not args.token:
        raise ConfigError("no token: pass --token or set SESSION_NODE_TOKEN (a node-role token of the vault)")
    if not args.session and not args.pool:
        raise ConfigError("no session: pass --session NAME (repeatable) or --pool")
    if args.capacity < 0:
        raise ConfigError("--capacity must be >= 0")
    try:
        check_id(args.node_id, "node id")
        for name in args.session:
            check_id(name, "session name")
    except VaultError as err:
        raise ConfigError(err.message) from None
    if args.lease_ttl < 3 or not 0 < args.lease_margin < args.lease_ttl / 2:
        raise ConfigError("--lease-ttl must be >= 3 and --lease-margin between 0 and TTL/2")
    if not args.connect_timeout > 0:
        raise ConfigError("--connect-timeout must be > 0")
    if args.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError(f"--log-level {args.log_level!r} is not one of DEBUG, INFO, WARNING, ERROR")
    if ":" not in args.vault:
        raise ConfigError(f"--vault {args.vault!r} is not HOST:PORT")
    return NodeConfig(
        node_id=args.node_id,
        vault=args.vault,
        token=args.token,
        data_dir=Path(args.data_dir).absolute(),
        sessions=list(dict.fromkeys(args.session)),
        driver=args.driver,
        lease_ttl_s=args.lease_ttl,
        lease_margin_s=args.lease_margin,
        snapshot_every=args.snapshot_every,
        connect_timeout_s=args.connect_timeout,
        log_level=args.log_level.upper(),
        worker_args=(_sim_args(args) if args.driver == "simulated" else []) + args.worker_arg,
        pool=PoolSettings(args.pool, args.capacity),
        trace_acks=args.trace_acks,
    )


def _sim_args(args: argparse.Namespace) -> list[str]:
    out = ["--rate", str(args.sim_rate), "--count", str(args.sim_count)]
    if args.sim_seed is not None:
        out += ["--seed", str(args.sim_seed)]
    if args.sim_initial_rows:
        out += ["--initial-rows", str(args.sim_initial_rows)]
    if args.sim_trace_changes:
        out.append("--trace-changes")
    return out
