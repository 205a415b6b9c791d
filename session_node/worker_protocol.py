"""The contract between the supervisor and a per-session worker process.

Kept free of neonize (and of anything heavy) on purpose: the supervisor imports this module to
interpret worker exit codes and events and to publish lease deadlines, and it must never load
neonize (a Go panic would kill it, and it opens the stores with Python's sqlite3).

Events: the worker writes one JSON object per line to stdout, flushed after each line. Every
object has an ``"event"`` key (one of the ``EV_*`` names below) and a ``"t"`` key (unix time).
Logs go to stderr and are not part of the contract.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# --- exit codes -------------------------------------------------------------------------------
# 0 and the codes below are the only ones the worker chooses. Anything else means it crashed:
# 1 = unexpected Python exception, a negative return code = killed by that signal (a Go panic
# aborts the process: SIGABRT, returncode -6; the OOM killer or the supervisor: SIGKILL, -9).
EXIT_OK = 0
"""Clean stop: SIGTERM/SIGINT, stdin closed (supervisor gone), or --count reached."""
EXIT_CONNECT_FAILED = 20
"""Could not connect (offline, DNS, dial error, temporary ban, outdated client). Retry with backoff."""
EXIT_STREAM_REPLACED = 21
"""Another process is online with the same keys (StreamReplaced). A conflict: do NOT restart."""
EXIT_LOGGED_OUT = 22
"""The device was logged out / removed; whatsmeow deleted the device row. Do not restart."""
EXIT_LEASE_EXPIRED = 23
"""The lease deadline passed (or the deadline file vanished): the worker fenced itself off."""
EXIT_STORE_ERROR = 24
"""The store is missing, unreadable or has an unsupported schema. Restarting will not help."""
EXIT_BAD_ARGS = 64
"""Bad command line (sysexits EX_USAGE; not argparse's 2, which Go also uses for its exits)."""

EXIT_NAMES: dict[int, str] = {
    EXIT_OK: "ok",
    EXIT_CONNECT_FAILED: "connect_failed",
    EXIT_STREAM_REPLACED: "stream_replaced",
    EXIT_LOGGED_OUT: "logged_out",
    EXIT_LEASE_EXPIRED: "lease_expired",
    EXIT_STORE_ERROR: "store_error",
    EXIT_BAD_ARGS: "bad_args",
}

# Exit codes after which the supervisor may start the worker again (with backoff), provided it
# still holds the lease. Crashes (1, negative codes) are restartable too, see should_restart().
RESTARTABLE_EXITS = frozenset({EXIT_CONNECT_FAILED})


def describe_exit(returncode: int) -> str:
    """Human/metrics label for a worker's return code (as given by subprocess)."""
    if returncode in EXIT_NAMES:
        return EXIT_NAMES[returncode]
    if returncode < 0:
        return f"killed_by_signal_{-returncode}"
    return f"crashed_{returncode}"


def should_restart(returncode: int) -> bool:
    """True if restarting the worker (with backoff) is the right reaction to this exit.

    Crashes are retried because a Go panic is usually tied to one call path, not to the
    store; stream_replaced, logged_out, lease_expired, store_error and bad_args are final.
    """
    if returncode in RESTARTABLE_EXITS:
        return True
    return returncode not in EXIT_NAMES


# --- events -----------------------------------------------------------------------------------
EV_STARTED = "started"  # pid, driver, session, store
EV_QR = "qr"  # code: the string to render as a QR code
EV_PAIRED = "paired"  # jid (device row already saved by whatsmeow when this is sent)
EV_PAIR_FAILED = "pair_failed"  # error
EV_CONNECTING = "connecting"  # neonize driver: connect() is about to be called (dial in progress)
EV_CONNECTED = "connected"
EV_DISCONNECTED = "disconnected"  # whatsmeow reconnects by itself; informational
EV_LOGGED_OUT = "logged_out"  # reason, on_connect
EV_STREAM_REPLACED = "stream_replaced"
EV_CONNECT_FAILED = "connect_failed"  # message, (reason); the worker exits with EXIT_CONNECT_FAILED
EV_CONNECT_FAILURE = "connect_failure"  # reason, message: server refused, whatsmeow retries by itself
EV_STOPPING = "stopping"  # reason: sigterm | sigint | stdin_closed | lease_expired | count_reached | ...
EV_STATS = "stats"  # simulated driver: changes, by_table, final
EV_CHANGE = "change"  # simulated driver with --trace-changes only: n, table, seq, committed_t
EV_ME = "me"  # --probe-me: jid, lid, push_name
EV_ERROR = "error"  # message; followed by the exit


def encode_event(event: str, **fields: Any) -> str:
    """One protocol line (without the newline)."""
    return json.dumps({"event": event, **fields}, separators=(",", ":"), sort_keys=False)


def parse_event(line: str | bytes) -> dict[str, Any] | None:
    """Decode one stdout line of a worker; None for anything that is not a protocol event
    (defensive: a stray write must not crash the supervisor's reader)."""
    try:
        obj = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        return None
    if isinstance(obj, dict) and isinstance(obj.get("event"), str):
        return obj
    return None


# --- lease deadline file ----------------------------------------------------------------------
# The deadline is written twice in a fixed-width record: a reader that catches an in-place write
# half-done sees two different values and keeps its last good deadline.
_DEADLINE_RECORD = "%020.6f %020.6f\n"


def write_lease_deadline(path: str | os.PathLike[str], deadline_unix: float) -> None:
    """Publish the lease deadline (wall-clock unix seconds) for the worker.

    The first write creates the file atomically (temp file + rename); later ones overwrite its
    fixed-width record in place. A rename costs ~0.6 ms on ext4 here against ~1 us for a pwrite,
    and a node renews hundreds of leases a second, each on its event loop. A revoked (unlinked)
    file is created anew. Wall-clock, not monotonic: the worker is another process.
    """
    value = float(deadline_unix)
    record = (_DEADLINE_RECORD % (value, value)).encode()
    try:
        fd = os.open(path, os.O_WRONLY)  # no O_CREAT: a missing file must appear whole, below
    except FileNotFoundError:
        _create_atomically(Path(path), record)
        return
    try:
        os.pwrite(fd, record, 0)
    finally:
        os.close(fd)


def _create_atomically(target: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_lease_deadline(path: str | os.PathLike[str]) -> float:
    """The deadline stored in a lease file. Raises OSError / ValueError if unusable (including a
    record caught in the middle of a write)."""
    first, second = Path(path).read_text().split()
    if first != second:
        raise ValueError("lease deadline record caught mid-write")
    return float(first)


# --- starting a worker ------------------------------------------------------------------------
def worker_argv(
    *,
    store: str | os.PathLike[str],
    session: str,
    driver: str = "neonize",
    lease_deadline_file: str | os.PathLike[str] | None = None,
    extra: Sequence[str] = (),
    python: str = sys.executable,
) -> list[str]:
    """The command line for one worker. Start it with stdin=PIPE (keep the write end open: EOF
    stops the worker), stdout=PIPE (events) and stderr to the node's log."""
    argv = [python, "-m", "session_node.worker", "--driver", driver, "--store", os.fspath(store)]
    argv += ["--session", session]
    if lease_deadline_file is not None:
        argv += ["--lease-deadline-file", os.fspath(lease_deadline_file)]
    return argv + list(extra)
