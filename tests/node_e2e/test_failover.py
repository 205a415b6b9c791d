"""kill -9 failover: node A runs a session with the simulated driver, A dies (or freezes), node B with an
empty data dir takes the session over once A's lease has run out, restores it and carries on.

"B's store equals A's": B's own worker starts writing as soon as the restore is in place, so B's
store is compared with a copy of A's store advanced by exactly the records B itself shipped (read
back from the vault); A's store is also compared with a fresh restore of the version A last acked.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from pathlib import Path

import pytest
from clusterkit import Admin, alive, copy_store, no_repeated_deltas, wait_for
from node_e2e.e2ekit import SESSION, apply_records, check_history
from sessionvault.v1 import common_pb2 as pb

from session_node import store
from session_node import worker_protocol as wp

TTL, MARGIN = 3, 1  # short leases keep the takeover quick: renewals every 1 s, the worker fenced 2 s after one


def wait_fresh_ack(node, at_least: int = 0) -> int:  # type: ignore[no-untyped-def]
    """Wait for an ack newer than what is on record now (and at least ``at_least``) with nothing
    pending: right after a change of a paced worker was acked, the next change is furthest away."""
    seen = node.read_store()[0].acked_version

    def probe() -> int | None:
        st, pending = node.read_store()
        return st.acked_version if st.acked_version > max(seen, at_least - 1) and pending == 0 else None

    return wait_for(f"{node.node_id}: a fresh ack", probe, timeout=30, every=0.005)


def freeze(node) -> None:  # type: ignore[no-untyped-def]
    """SIGSTOP the supervisor at a moment it holds no lock on the store (else the worker's next write
    would just block on it): after stopping it, take an exclusive lock ourselves to prove that."""
    for _ in range(10):
        node.signal(signal.SIGSTOP)
        probe = sqlite3.connect(node.store_path, timeout=2.0, isolation_level=None)
        try:
            probe.execute("BEGIN EXCLUSIVE")
            probe.execute("ROLLBACK")
            return
        except sqlite3.OperationalError:
            node.signal(signal.SIGCONT)
            wait_fresh_ack(node)
        finally:
            probe.close()
    raise AssertionError("could not freeze the supervisor outside a store transaction")


@pytest.mark.parametrize("variant", ["worker_finished", "worker_running", "supervisor_frozen"])
def test_kill9_failover(variant: str, nodes, admin: Admin, tmp_path: Path, store_cache: Path) -> None:  # type: ignore[no-untyped-def]
    if variant == "worker_finished":
        a = nodes("a", ttl=TTL, margin=MARGIN, rate=500, count=150)
    else:  # paced, so a moment right after an ack is ~0.2 s (0.05 s) away from the next change
        a = nodes("a", ttl=TTL, margin=MARGIN, rate=5 if variant == "worker_running" else 20)
    worker = a.worker_pid()

    if variant == "worker_finished":
        a.wait_event("worker_exited", exit="ok")
        a.wait_synced(admin)
        assert not alive(worker)
    else:
        wait_for("A: a few versions acked", lambda: a.read_store()[0].acked_version >= 4)
        wait_fresh_ack(a)
        assert alive(worker)

    if variant == "supervisor_frozen":
        freeze(a)  # paused, not dead: the worker's stdin stays open, only its lease deadline stops it
    else:
        a.signal(signal.SIGKILL)
        a.wait()
    deadline = wp.read_lease_deadline(a.deadline_file)  # final: nobody renews A's lease any more
    head_a = admin.head(SESSION)
    b = nodes("b", ttl=TTL, margin=MARGIN, rate=100, count=12)

    # A's worker stops by itself: at once when its supervisor died (stdin EOF), at the lease deadline
    # when the supervisor is frozen. Either way before the lease can pass to B.
    wait_for("A's worker to stop", lambda: not alive(worker), timeout=max(1.0, deadline - time.time()) + 5)
    stopped_at = time.time()
    assert stopped_at < deadline + 1.0, f"A's worker outlived its lease deadline by {stopped_at - deadline:.2f} s"
    st, pending = a.read_store()
    if variant == "supervisor_frozen":
        assert stopped_at > deadline - 0.5, "the worker stopped well before its deadline: what stopped it?"
        last_write = os.stat(a.store_path).st_mtime
        assert last_write <= deadline + 0.3, f"A's worker wrote {last_write - deadline:.2f} s after its deadline"
        assert pending > 0, "the worker should have kept writing while its supervisor was frozen"
    else:
        assert (st.acked_version, pending) == (head_a, 0), "A had acked everything when it was killed"

    lease_a = admin.session(SESSION).lease  # final: A renews no more
    acquired = b.wait_event("lease_acquired", timeout=30)
    assert acquired["epoch"] == lease_a.epoch + 1
    assert acquired["head"] == head_a
    expiry_a = lease_a.expire_time.ToMicroseconds() / 1e6
    assert acquired["t"] >= expiry_a - 0.2, (
        f"B took the session {expiry_a - acquired['t']:.2f} s before A's lease ran out"
    )
    if variant == "supervisor_frozen":
        assert stopped_at < acquired["t"] + 0.05, "A's worker was still running when B took the session"
        assert os.stat(a.store_path).st_mtime < acquired["t"], "A's worker wrote after B owned the session"
    ready = b.wait_event("store_ready")
    assert (ready["decision"], ready["head"]) == ("restored", head_a)

    b.wait_event("worker_exited", exit="ok")
    head_b = b.wait_synced(admin)
    assert head_b > head_a

    versions = admin.versions(SESSION)
    check_history(versions, head_b)
    assert {(v.node_id, v.lease_epoch) for v in versions if v.version <= head_a} == {("a", lease_a.epoch)}
    assert {(v.node_id, v.lease_epoch, v.kind) for v in versions if v.version > head_a} == {
        ("b", lease_a.epoch + 1, pb.RECORD_KIND_DELTA)  # B restored A's snapshot lineage: no new snapshot
    }

    # The vault at A's last ack is exactly A's store (unless A's frozen worker wrote past its supervisor).
    at_a = admin.restore_to(tmp_path / "at-a" / "store.sqlite3", store_cache, SESSION, head_a)
    if variant != "supervisor_frozen":
        assert store.diff_tables(a.store_path, at_a) == []
    # B's store = A's state + exactly B's own records.
    _, records = admin.records(SESSION)
    no_repeated_deltas(records)
    expected = copy_store(at_a if variant == "supervisor_frozen" else a.store_path, tmp_path / "expected.sqlite3")
    apply_records(expected, [r for r in records if r[0] > head_a])
    assert store.diff_tables(expected, b.store_path) == []
    # and a newcomer restoring now gets B's store.
    fresh = admin.restore_to(tmp_path / "fresh" / "store.sqlite3", store_cache, SESSION)
    assert store.diff_tables(fresh, b.store_path) == []

    b.signal(signal.SIGTERM)
    assert b.wait() == 0
