"""The real neonize driver under the supervisor (vault subprocess on SQLite, WhatsApp unreachable).

The node creates the store with neonize (in a subprocess), installs capture, starts the neonize
worker; connect() fails offline and the worker is restarted with growing backoff while the
supervisor stays up; a fake paired device in a created or restored store loads in the worker
(`--worker-arg=--probe-me`: after the failed connect the worker reports get_me()).
"""

from __future__ import annotations

import signal
import sqlite3
from pathlib import Path

from node_cli.nodekit import get_session, head, is_worker_alive, poll, restore_head
from support import VaultProcess

from session_node import capture, simulate, state, store
from session_node import worker_protocol as wp

PROBE = "--worker-arg=--probe-me"


def read_store(path: Path) -> sqlite3.Connection:
    return store.connect(path, readonly=True)


def test_new_session_creates_the_store_and_retries_connect_with_backoff(
    start_node, session_name, offline_env: dict[str, str], vault: VaultProcess
) -> None:
    sid = session_name()
    node = start_node("a", [sid], "--driver", "neonize", env=offline_env)
    ready = node.wait_for("store_ready", sid)
    assert ready["decision"] == "created" and ready["head"] == 0

    # Three starts: two gaps to compare. Each start failed to connect and exited for a retry.
    third = node.wait_for("worker_started", sid, n=3)
    starts = node.events("worker_started", sid)[:3]
    exits = node.events("worker_exited", sid)[:2]
    assert [e["exit"] for e in exits] == ["connect_failed", "connect_failed"]
    assert all(e["rc"] == wp.EXIT_CONNECT_FAILED for e in exits)
    assert len({s["pid"] for s in starts}) == 3
    failures = node.events("worker_connect_failed", sid)
    assert failures and "dial" in failures[0]["message"], failures
    gap1 = starts[1]["t"] - exits[0]["t"]
    gap2 = starts[2]["t"] - exits[1]["t"]
    assert 0.7 < gap1 < 1.5 + 1.0, (gap1, gap2)  # backoff 1 s (+-20% jitter) plus scheduling
    assert gap2 > gap1 and gap2 > 1.5, (gap1, gap2)  # then 2 s: the backoff grows
    assert node.proc.poll() is None
    assert node.events("node_started")[0]["pid"] == node.proc.pid  # the same supervisor throughout

    # The store: created by neonize (whatsmeow v15), capture installed, no device yet.
    path = node.data_dir / sid / store.STORE_FILE
    conn = read_store(path)
    try:
        assert conn.execute("SELECT version, compat FROM whatsmeow_version").fetchone() == (15, 8)
        assert capture.triggers_installed(conn)
        assert conn.execute("SELECT COUNT(*) FROM whatsmeow_device").fetchone() == (0,)
    finally:
        conn.close()
    assert get_session(vault.address, sid).lease.node_id == f"node-{node.data_dir.name}"

    assert node.stop(signal.SIGTERM) == 0
    names = node.names(sid)
    assert names[-2:] == ["lease_released", "session_stopped"]
    assert node.names()[-1] == "node_stopped"
    assert len(node.events("worker_started", sid)) >= 3
    assert not any(is_worker_alive(pid) for pid in node.worker_pids())
    info = get_session(vault.address, sid)
    assert info.lease.node_id == "" and info.head_version == 0  # unpaired: nothing worth shipping
    assert third["pid"] in node.worker_pids()


def test_fake_device_placed_in_the_created_store_loads_and_is_shipped(
    start_node, session_name, offline_env: dict[str, str], vault: VaultProcess, store_cache: Path, tmp_path: Path
) -> None:
    sid = session_name()
    first = start_node("a", [sid], "--driver", "neonize", env=offline_env)
    first.wait_for("worker_started", sid)
    assert first.stop() == 0
    path = first.data_dir / sid / store.STORE_FILE

    # An operator's offline pairing stand-in: a device row with keys of the lengths whatsmeow checks.
    device = simulate.write_fake_device_file(path, seed=11)

    node = start_node("a", [sid], "--driver", "neonize", PROBE, env=offline_env)
    assert node.wait_for("store_ready", sid)["decision"] == "kept"
    me = node.wait_for("worker_me", sid)
    assert (me["jid"], me["lid"], me["push_name"], me["initialized"]) == (
        device.jid,
        device.lid,
        device.push_name,
        True,
    )
    assert node.wait_for("worker_exited", sid)["exit"] == "connect_failed"

    # The device reached the vault (a snapshot: the store now holds a paired device).
    poll(lambda: head(vault.address, sid) >= 1, 15, "the device to be shipped", node.report)
    assert node.stop() == 0
    restored = tmp_path / "restored" / store.STORE_FILE
    restore_head(vault.address, sid, restored, store_cache)
    conn = read_store(restored)
    try:
        assert conn.execute("SELECT jid, lid FROM whatsmeow_device").fetchall() == [(device.jid, device.lid)]
    finally:
        conn.close()
    local = read_store(path)
    try:
        assert state.load(local).acked_version == head(vault.address, sid)
        assert capture.pending(local) == 0
    finally:
        local.close()


def test_device_restored_from_the_vault_loads_in_the_neonize_worker(
    start_node, session_name, offline_env: dict[str, str], vault: VaultProcess
) -> None:
    sid = session_name()
    # Node A pairs a fake device and writes traffic with the simulated driver, then hands over.
    a = start_node("a", [sid], "--driver", "simulated", "--sim-rate", "0", "--sim-count", "60")
    jid = a.wait_for("worker_paired", sid)["jid"]
    assert a.wait_for("worker_exited", sid)["exit"] == "ok"  # --sim-count reached; A keeps syncing
    assert a.stop() == 0
    shipped = head(vault.address, sid)
    assert shipped >= 1

    # Node B, empty data dir, real client: restore before start, then neonize loads that device.
    b = start_node("b", [sid], "--driver", "neonize", PROBE, env=offline_env)
    ready = b.wait_for("store_ready", sid)
    assert ready["decision"] == "restored" and ready["head"] == shipped
    me = b.wait_for("worker_me", sid)
    assert me["jid"] == jid and me["initialized"] is True
    assert b.wait_for("worker_exited", sid)["exit"] == "connect_failed"
    assert b.stop() == 0
    assert store.tables_equal(a.data_dir / sid / store.STORE_FILE, b.data_dir / sid / store.STORE_FILE), (
        store.diff_tables(a.data_dir / sid / store.STORE_FILE, b.data_dir / sid / store.STORE_FILE)
    )
