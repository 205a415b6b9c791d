"""The per-session WhatsApp worker: one process per session, supervised, never trusted to stay up.

    python -m session_node.worker --driver neonize|simulated --store PATH --session ID
        [--lease-deadline-file PATH] [--activity-log PATH] [--wal] [--no-stdin-watch]
        [simulated: --rate R --count N --seed S --initial-rows N --logout-after N
                    --stream-replaced-after N --trace-changes [--trace-file PATH] --stats-interval SECONDS]
        [tests/diagnostics: --probe-me]

Why a process of its own: a Go panic in neonize aborts the whole process, Python's sqlite3 must
never touch the store in a process that loaded neonize, and neonize leaks store handles. So the
supervisor (which never imports neonize) talks to this process only through:

* stdout: JSON lines, see ``worker_protocol`` (EV_* names). The protocol channel is a private
  duplicate of the original stdout; fd 1 itself is pointed at stderr, so stray prints from
  neonize, segno or Go can never corrupt the protocol.
* the exit code: ``worker_protocol.EXIT_*``.
* stdin: the worker stops cleanly when it reaches EOF, i.e. when the supervisor died.
* SIGTERM/SIGINT: clean stop.
* the lease deadline file (wall-clock unix seconds, replaced atomically by the supervisor on each
  renewal): checked every LEASE_CHECK_INTERVAL and before every simulated write; when it passes
  (or the file disappears) the worker exits at once with EXIT_LEASE_EXPIRED, so a paused or
  partitioned supervisor cannot leave a worker running on a lease it no longer holds.
* the activity log (``--activity-log``): the worker's own record of when it ran, one JSON line
  ``{"session", "pid", "event": "start"|"stop", "t", "reason"}`` appended before its client
  touches the store and after it has stopped writing, on every exit path it controls (a worker
  killed by a signal cannot write its "stop"; the supervisor appends one when it reaps it).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import secrets
import signal
import sqlite3
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import closing, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from . import simulate
from . import worker_protocol as wp

# The contract lives in worker_protocol (importable without neonize); re-exported for readers.
from .worker_protocol import (
    EXIT_BAD_ARGS,
    EXIT_CONNECT_FAILED,
    EXIT_LEASE_EXPIRED,
    EXIT_LOGGED_OUT,
    EXIT_OK,
    EXIT_STORE_ERROR,
    EXIT_STREAM_REPLACED,
)

__all__ = [
    "EXIT_BAD_ARGS",
    "EXIT_CONNECT_FAILED",
    "EXIT_LEASE_EXPIRED",
    "EXIT_LOGGED_OUT",
    "EXIT_OK",
    "EXIT_STORE_ERROR",
    "EXIT_STREAM_REPLACED",
    "main",
]

log = logging.getLogger("session_node.worker")

LEASE_CHECK_INTERVAL = 0.1  # seconds between lease checks while idle
STOP_GRACE = 3.0  # how long a clean stop may wait for neonize's connect thread to return
DEFAULT_RATE = 3.0
DEFAULT_STATS_INTERVAL = 2.0
STORE_BUSY_TIMEOUT_S = 5.0  # how long a simulated write waits for a store lock (whatsmeow's busy timeout)


# --- plumbing shared by both drivers ----------------------------------------------------------
class StopSignal:
    """The first reason to stop wins; everything that can end the worker goes through here."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self.reason: str | None = None
        self.code = wp.EXIT_OK

    def request(self, reason: str, code: int = wp.EXIT_OK) -> None:
        with self._lock:
            if self.reason is None:
                self.reason, self.code = reason, code
        self._event.set()

    def request_from_signal_handler(self, reason: str) -> None:
        # Event.set() takes a lock the interrupted main thread may hold; hand it to a thread.
        threading.Thread(target=self.request, args=(reason,), daemon=True).start()

    def is_set(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float) -> bool:
        return self._event.wait(timeout)


