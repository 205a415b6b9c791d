"""The simulated driver: whatsmeow-shaped writes into a neonize-created store, stop paths, lease fencing."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from worker.workerkit import count, query

from session_node import worker_protocol as wp

DEVICE_CHILD_TABLES = (
    "whatsmeow_identity_keys",
    "whatsmeow_pre_keys",
    "whatsmeow_sessions",
    "whatsmeow_sender_keys",
    "whatsmeow_app_state_sync_keys",
    "whatsmeow_app_state_version",
    "whatsmeow_app_state_mutation_macs",
    "whatsmeow_contacts",
    "whatsmeow_chat_settings",
    "whatsmeow_message_secrets",
    "whatsmeow_nct_salt",
    "whatsmeow_event_buffer",
    "whatsmeow_retry_buffer",
)
TRAFFIC_TABLES = (*DEVICE_CHILD_TABLES, "whatsmeow_privacy_tokens", "whatsmeow_lid_map")


def sim(store: Path, *extra: str) -> list[str]:
    return ["--driver", "simulated", "--store", str(store), "--session", "s1", "--seed", "7", *extra]


def test_writes_every_kind_of_whatsmeow_row_and_stops_after_count(start_worker, store: Path) -> None:
    w = start_worker(*sim(store, "--rate", "0", "--count", "150", "--trace-changes"))
    assert w.wait() == wp.EXIT_OK
    names = w.names()
    assert names[:2] == ["started", "qr"]
    assert names.index("paired") < names.index("connected") < names.index("stopping")
    assert w.wait_for("stopping")["reason"] == "count_reached"
    final = w.of("stats")[-1]
    assert final["final"] is True and final["changes"] == 150
    changes = w.of("change")
    assert [c["n"] for c in changes] == list(range(1, 151))
    assert sum(final["by_table"].values()) == 150

    # The paired device is a whatsmeow device row with keys of the lengths whatsmeow checks.
    jid = w.wait_for("paired")["jid"]
    [(row_jid, reg_id, *keys)] = query(
        store,
        "SELECT jid, registration_id, length(noise_key), length(identity_key), length(signed_pre_key), "
        "length(signed_pre_key_sig), length(adv_account_sig), length(adv_account_sig_key), "
        "length(adv_device_sig), signed_pre_key_id FROM whatsmeow_device",
    )
    assert row_jid == jid and jid.startswith("1555000") and jid.endswith(":7@s.whatsapp.net")
    assert 0 <= reg_id < 2**32
    assert keys[:7] == [32, 32, 32, 64, 64, 32, 64] and 0 <= keys[7] < 2**24

    for table in TRAFFIC_TABLES:
        assert count(store, table) > 0, f"no rows written to {table}"
    # Pre-keys: a batch of 50 generated and marked uploaded, some consumed since.
    uploaded, total = query(store, "SELECT SUM(uploaded), COUNT(*) FROM whatsmeow_pre_keys")[0]
    assert 0 < uploaded <= total <= 2 * 50
    sizes = [n for (n,) in query(store, "SELECT length(session) FROM whatsmeow_sessions")]
    assert min(sizes) >= 300 and max(sizes) < 2048
    assert query(store, "PRAGMA integrity_check") == [("ok",)]
    assert query(store, "PRAGMA foreign_key_check") == []


def test_restart_resumes_the_paired_device_without_a_qr(start_worker, store: Path) -> None:
    first = start_worker(*sim(store, "--rate", "0", "--count", "20"))
    assert first.wait() == wp.EXIT_OK
    jid = first.wait_for("paired")["jid"]
    sessions_before = query(store, "SELECT their_id, session FROM whatsmeow_sessions")

    second = start_worker(*sim(store, "--rate", "0", "--count", "60", "--seed", "8"))
    assert second.wait() == wp.EXIT_OK
    assert "qr" not in second.names() and "paired" not in second.names()
    assert query(store, "SELECT jid FROM whatsmeow_device") == [(jid,)]
    assert query(store, "SELECT their_id, session FROM whatsmeow_sessions") != sessions_before


def test_sigterm_stops_cleanly_with_final_stats(start_worker, store: Path) -> None:
    w = start_worker(*sim(store, "--rate", "200", "--trace-changes"))
    w.wait_for("change", where=lambda e: e["n"] >= 5)
    w.proc.send_signal(signal.SIGTERM)
    assert w.wait() == wp.EXIT_OK
    assert w.wait_for("stopping")["reason"] == "sigterm"
    final = w.of("stats")[-1]
    assert final["final"] is True
    assert final["changes"] == len(w.of("change")) >= 5


def test_stdin_eof_means_the_supervisor_is_gone(start_worker, store: Path) -> None:
    w = start_worker(*sim(store, "--rate", "50"))
    w.wait_for("connected")
    w.close_stdin()
    assert w.wait() == wp.EXIT_OK
    assert w.wait_for("stopping")["reason"] == "stdin_closed"


def test_lease_deadline_already_past_exits_before_any_write(start_worker, store: Path, tmp_path: Path) -> None:
    lease = tmp_path / "lease"
    wp.write_lease_deadline(lease, time.time() - 1)
    w = start_worker(*sim(store, "--rate", "0", "--lease-deadline-file", str(lease)))
    assert w.wait() == wp.EXIT_LEASE_EXPIRED
    assert w.names() == ["started", "stopping"]
    assert w.wait_for("stopping")["reason"] == "lease_expired"
    assert count(store, "whatsmeow_device") == 0


def test_missing_lease_file_fails_closed(start_worker, store: Path, tmp_path: Path) -> None:
    w = start_worker(*sim(store, "--lease-deadline-file", str(tmp_path / "never-written")))
    assert w.wait() == wp.EXIT_LEASE_EXPIRED
    assert count(store, "whatsmeow_device") == 0


def test_renewed_lease_keeps_the_worker_and_a_passed_one_stops_writes(
    start_worker, store: Path, tmp_path: Path
) -> None:
    lease = tmp_path / "lease"
    first_deadline = time.time() + 2.0
    wp.write_lease_deadline(lease, first_deadline)
    w = start_worker(*sim(store, "--rate", "40", "--trace-changes", "--lease-deadline-file", str(lease)))
    w.wait_for("connected")
    # Renew (as the supervisor does): the worker must still be writing after the first deadline.
    second_deadline = time.time() + 4.0
    wp.write_lease_deadline(lease, second_deadline)
    w.wait_for("change", where=lambda e: e["t"] > first_deadline + 0.3)
    assert w.proc.poll() is None

    assert w.wait(timeout=30) == wp.EXIT_LEASE_EXPIRED
    assert w.wait_for("stopping")["reason"] == "lease_expired"
    changes = w.of("change")
    # Checked before each write: at most the one write already in flight commits after the deadline.
    assert sum(c["t"] > second_deadline for c in changes) <= 1
    # The worker noticed within its check interval (+ scheduling slack), not whenever.
    assert w.wait_for("stopping")["t"] < second_deadline + 1.0
    final = w.of("stats")[-1]
    assert final["changes"] == len(changes)


def test_lease_is_checked_before_every_write_even_flat_out(start_worker, store: Path, tmp_path: Path) -> None:
    lease = tmp_path / "lease"
    wp.write_lease_deadline(lease, time.time() + 3600)
    w = start_worker(*sim(store, "--rate", "0", "--trace-changes", "--lease-deadline-file", str(lease)))
    w.wait_for("change", where=lambda e: e["n"] >= 100)
    deadline = time.time() + 0.5
    wp.write_lease_deadline(lease, deadline)
    assert w.wait() == wp.EXIT_LEASE_EXPIRED
    changes = w.of("change")
    assert sum(c["t"] > deadline for c in changes) <= 1  # only a write already in flight
    assert any(c["t"] > deadline - 0.2 for c in changes)  # it was writing right up to the deadline
    assert w.of("stats")[-1]["changes"] == len(changes)


def test_revoking_the_lease_file_stops_the_worker(start_worker, store: Path, tmp_path: Path) -> None:
    lease = tmp_path / "lease"
    wp.write_lease_deadline(lease, time.time() + 3600)
    w = start_worker(*sim(store, "--rate", "20", "--trace-changes", "--lease-deadline-file", str(lease)))
    w.wait_for("change", where=lambda e: e["n"] >= 3)
    revoked_at = time.time()
    lease.unlink()
    assert w.wait() == wp.EXIT_LEASE_EXPIRED
    assert w.wait_for("stopping")["t"] < revoked_at + 1.0


def test_logout_deletes_the_device_and_cascades(start_worker, store: Path) -> None:
    w = start_worker(*sim(store, "--rate", "0", "--logout-after", "80"))
    assert w.wait() == wp.EXIT_LOGGED_OUT
    assert w.wait_for("logged_out")["reason"] == "simulated"
    assert w.wait_for("stopping")["reason"] == "logged_out"
    assert w.of("stats")[-1]["changes"] == 81  # 80 changes, then the logout itself
    assert count(store, "whatsmeow_device") == 0
    for table in DEVICE_CHILD_TABLES:
        assert count(store, table) == 0, f"{table} not emptied by the cascade"
    assert count(store, "whatsmeow_lid_map") > 0  # global table, no FK to the device


def test_stream_replaced_after_n_changes_leaves_the_store_alone(start_worker, store: Path) -> None:
    w = start_worker(*sim(store, "--rate", "0", "--stream-replaced-after", "40"))
    assert w.wait() == wp.EXIT_STREAM_REPLACED
    assert w.wait_for("stream_replaced")["simulated"] is True
    assert w.wait_for("stopping")["reason"] == "stream_replaced"
    assert w.of("stats")[-1]["changes"] == 40
    assert count(store, "whatsmeow_device") == 1  # unlike a logout, nothing is deleted
    assert not wp.should_restart(wp.EXIT_STREAM_REPLACED)


def test_initial_rows_grow_the_store_once(start_worker, store: Path) -> None:
    w = start_worker(*sim(store, "--rate", "0", "--count", "5", "--initial-rows", "3000"))
    assert w.wait() == wp.EXIT_OK
    assert w.of("stats")[-1]["initial_rows"] > 0
    sessions = count(store, "whatsmeow_sessions")
    assert sessions >= 3000 and count(store, "whatsmeow_contacts") >= 3000
    size = store.stat().st_size
    assert size > 3000 * 300

    again = start_worker(*sim(store, "--rate", "0", "--count", "5", "--initial-rows", "3000", "--seed", "9"))
    assert again.wait() == wp.EXIT_OK
    assert again.of("stats")[-1]["initial_rows"] == 0
    assert count(store, "whatsmeow_sessions") <= sessions + 5


def test_lid_map_replace_keeps_pn_unique(start_worker, store: Path) -> None:
    # INSERT OR REPLACE / DELETE+upsert must never leave two LIDs for one phone number.
    w = start_worker(*sim(store, "--rate", "0", "--count", "400"))
    assert w.wait() == wp.EXIT_OK
    assert w.of("stats")[-1]["by_table"]["whatsmeow_lid_map"] >= 10
    assert query(store, "SELECT pn FROM whatsmeow_lid_map GROUP BY pn HAVING COUNT(*) > 1") == []


def test_sigkill_is_seen_by_the_caller_only_as_a_return_code(start_worker, store: Path) -> None:
    w = start_worker(*sim(store, "--rate", "100"))
    w.wait_for("connected")
    os.kill(w.proc.pid, signal.SIGKILL)
    rc = w.wait()
    assert rc == -signal.SIGKILL
    assert "stopping" not in w.names()
    assert wp.describe_exit(rc) == "killed_by_signal_9" and wp.should_restart(rc)
    assert query(store, "PRAGMA integrity_check") == [("ok",)]


def test_missing_store_is_created_through_neonize(start_worker, tmp_path: Path) -> None:
    path = tmp_path / "new" / "store.sqlite3"
    w = start_worker(*sim(path, "--rate", "0", "--count", "3"))
    assert w.wait(timeout=60) == wp.EXIT_OK
    assert query(path, "SELECT version FROM whatsmeow_version") == [(15,)]
    assert count(path, "whatsmeow_device") == 1


def test_a_store_that_is_not_whatsmeow_is_a_store_error(start_worker, tmp_path: Path) -> None:
    path = tmp_path / "junk.sqlite3"
    path.write_bytes(b"this is not a database" * 100)
    w = start_worker(*sim(path))
    assert w.wait() == wp.EXIT_STORE_ERROR
    assert "error" in w.names()


def test_bad_arguments(start_worker, store: Path) -> None:
    for args in (
        ["--store", str(store)],  # no --session
        sim(store, "--rate", "-1"),
        sim(store, "--count", "x"),
        ["--driver", "nope", "--store", str(store), "--session", "s"],
        ["--store", "/tmp/a?b", "--session", "s"],  # neonize would open another file
    ):
        w = start_worker(*args)
        assert w.wait() == wp.EXIT_BAD_ARGS, args
        assert w.events == []
