"""Unit tests of the pieces the supervisor relies on: exit codes, event lines, the lease file."""

from __future__ import annotations

import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from session_node import worker_protocol as wp
from session_node.worker import LeaseGuard, parse_args


def test_exit_codes_are_distinct_and_classified() -> None:
    codes = [wp.EXIT_OK, wp.EXIT_CONNECT_FAILED, wp.EXIT_STREAM_REPLACED, wp.EXIT_LOGGED_OUT]
    codes += [wp.EXIT_LEASE_EXPIRED, wp.EXIT_STORE_ERROR, wp.EXIT_BAD_ARGS]
    assert len(set(codes)) == len(codes)
    # Never 1 (Python traceback) or 2 (argparse / Go runtime exit): those must mean "crashed".
    assert not {1, 2} & set(codes)
    assert wp.should_restart(wp.EXIT_CONNECT_FAILED)
    for final in (wp.EXIT_OK, wp.EXIT_STREAM_REPLACED, wp.EXIT_LOGGED_OUT, wp.EXIT_LEASE_EXPIRED, wp.EXIT_BAD_ARGS):
        assert not wp.should_restart(final), wp.describe_exit(final)
    assert wp.should_restart(1) and wp.should_restart(-6)
    assert wp.describe_exit(wp.EXIT_STREAM_REPLACED) == "stream_replaced"
    assert wp.describe_exit(-9) == "killed_by_signal_9"
    assert wp.describe_exit(1) == "crashed_1"


def test_event_lines_round_trip_and_garbage_is_ignored() -> None:
    line = wp.encode_event(wp.EV_QR, code="2@abc,def", t=1.5)
    assert "\n" not in line
    assert wp.parse_event(line) == {"event": "qr", "code": "2@abc,def", "t": 1.5}
    assert wp.parse_event(line.encode()) is not None
    for junk in (b"", b"hello", b"[1,2]", b'{"no_event": 1}', b'{"event": 3}', b"\xff\xfe"):
        assert wp.parse_event(junk) is None


def test_lease_deadline_file_is_created_whole_then_updated_in_place(tmp_path: Path) -> None:
    path = tmp_path / "lease"
    wp.write_lease_deadline(path, 1234.5)
    inode, size = path.stat().st_ino, path.stat().st_size
    wp.write_lease_deadline(path, 2345.25)
    assert wp.read_lease_deadline(path) == 2345.25
    assert (path.stat().st_ino, path.stat().st_size) == (inode, size)  # fixed-width record, same file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lease"]  # no temp files left behind
    path.unlink()  # revoked: the next write creates it again
    wp.write_lease_deadline(path, 3456.0)
    assert wp.read_lease_deadline(path) == 3456.0


def test_a_record_caught_mid_write_is_unusable(tmp_path: Path) -> None:
    path = tmp_path / "lease"
    wp.write_lease_deadline(path, 1234.5)
    half = path.read_bytes()
    new = wp._DEADLINE_RECORD % (9999.0, 9999.0)
    path.write_bytes(new[:21].encode() + half[21:])  # the first value written, the second not yet
    with pytest.raises(ValueError):
        wp.read_lease_deadline(path)


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_lease_guard_follows_renewals_and_fails_closed(tmp_path: Path) -> None:
    path = tmp_path / "lease"
    clock = FakeClock(1000.0)
    guard = LeaseGuard(path, clock)
    assert guard.expired()  # no file yet: never granted
    wp.write_lease_deadline(path, 1010.0)
    assert not guard.expired()
    clock.now = 1010.0
    assert guard.expired()  # the deadline itself is already too late
    wp.write_lease_deadline(path, 1020.0)  # renewal
    assert not guard.expired()
    path.write_text("garbage")  # e.g. a record caught mid-write: must not extend the lease
    assert not guard.expired() and guard.deadline == 1020.0
    clock.now = 1020.5
    assert guard.expired()
    wp.write_lease_deadline(path, 1030.0)
    assert not guard.expired()
    path.unlink()  # revoked
    assert guard.expired()


def test_lease_guard_without_a_file_never_expires() -> None:
    assert not LeaseGuard(None).expired()


def test_lease_guard_check_is_cheap(tmp_path: Path) -> None:
    path = tmp_path / "lease"
    wp.write_lease_deadline(path, time.time() + 60)
    guard = LeaseGuard(path)
    started = time.perf_counter()
    for _ in range(2000):
        assert not guard.expired()
    per_check = (time.perf_counter() - started) / 2000
    assert per_check < 200e-6  # one stat(); measured ~2-5 us


@pytest.mark.parametrize(
    "argv",
    [
        ["--store", "s.db", "--session", "a"],
        ["--driver", "simulated", "--store", "s.db", "--session", "a", "--rate", "0", "--count", "5"],
    ],
)
def test_parse_args_accepts_the_documented_forms(argv: list[str]) -> None:
    args = parse_args(argv)
    assert args.session == "a" and str(args.store) == "s.db"


def test_importing_the_worker_does_not_load_neonize() -> None:
    # The simulated driver opens the store with sqlite3 in the worker process, and the supervisor
    # imports worker_protocol: neither may pull neonize (Go's SQLite) in. Checked in a clean process.
    code = "import sys, session_node.worker, session_node.simulate; print('neonize' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "False"


def test_random_phone_numbers_stay_in_the_fictional_range() -> None:
    from session_node.simulate import random_phone

    rng = random.Random(0)
    assert all(random_phone(rng).startswith("1555000") and len(random_phone(rng)) == 11 for _ in range(100))


def test_worker_argv_starts_the_documented_cli(tmp_path: Path) -> None:
    argv = wp.worker_argv(
        store=tmp_path / "s.db",
        session="abc",
        driver="simulated",
        lease_deadline_file=tmp_path / "lease",
        extra=["--count", "3"],
    )
    assert argv[1:3] == ["-m", "session_node.worker"]
    args = parse_args(argv[3:])
    assert (args.driver, args.session, args.count) == ("simulated", "abc", 3)
    assert args.lease_deadline_file == tmp_path / "lease"