class EventWriter:
    """Thread-safe JSON-lines writer on the protocol fd; a dead reader means stop."""

    def __init__(self, fd: int, stop: StopSignal) -> None:
        self._file = os.fdopen(fd, "w", encoding="utf-8", buffering=1)
        self._lock = threading.Lock()
        self._stop = stop
        self.broken = False

    def emit(self, event: str, **fields: Any) -> None:
        line = wp.encode_event(event, t=time.time(), **fields)
        with self._lock:
            if self.broken:
                return
            try:
                self._file.write(line + "\n")
                self._file.flush()
            except (OSError, ValueError):
                # Supervisor gone (EPIPE): nobody can act on our events, so stop like on stdin EOF.
                self.broken = True
                self._stop.request("stdout_closed")


def protect_stdout() -> int:
    """Return a private fd for the protocol and point fd 1 at stderr (see module docstring)."""
    sys.stdout.flush()
    proto_fd = os.dup(1)
    os.dup2(2, 1)
    return proto_fd


class LeaseGuard:
    """The worker's own copy of the lease deadline. Cheap: one stat() per check, the file is only
    re-read when it changed (inode / mtime / size). Fails closed: a missing file means the lease
    was revoked; an unreadable one (or a record caught mid-write) keeps the last good deadline (or
    none = expired), and is read again at the next check."""

    def __init__(self, path: Path | None, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self._clock = clock
        self._stamp: tuple[int, int, int] | None = None
        self.deadline: float | None = None

    def expired(self) -> bool:
        if self.path is None:
            return False
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return True
        except OSError:
            return self._passed()
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            self._reload(stamp)
        if self._passed():
            # A write in place sets the mtime before its bytes land: the value read with this
            # stamp may be the one before. Expiry is decided on a fresh read.
            self._reload(stamp)
        return self._passed()

    def _passed(self) -> bool:
        return self.deadline is None or self._clock() >= self.deadline

    def _reload(self, stamp: tuple[int, int, int]) -> None:
        try:
            self.deadline = wp.read_lease_deadline(self.path)  # type: ignore[arg-type]
            self._stamp = stamp
        except (OSError, ValueError) as e:
            log.warning("unreadable lease deadline file %s: %s", self.path, e)


def watch_stdin(stop: StopSignal) -> None:
    """Stop when stdin reaches EOF: the supervisor holds the write end; if it dies, we stop."""

    def run() -> None:
        try:
            while os.read(0, 4096):
                pass  # input is ignored; only EOF matters
        except OSError:
            pass
        stop.request("stdin_closed")

    threading.Thread(target=run, name="stdin-watch", daemon=True).start()


class ActivityLog:
    """Appends the worker's start/stop records (see the module docstring); None = off."""

    def __init__(self, path: Path | None, session: str) -> None:
        self.path = path
        self.session = session

    def record(self, event: str, reason: str | None = None) -> None:
        if self.path is None:
            return
        record = {"session": self.session, "pid": os.getpid(), "event": event, "t": time.time(), "reason": reason}
        line = json.dumps(record)
        try:
            with open(self.path, "a", encoding="utf-8") as f:  # one short append per line: O_APPEND keeps it whole
                f.write(line + "\n")
        except OSError as e:
            log.warning("cannot write the activity log %s: %s", self.path, e)


def install_signal_handlers(stop: StopSignal) -> None:
    for signum, reason in ((signal.SIGTERM, "sigterm"), (signal.SIGINT, "sigint")):
        signal.signal(signum, lambda *_a, r=reason: stop.request_from_signal_handler(r))


@dataclass
class Context:
    args: argparse.Namespace
    out: EventWriter
    stop: StopSignal
    lease: LeaseGuard


# --- command line -----------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(wp.EXIT_BAD_ARGS, f"{self.prog}: error: {message}\n")


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:  # also rejects NaN
        raise argparse.ArgumentTypeError("must be >= 0")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m session_node.worker", description="Per-session WhatsApp worker.")
    p.add_argument("--driver", choices=("neonize", "simulated"), default="neonize")
    p.add_argument("--store", type=Path, required=True, help="path of the session's SQLite store")
    p.add_argument("--session", required=True, help="session id (used in logs and the neonize uuid)")
    p.add_argument("--lease-deadline-file", type=Path, help="file holding the lease deadline (unix time)")
    p.add_argument("--activity-log", type=Path, help="append JSON lines when the client starts and stops")
    p.add_argument("--wal", action="store_true", help="put the store in WAL mode (persists in the file)")
    p.add_argument("--no-stdin-watch", action="store_true", help="do not stop on stdin EOF (manual runs)")
    p.add_argument("--log-level", type=str.upper, choices=("DEBUG", "INFO", "WARNING", "ERROR"), default="INFO")
    sim = p.add_argument_group("simulated driver")
    sim.add_argument("--rate", type=_non_negative_float, default=DEFAULT_RATE, help="changes/s, 0 = flat out")
    sim.add_argument("--count", type=_non_negative_int, default=0, help="stop after N changes, 0 = never")
    sim.add_argument("--seed", type=int, default=None)
    sim.add_argument("--initial-rows", type=_non_negative_int, default=0, help="pre-populate N sessions+contacts")
    sim.add_argument("--logout-after", type=_non_negative_int, default=None, help="log out after N changes")
    sim.add_argument(
        "--stream-replaced-after",
        type=_non_negative_int,
        default=None,
        help="after N changes, act as if another client took over these keys (StreamReplaced): "
        "emit 'stream_replaced' and exit with EXIT_STREAM_REPLACED, as the neonize driver does",
    )
    sim.add_argument("--trace-changes", action="store_true", help="emit a 'change' event per committed change")
    sim.add_argument(
        "--trace-file",
        type=Path,
        help="with --trace-changes: append the 'change' events to this file (JSON lines) instead of stdout, "
        "so a benchmark's tracing costs the supervisor nothing",
    )
    sim.add_argument("--stats-interval", type=_non_negative_float, default=DEFAULT_STATS_INTERVAL)
    diag = p.add_argument_group("tests and diagnostics (neonize driver)")
    diag.add_argument("--probe-me", action="store_true", help="after connect() fails, emit 'me' (get_me())")
    diag.add_argument("--debug-go-panic", action="store_true", help=argparse.SUPPRESS)
    return p


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    if not args.session.strip():
        build_parser().error("--session must not be empty")
    if args.driver == "neonize" and {"?", "#", "%"} & set(str(args.store)):
        # neonize builds "file:%s?_foreign_keys=on"; these would open another file or drop the flag.
        build_parser().error("--store must not contain '?', '#' or '%' (neonize passes it inside a URI)")
    return args


# --- entry point ------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=args.log_level,
        format=f"%(asctime)s %(levelname)s [worker {args.session} %(process)d] %(name)s: %(message)s",
    )
    stop = StopSignal()
    out = EventWriter(protect_stdout(), stop)
    install_signal_handlers(stop)
    if not args.no_stdin_watch:
        watch_stdin(stop)
    ctx = Context(args, out, stop, LeaseGuard(args.lease_deadline_file))
    out.emit(wp.EV_STARTED, pid=os.getpid(), driver=args.driver, session=args.session, store=str(args.store))
    if ctx.lease.expired():
        # Checked before the driver touches anything: a worker started late must not write at all.
        out.emit(wp.EV_STOPPING, reason="lease_expired")
        return wp.EXIT_LEASE_EXPIRED
    driver = run_simulated if args.driver == "simulated" else run_neonize
    activity = ActivityLog(args.activity_log, args.session)
    activity.record("start")
    try:
        return driver(ctx)
    finally:
        activity.record("stop", ctx.stop.reason or "error")


