"""Worker supervision through the real node process (simulated driver, vault subprocess on SQLite):
a killed worker is restarted and syncing goes on; StreamReplaced is a conflict that is never
restarted; LoggedOut marks the session in the vault and never ships the emptied store.

StreamReplaced and LoggedOut cannot come from WhatsApp offline; the simulated worker produces them
on request (`--worker-arg=--stream-replaced-after=N`, `--worker-arg=--logout-after=N`), with the
same events and exit codes as the neonize driver's handlers.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from node_cli.nodekit import get_session, head, is_worker_alive, poll, restore_head
from sessionvault.v1 import common_pb2 as pb
from support import VaultProcess

from session_node import capture, store
from session_node import worker_protocol as wp

SIM = ("--driver", "simulated", "--sim-seed", "5")


def count(path: Path, table: str) -> int:
    conn = store.connect(path, readonly=True)
    try:
        return conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
    finally:
        conn.close()


def test_killed_worker_is_restarted_and_syncing_goes_on(start_node, session_name, vault: VaultProcess) -> None:
    sid = session_name()
    node = start_node("a", [sid], *SIM, "--sim-rate", "30")
    first = node.wait_for("worker_started", sid)
    poll(lambda: head(vault.address, sid) >= 3, 20, "the first worker's changes in the vault", node.report)

    os.kill(first["pid"], signal.SIGKILL)
    exited = node.wait_for("worker_exited", sid)
    assert (exited["rc"], exited["exit"]) == (-signal.SIGKILL, "killed_by_signal_9")
    second = node.wait_for("worker_started", sid, n=2)
    assert second["pid"] != first["pid"]
    assert 0.7 < second["t"] - exited["t"] < 3  # restarted after the first backoff step (1 s)

    # The new worker writes on the same store, and its changes keep reaching the vault.
    after_restart = head(vault.address, sid)
    poll(lambda: head(vault.address, sid) >= after_restart + 5, 20, "the head to keep rising", node.report)
    assert node.proc.poll() is None
    assert node.events("node_started")[0]["pid"] == node.proc.pid
    assert node.events("worker_paired", sid)  # the first worker paired; the second reused the device
    assert len(node.events("worker_paired", sid)) == 1
    assert get_session(vault.address, sid).state == pb.SESSION_STATE_ACTIVE

    assert node.stop() == 0
    assert not is_worker_alive(second["pid"])
    assert node.names(sid)[-2:] == ["lease_released", "session_stopped"]
    local = node.data_dir / sid / store.STORE_FILE
    conn = store.connect(local, readonly=True)
    try:
        assert capture.pending(conn) == 0  # the final flush shipped everything
    finally:
        conn.close()


def test_stream_replaced_is_a_conflict_and_never_restarted(
    start_node, session_name, vault: VaultProcess, store_cache: Path, tmp_path: Path
) -> None:
    sid = session_name()
    node = start_node("a", [sid], *SIM, "--sim-rate", "0", "--worker-arg=--stream-replaced-after=40")
    node.wait_for("session_conflict", sid)
    exited = node.events("worker_exited", sid)
    assert [(e["rc"], e["exit"]) for e in exited] == [(wp.EXIT_STREAM_REPLACED, "stream_replaced")]
    assert node.events("worker_stream_replaced", sid)
    # Its only session is final, so the node ends by itself: nothing restarted the worker.
    assert node.wait(15) == 0
    assert len(node.events("worker_started", sid)) == 1
    assert node.names(sid)[-2:] == ["lease_released", "session_conflict"]
    assert node.names()[-1] == "node_stopped"

    # A conflict is not a logout: what the worker wrote was flushed, and the vault holds exactly it.
    info = get_session(vault.address, sid)
    assert info.state == pb.SESSION_STATE_ACTIVE and info.lease.node_id == ""
    restored = tmp_path / "restored" / store.STORE_FILE
    restore_head(vault.address, sid, restored, store_cache)
    local = node.data_dir / sid / store.STORE_FILE
    assert store.tables_equal(local, restored), store.diff_tables(local, restored)


@pytest.mark.parametrize(
    "initial_rows",
    [0, 1200],
    ids=["small", "cascade-over-drain-limit"],  # 1200 -> ~3600 rows cascaded away by the logout
)
def test_logged_out_marks_the_vault_and_keeps_the_last_good_state(
    start_node, session_name, vault: VaultProcess, store_cache: Path, tmp_path: Path, initial_rows: int
) -> None:
    sid = session_name()
    args = [*SIM, "--sim-rate", "20", "--worker-arg=--logout-after=60"]  # 3 s: the pairing snapshot ships first
    if initial_rows:
        args += ["--sim-initial-rows", str(initial_rows)]
    node = start_node("a", [sid], *args)
    jid = node.wait_for("worker_paired", sid)["jid"]
    node.wait_for("session_logged_out", sid)
    exited = node.events("worker_exited", sid)
    assert [(e["rc"], e["exit"]) for e in exited] == [(wp.EXIT_LOGGED_OUT, "logged_out")]
    assert node.events("worker_logged_out", sid)[0]["reason"] == "simulated"
    assert node.wait(15) == 0  # its only session is final: no restart, the node ends
    assert len(node.events("worker_started", sid)) == 1
    assert node.names(sid)[-2:] == ["lease_released", "session_logged_out"]

    info = get_session(vault.address, sid)
    assert info.state == pb.SESSION_STATE_LOGGED_OUT and info.lease.node_id == ""
    assert info.head_version >= 1

    # Locally the device and everything hanging off it are gone...
    local = node.data_dir / sid / store.STORE_FILE
    assert count(local, "whatsmeow_device") == 0 and count(local, "whatsmeow_sessions") == 0
    # ...but the vault's head is the last good state: the device row and all its rows.
    restored = tmp_path / "restored" / store.STORE_FILE
    restore_head(vault.address, sid, restored, store_cache)
    conn = store.connect(restored, readonly=True)
    try:
        assert conn.execute("SELECT jid FROM whatsmeow_device").fetchall() == [(jid,)]
    finally:
        conn.close()
    assert count(restored, "whatsmeow_sessions") >= initial_rows
    assert count(restored, "whatsmeow_contacts") >= initial_rows
    assert count(restored, "whatsmeow_pre_keys") > 0
    assert get_session(vault.address, sid).head_version == info.head_version

    # Another node asked to run the session restores it, sees it logged out, and starts nothing.
    other = start_node("b", [sid], *SIM)
    assert other.wait(20) == 0
    assert other.wait_for("store_ready", sid, alive=False)["decision"] == "restored"
    assert other.names(sid)[-2:] == ["lease_released", "session_logged_out"]
    assert other.events("worker_started") == []
    assert get_session(vault.address, sid).state == pb.SESSION_STATE_LOGGED_OUT
