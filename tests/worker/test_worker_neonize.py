"""The neonize driver, with the real neonize 0.5.2 in worker subprocesses (this machine is offline:
connect() fails fast with a DNS error; a blackhole proxy makes it hang instead)."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from worker.workerkit import REPO, count, query

from session_node import simulate
from session_node import worker_protocol as wp


def neo(store: Path, *extra: str) -> list[str]:
    return ["--driver", "neonize", "--store", str(store), "--session", "n1", *extra]


def test_new_store_is_created_by_neonize_and_offline_connect_fails_for_retry(start_worker, tmp_path: Path) -> None:
    path = tmp_path / "fresh.sqlite3"
    started = time.monotonic()
    w = start_worker(*neo(path))
    assert w.wait() == wp.EXIT_CONNECT_FAILED
    assert time.monotonic() - started < 15  # fails fast offline, no retry loop inside the worker
    failed = w.wait_for("connect_failed")
    assert "dial" in failed["message"] or "lookup" in failed["message"]
    assert w.names() == ["started", "connecting", "connect_failed", "stopping"]
    assert w.wait_for("started")["driver"] == "neonize"
    assert wp.should_restart(wp.EXIT_CONNECT_FAILED)
    # neonize created the schema during connect(); an unpaired device is never saved.
    assert query(path, "SELECT version, compat FROM whatsmeow_version") == [(15, 8)]
    assert count(path, "whatsmeow_device") == 0
    # Nothing but protocol lines reached stdout (neonize's prints and the QR go to stderr).
    assert all(wp.parse_event(line) is not None for line in w.raw_lines)


def test_fake_paired_device_loads_and_get_me_answers(start_worker, store: Path) -> None:
    device = simulate.write_fake_device_file(store, seed=42)
    keys_before = query(store, "SELECT * FROM whatsmeow_device")
    w = start_worker(*neo(store, "--probe-me"))
    assert w.wait() == wp.EXIT_CONNECT_FAILED
    me = w.wait_for("me")
    assert me["jid"] == device.jid
    assert me["lid"] == device.lid
    assert me["push_name"] == device.push_name
    assert me["initialized"] is True
    assert w.names() == ["started", "connecting", "connect_failed", "me", "stopping"]
    assert query(store, "SELECT * FROM whatsmeow_device") == keys_before  # loading rewrote nothing


def test_probe_on_an_unpaired_store_reports_no_device(start_worker, store: Path) -> None:
    w = start_worker(*neo(store, "--probe-me"))
    assert w.wait() == wp.EXIT_CONNECT_FAILED
    me = w.wait_for("me")
    assert me["jid"] == "" and me["initialized"] is False


def test_store_left_by_the_simulated_driver_loads_in_neonize(start_worker, store: Path) -> None:
    sim_args = ["--driver", "simulated", "--store", str(store), "--session", "n1", "--rate", "0", "--count", "200"]
    sim = start_worker(*sim_args)
    assert sim.wait() == wp.EXIT_OK
    jid = sim.wait_for("paired")["jid"]
    w = start_worker(*neo(store, "--probe-me"))
    assert w.wait() == wp.EXIT_CONNECT_FAILED
    assert w.wait_for("me")["jid"] == jid


def test_go_panic_kills_only_the_worker(start_worker, store: Path) -> None:
    # get_me() before connect() dereferences a nil client in Go: the runtime aborts the process.
    w = start_worker(*neo(store, "--debug-go-panic"))
    rc = w.wait()
    assert rc == -signal.SIGABRT
    assert w.names() == ["started"]
    assert "panic" in w.stderr_tail(200) or "SIGSEGV" in w.stderr_tail(200)
    assert wp.describe_exit(rc) == "killed_by_signal_6" and wp.should_restart(rc)


def test_lease_already_expired_means_neonize_never_touches_the_store(start_worker, tmp_path: Path) -> None:
    path = tmp_path / "untouched.sqlite3"
    lease = tmp_path / "lease"
    wp.write_lease_deadline(lease, time.time() - 5)
    w = start_worker(*neo(path, "--lease-deadline-file", str(lease)))
    assert w.wait() == wp.EXIT_LEASE_EXPIRED
    assert not path.exists()


@pytest.fixture
def hanging_env(blackhole_proxy: str) -> dict[str, str]:
    return {"HTTPS_PROXY": blackhole_proxy, "https_proxy": blackhole_proxy, "NO_PROXY": "", "no_proxy": ""}


def test_sigterm_during_a_hanging_dial_exits_cleanly(start_worker, store: Path, hanging_env: dict[str, str]) -> None:
    simulate.write_fake_device_file(store, seed=1)
    w = start_worker(*neo(store), env=hanging_env)
    w.wait_for("connecting")  # the dial now hangs in the proxy
    w.proc.send_signal(signal.SIGTERM)
    assert w.wait() == wp.EXIT_OK
    assert w.wait_for("stopping")["reason"] == "sigterm"
    assert "connect_failed" not in w.names()


def test_lease_expiry_during_a_hanging_dial_fences_at_once(
    start_worker, store: Path, tmp_path: Path, hanging_env: dict[str, str]
) -> None:
    simulate.write_fake_device_file(store, seed=2)
    lease = tmp_path / "lease"
    wp.write_lease_deadline(lease, time.time() + 3600)
    w = start_worker(*neo(store, "--lease-deadline-file", str(lease)), env=hanging_env)
    w.wait_for("connecting")
    deadline = time.time() + 1.0  # the supervisor may also shorten the deadline
    wp.write_lease_deadline(lease, deadline)
    assert w.wait() == wp.EXIT_LEASE_EXPIRED
    exited = time.time()
    assert "connect_failed" not in w.names()  # it really was stuck in the dial
    stopping = w.wait_for("stopping")
    assert stopping["reason"] == "lease_expired"
    assert deadline <= stopping["t"] < deadline + 1.0  # checked every 0.1 s; slack for a loaded machine
    # No graceful stop (a dial ignores stop() for ~60 s): the process is gone right away.
    assert exited < deadline + 2.0


def test_stdin_eof_during_a_hanging_dial(start_worker, store: Path, hanging_env: dict[str, str]) -> None:
    simulate.write_fake_device_file(store)
    w = start_worker(*neo(store), env=hanging_env)
    w.wait_for("connecting")
    w.close_stdin()
    assert w.wait() == wp.EXIT_OK
    assert w.wait_for("stopping")["reason"] == "stdin_closed"


def test_fake_device_rows_have_the_checked_lengths(store: Path) -> None:
    device = simulate.write_fake_device_file(store, seed=5)
    [row] = query(
        store,
        "SELECT jid, lid, length(noise_key), length(identity_key), length(signed_pre_key), signed_pre_key_id, "
        "length(signed_pre_key_sig), length(adv_account_sig), length(adv_account_sig_key), length(adv_device_sig), "
        "registration_id FROM whatsmeow_device",
    )
    assert row[:2] == (device.jid, device.lid)
    assert row[2:5] == (32, 32, 32) and 0 <= row[5] < 2**24
    assert row[6:10] == (64, 64, 32, 64) and 0 <= row[10] < 2**32
    # Deterministic with a seed, random without.
    assert simulate.fake_device(random.Random(5)) == simulate.fake_device(random.Random(5))


def test_neonize_event_handlers_translate_to_protocol_events(tmp_path: Path) -> None:
    events_file = tmp_path / "events.jsonl"
    script = Path(__file__).with_name("inject_events.py")
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "store.sqlite3"), str(events_file)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # StreamReplaced wins: a conflict, never restarted; the later LoggedOut is still reported.
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {
        "reason": "stream_replaced",
        "code": wp.EXIT_STREAM_REPLACED,
    }
    events = [wp.parse_event(line) for line in events_file.read_text().splitlines()]
    assert [e["event"] for e in events] == [
        "qr",
        "paired",
        "pair_failed",
        "connected",
        "connect_failure",
        "disconnected",
        "stream_replaced",
        "logged_out",
    ]
    assert events[0]["code"] == "2@qrdata,more"
    assert events[1]["jid"] == "15550001111:7@s.whatsapp.net"
    assert events[2]["error"] == "pairing rejected"
    assert events[4]["reason"] == "INTERNAL_SERVER_ERROR"
    assert events[7]["reason"] == "LOGGED_OUT" and events[7]["on_connect"] is True
    assert "\u2584" in proc.stderr or "\u2580" in proc.stderr or "█" in proc.stderr  # the QR, for a human