# --- simulated driver -------------------------------------------------------------------------
class LeaseExpired(Exception):
    pass


@dataclass
class SimRun:
    """The simulated driver's loop: paced changes, each preceded by a lease check."""

    ctx: Context
    traffic: simulate.Traffic
    pending: list[str] = field(default_factory=list)  # forced next steps (pairing, pre-key refill)
    changes: int = 0
    by_table: Counter[str] = field(default_factory=Counter)
    initial_rows: int = 0
    _trace_file: Any = None  # --trace-file, opened on the first change
    _next_at: float = 0.0
    _next_stats: float = 0.0

    def run(self) -> int:
        a = self.ctx.args
        self._next_at = self._next_stats = time.monotonic()
        try:
            while not self.ctx.stop.is_set():
                if a.count and self.changes >= a.count:
                    self.ctx.stop.request("count_reached")
                    break
                if a.logout_after is not None and self.changes >= a.logout_after and not self.pending:
                    self._logout()
                    break
                if a.stream_replaced_after is not None and self.changes >= a.stream_replaced_after:
                    self._stream_replaced()
                    break
                if not self._pace():
                    break
                self._change()
        except LeaseExpired:
            self.ctx.stop.request("lease_expired", wp.EXIT_LEASE_EXPIRED)
        self.ctx.out.emit(wp.EV_STOPPING, reason=self.ctx.stop.reason)
        self._emit_stats(final=True)
        return self.ctx.stop.code

    def write(self, fn: Callable[[], str]) -> str:
        """Every store write goes through here: no write once the lease deadline has passed, not even
        one that was waiting for a store lock when it passed (a paused supervisor holding a read lock
        would otherwise let the write commit when it resumes, after another node took over)."""
        first_try = time.monotonic()
        while True:
            if self.ctx.lease.expired():
                raise LeaseExpired
            self._bound_lock_waits()
            try:
                table = fn()  # one transaction, rolled back on error
                break
            except sqlite3.OperationalError as e:
                if e.sqlite_errorcode != sqlite3.SQLITE_BUSY or time.monotonic() - first_try > STORE_BUSY_TIMEOUT_S:
                    raise
        self.changes += 1
        self.by_table[table] += 1
        if self.ctx.args.trace_changes:
            self.trace_change(table)
        return table

    def trace_change(self, table: str) -> None:
        committed = time.time()
        fields = {"n": self.changes, "table": table, "seq": changelog_seq(self.traffic.conn), "committed_t": committed}
        if self.ctx.args.trace_file is None:
            self.ctx.out.emit(wp.EV_CHANGE, **fields)
            return
        if self._trace_file is None:
            self._trace_file = open(self.ctx.args.trace_file, "a", encoding="utf-8", buffering=1)  # noqa: SIM115
        self._trace_file.write(wp.encode_event(wp.EV_CHANGE, t=committed, **fields) + "\n")

    def _bound_lock_waits(self) -> None:
        """A transaction may wait for a lock up to three times (BEGIN IMMEDIATE, a cache spill, COMMIT);
        each wait gets at most a third of the lease time left, so together they end before the deadline."""
        deadline = self.ctx.lease.deadline
        if self.ctx.lease.path is None or deadline is None:
            return
        ms = int(max(0.0, deadline - time.time()) * 1000 / 3)
        self.traffic.conn.execute(f"PRAGMA busy_timeout = {min(ms, int(STORE_BUSY_TIMEOUT_S * 1000))}")

    def _change(self) -> None:
        t = self.traffic
        step = self.pending.pop(0) if self.pending else None
        if step == "generate_prekeys":
            self.write(t.generate_prekeys)
        elif step == "mark_prekeys_uploaded":
            self.write(t.mark_prekeys_uploaded)
        else:
            table = self.write(t.step)
            if table == "whatsmeow_pre_keys" and t.needs_prekey_refill():
                # whatsmeow: server reports < 5 keys -> generate a batch of 50, upload, mark uploaded.
                self.pending += ["generate_prekeys", "mark_prekeys_uploaded"]
        self._maybe_stats()

    def _pace(self) -> bool:
        """Wait for the next slot of --rate, checking stop and lease meanwhile. False = stop."""
        rate = self.ctx.args.rate
        if rate > 0:
            while (delay := self._next_at - time.monotonic()) > 0:
                if self.ctx.stop.wait(min(delay, LEASE_CHECK_INTERVAL)):
                    return False
                if self.ctx.lease.expired():
                    raise LeaseExpired
                self._maybe_stats()
            # No catch-up bursts after a stall (e.g. a long busy wait on the store lock).
            self._next_at = max(self._next_at + 1 / rate, time.monotonic() - 1 / rate)
        return not self.ctx.stop.is_set()

    def _logout(self) -> None:
        self.write(self.traffic.logout)
        self.ctx.out.emit(wp.EV_LOGGED_OUT, reason="simulated", on_connect=False)
        self.ctx.stop.request("logged_out", wp.EXIT_LOGGED_OUT)

    def _stream_replaced(self) -> None:
        # What NeonizeSession._on_stream_replaced does; the store is left as it is.
        self.ctx.out.emit(wp.EV_STREAM_REPLACED, simulated=True)
        self.ctx.stop.request("stream_replaced", wp.EXIT_STREAM_REPLACED)

    def _maybe_stats(self) -> None:
        interval = self.ctx.args.stats_interval
        if interval > 0 and time.monotonic() >= self._next_stats:
            self._next_stats = time.monotonic() + interval
            self._emit_stats(final=False)

    def _emit_stats(self, *, final: bool) -> None:
        self.ctx.out.emit(
            wp.EV_STATS,
            changes=self.changes,
            by_table=dict(self.by_table),
            initial_rows=self.initial_rows,
            final=final,
        )


def changelog_seq(conn: sqlite3.Connection) -> int | None:
    """--trace-changes: the store's changelog high-water mark right after our commit (None without
    capture). This worker is the only writer of changelog rows, so it is the seq of our last change:
    a benchmark matches it with the node's record_acked upto_seq to time the change to its ack."""
    try:
        row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'sessionvault_changelog'").fetchone()
    except sqlite3.OperationalError:  # no AUTOINCREMENT table yet
        return None
    return None if row is None else int(row[0])


def _open_sim_store(ctx: Context) -> sqlite3.Connection | None:
    """Open (creating through neonize in a subprocess if missing) the store; None = reported."""
    path: Path = ctx.args.store
    try:
        if not path.exists():
            from .store import create_store  # runs neonize in a child process, never here

            create_store(path)
        return simulate.open_store(path, wal=ctx.args.wal)
    except Exception as e:  # StoreError, sqlite3 errors, OSError, a failed neonize run
        ctx.out.emit(wp.EV_ERROR, message=f"cannot open store: {e}")
        log.error("cannot open store %s: %s", path, e)
        return None


def run_simulated(ctx: Context) -> int:
    conn = _open_sim_store(ctx)
    if conn is None:
        return wp.EXIT_STORE_ERROR
    with closing(conn):
        try:
            return _simulate(ctx, conn)
        except sqlite3.Error as e:
            # Mid-run store trouble (e.g. busy past the timeout): a crash the supervisor retries.
            ctx.out.emit(wp.EV_ERROR, message=f"store error: {e}")
            log.exception("store error")
            return 1


def _simulate(ctx: Context, conn: sqlite3.Connection) -> int:
    rng = random.Random(ctx.args.seed)
    jid = simulate.device_jid(conn)
    fresh = jid is None
    if fresh:
        # Not paired: show a (fake) QR, then "pair" exactly as whatsmeow does on PairSuccess.
        ctx.out.emit(wp.EV_QR, code=f"2@sim{rng.randbytes(12).hex()},simulated")
        if ctx.lease.expired():
            ctx.out.emit(wp.EV_STOPPING, reason="lease_expired")
            return wp.EXIT_LEASE_EXPIRED
        jid = simulate.write_fake_device(conn, rng).jid
    run = SimRun(ctx, simulate.Traffic(conn, jid, rng))
    if fresh:
        run.changes, run.by_table["whatsmeow_device"] = 1, 1
        if ctx.args.trace_changes:
            run.trace_change("whatsmeow_device")
        ctx.out.emit(wp.EV_PAIRED, jid=jid)
        run.pending += ["generate_prekeys", "mark_prekeys_uploaded"]
    elif run.traffic.needs_prekey_refill():
        run.pending += ["generate_prekeys", "mark_prekeys_uploaded"]
    if ctx.args.initial_rows:
        if ctx.lease.expired():
            ctx.out.emit(wp.EV_STOPPING, reason="lease_expired")
            return wp.EXIT_LEASE_EXPIRED
        run.initial_rows = run.traffic.populate(ctx.args.initial_rows)
    ctx.out.emit(wp.EV_CONNECTED)
    return run.run()


# --- neonize driver ---------------------------------------------------------------------------
def neonize_dsn(store: Path, *, wal: bool) -> str:
    """What NewClient gets as ``name``. neonize wraps it as ``file:%s?_foreign_keys=on``; for WAL
    extra mattn parameters are appended and the tail swallowed by a dummy (neonize 0.5.2 only)."""
    path = str(store.absolute())
    if wal:
        return f"{path}?_journal_mode=WAL&_busy_timeout=5000&_foreign_keys=on&_x="
    return path


def render_qr(code: str) -> None:
    """Show the QR for a human on stderr (stdout is the protocol)."""
    try:
        import segno  # neonize's own dependency; imported lazily to keep the simulated driver light

        segno.make_qr(code).terminal(out=sys.stderr, compact=True)
    except Exception:  # a cosmetic failure must not stop pairing
        log.exception("cannot render QR code")


def _reason_name(value: int) -> str:
    """LOGGED_OUT, MAIN_DEVICE_GONE, ... for whatsmeow's ConnectFailureReason (numeric if unknown)."""
    from neonize.proto.Neonize_pb2 import ConnectFailureReason

    try:
        return ConnectFailureReason.Name(value)
    except ValueError:
        return str(value)


class NeonizeSession:
    """One neonize client bound to the store; handlers translate events to protocol lines."""

    def __init__(self, ctx: Context) -> None:
        # Lazy import: only this driver may load neonize (and Go's SQLite) into the process.
        from neonize.client import NewClient

        self.ctx = ctx
        # A fresh uuid per start: the uuid keys Go's global client registry, and reusing one lets
        # an old instance's finalizer unregister the new client (-> panic on the next call).
        self.uuid = f"{ctx.args.session}-{os.getpid()}-{secrets.token_hex(4)}"
        self.client = NewClient(neonize_dsn(ctx.args.store, wal=ctx.args.wal), uuid=self.uuid)
        self.connect_error: str | None = None
        self._connect_thread: threading.Thread | None = None
        self._register_handlers()

    def _register_handlers(self) -> None:
        # Must happen before connect(): neonize sends the subscribed event codes to Go in connect().
        from neonize import events as ev

        c, out = self.client, self.ctx.out
        c.event.qr(self._on_qr)
        c.event(ev.PairStatusEv)(self._on_pair_status)
        c.event(ev.ConnectedEv)(lambda _c, _e: out.emit(wp.EV_CONNECTED))
        c.event(ev.DisconnectedEv)(lambda _c, _e: out.emit(wp.EV_DISCONNECTED))
        c.event(ev.LoggedOutEv)(self._on_logged_out)
        c.event(ev.StreamReplacedEv)(self._on_stream_replaced)
        c.event(ev.ConnectFailureEv)(self._on_connect_failure)
        c.event(ev.TemporaryBanEv)(
            lambda _c, e: self._fail(f"temporarily banned (code {e.Code}, expires in {e.Expire}s)", "temporary_ban")
        )
        c.event(ev.ClientOutdatedEv)(lambda _c, _e: self._fail("client outdated", "client_outdated"))

    def _on_qr(self, _client: Any, data: bytes) -> None:
        code = data.decode(errors="replace")
        self.ctx.out.emit(wp.EV_QR, code=code)
        render_qr(code)

    def _on_pair_status(self, _client: Any, e: Any) -> None:
        from neonize.events import PairStatusEv
        from neonize.utils.jid import Jid2String

        if e.Status == PairStatusEv.SUCCESS:
            self.ctx.out.emit(wp.EV_PAIRED, jid=Jid2String(e.ID), platform=e.Platform, business_name=e.BusinessName)
        else:
            self.ctx.out.emit(wp.EV_PAIR_FAILED, error=e.Error)

    def _on_logged_out(self, _client: Any, e: Any) -> None:
        self.ctx.out.emit(wp.EV_LOGGED_OUT, reason=_reason_name(e.Reason), on_connect=e.OnConnect)
        self.ctx.stop.request("logged_out", wp.EXIT_LOGGED_OUT)

    def _on_stream_replaced(self, _client: Any, _e: Any) -> None:
        # Another process runs these keys. Never reconnect: two live copies fork the ratchets.
        self.ctx.out.emit(wp.EV_STREAM_REPLACED)
        self.ctx.stop.request("stream_replaced", wp.EXIT_STREAM_REPLACED)

    def _on_connect_failure(self, _client: Any, e: Any) -> None:
        self.ctx.out.emit(wp.EV_CONNECT_FAILURE, reason=_reason_name(e.Reason), message=e.Message)

    def _fail(self, message: str, reason: str) -> None:
        self.ctx.out.emit(wp.EV_CONNECT_FAILED, message=message, reason=reason)
        self.ctx.stop.request(reason, wp.EXIT_CONNECT_FAILED)

    # -- connect / stop --
    def start(self) -> None:
        self.ctx.out.emit(wp.EV_CONNECTING, uuid=self.uuid)
        self._connect_thread = threading.Thread(target=self._connect, name="neonize-connect", daemon=True)
        self._connect_thread.start()

    def _connect(self) -> None:
        from neonize.exc import NeonizeError

        try:
            self.client.connect()  # blocks for the session's lifetime when online
            message = "connection ended"
        except NeonizeError as e:
            message = str(e)
        except Exception as e:  # reported, then the worker exits to be retried
            message = f"{type(e).__name__}: {e}"
        if self.ctx.stop.is_set():
            return  # we asked for it (stop/stream replaced/logged out)
        self.connect_error = message
        self._fail(message, "connect_failed")

    def connected_thread_alive(self) -> bool:
        return self._connect_thread is not None and self._connect_thread.is_alive()

    def shutdown(self, grace: float) -> None:
        """client.stop() and wait up to ``grace`` for connect() to return. stop() runs in its own
        thread and the wait is bounded: a dial in progress ignores stop() for up to ~60 s, and
        the caller exits with os._exit regardless, so nothing here can keep the process alive."""
        if not self.connected_thread_alive():
            return
        threading.Thread(target=self._stop_client, name="neonize-stop", daemon=True).start()
        assert self._connect_thread is not None
        self._connect_thread.join(grace)
        if self._connect_thread.is_alive():
            log.warning("neonize did not stop within %.1fs; exiting anyway", grace)

    def _stop_client(self) -> None:
        try:
            self.client.stop()
        except Exception:
            log.exception("client.stop() failed")

    def probe_me(self) -> None:
        """Emit the device neonize loaded. Only valid after connect() ran: calling into Go for a
        client that was never registered is a panic (which kills the process)."""
        from neonize.utils.jid import Jid2String

        me = self.client.get_me()
        jid = Jid2String(me.JID) if me.JID.User else ""
        lid = Jid2String(me.LID) if me.LID.User else ""
        self.ctx.out.emit(wp.EV_ME, jid=jid, lid=lid, push_name=me.PushName, initialized=me.Initialized)


def run_neonize(ctx: Context) -> int:
    try:
        session = NeonizeSession(ctx)
    except (ImportError, OSError) as e:
        ctx.out.emit(wp.EV_ERROR, message=f"cannot load neonize: {e}")
        log.exception("cannot load neonize")
        return 1
    if ctx.args.debug_go_panic:
        session.client.get_me()  # before connect(): a Go nil dereference, aborts the process
    session.start()
    while not ctx.stop.wait(LEASE_CHECK_INTERVAL):
        if ctx.lease.expired():
            ctx.stop.request("lease_expired", wp.EXIT_LEASE_EXPIRED)
    if ctx.stop.code == wp.EXIT_LEASE_EXPIRED:
        # Fence first: exit now rather than wait for a graceful stop that may hang in a dial.
        # SQLite is crash-safe; to whatsmeow this is the same as a crash.
        ctx.out.emit(wp.EV_STOPPING, reason=ctx.stop.reason)
        return wp.EXIT_LEASE_EXPIRED
    if ctx.args.probe_me and session.connect_error is not None:
        session.probe_me()
    ctx.out.emit(wp.EV_STOPPING, reason=ctx.stop.reason)
    session.shutdown(STOP_GRACE)
    return ctx.stop.code


def _exit(code: int) -> NoReturn:
    """Flush and leave without running interpreter shutdown: neonize's connect() runs Go in a
    non-daemon thread that may be stuck in a dial, and its finalizers call into Go."""
    for stream in (sys.stdout, sys.stderr):
        with suppress(OSError, ValueError):
            stream.flush()
    logging.shutdown()
    os._exit(code)


if __name__ == "__main__":
    _exit(main())
