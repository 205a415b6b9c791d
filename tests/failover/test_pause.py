"""SIGSTOP of a session owner past its lease TTL: its workers stop by themselves at their own copy of
the lease deadline (the frozen supervisor cannot tell them), a standby takes over with a higher
epoch, and once the old owner is SIGCONTed it finds itself fenced: it writes nothing more under the
old epoch (the vault refuses it), keeps its unacked changes in its own store, and at no time did two
workers of one session run (the workers' own start/stop records)."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import pytest
from clusterkit import copy_store, read_state, wait_for
from failover.fokit import (
    TTL,
    HeadWatch,
    check_no_overlap,
    check_versions,
    last_store,
    stop_all,
    wait_all_running,
    wait_new_workers,
    worker_intervals,
)
from sqlalchemy import create_engine

from session_node import store
from vault_service.storage import audit

pytestmark = pytest.mark.slow

# How the fenced node can learn it: its renewal refused, its stale record refused, or its worker
# gone with EXIT_LEASE_EXPIRED (reaped after SIGCONT) or its own lease clock run out.
FENCED_REASONS = {"STALE_EPOCH", "LEASE_NOT_HELD", "LEASE_EXPIRED", "LEASE_EXPIRED_LOCALLY", "WORKER_LEASE_EXPIRED"}


def test_paused_owner_is_fenced_and_never_writes_again(cluster, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    sessions = ["p1", "p2", "p3"]
    admin = cluster.admin
    admin.seed(sessions)
    nodes = [cluster.node(n, pool=True, rate=10) for n in "abc"]

    with HeadWatch(admin, sessions) as heads:
        owners = wait_all_running(admin, nodes, sessions)
        wait_for("a few versions of every session", lambda: all(admin.head(s) >= 4 for s in sessions))
        victim_id, _ = Counter(owners.values()).most_common(1)[0]
        victim = cluster.nodes[victim_id]
        theirs = sorted(s for s, o in owners.items() if o == victim_id)
        old_epoch = {s: admin.session(s).lease.epoch for s in theirs}  # type: ignore[union-attr]

        t_pause = time.time()
        victim.pause()
        others = [n for n in nodes if n is not victim]
        runs = wait_new_workers(others, theirs, t_pause, timeout=TTL + 30)
        takeover, takeover_epoch = {}, {}
        for s in theirs:
            got = cluster.nodes[runs[s].node].wait_event("lease_acquired", session=s, since=t_pause)
            assert got["epoch"] > old_epoch[s], (s, got, old_epoch[s])
            takeover[s], takeover_epoch[s] = got["head"], got["epoch"]
            # The frozen node's last worker stopped by itself, on its lease deadline, before the new one.
            mine = worker_intervals([victim], s)[-1]
            assert mine.stop is not None and mine.reason == "lease_expired", mine
            assert mine.stop <= runs[s].start, (mine, runs[s])
        wait_for("the new owners writing", lambda: all(admin.head(s) > takeover[s] + 3 for s in theirs))
        frozen = {s: copy_store(victim.store_path(s), tmp_path / "frozen" / s / store.STORE_FILE) for s in theirs}
        frozen_acked = {s: read_state(frozen[s])[0].acked_version for s in theirs}

        t_resume = time.time()
        victim.resume()
        for s in theirs:
            fenced = victim.wait_event("fenced", session=s, since=t_resume)
            assert fenced["reason"] in FENCED_REASONS, fenced
        # The new owners go on; the woken node gets nothing more in (checked on the history below).
        wait_for("more versions after the wake-up", lambda: all(admin.head(s) > takeover[s] + 6 for s in theirs))
        for s in theirs:
            st, pending = read_state(victim.store_path(s))
            assert st.acked_version == frozen_acked[s], (s, st, frozen_acked[s])  # nothing acked after the wake-up
            assert st.epoch == old_epoch[s]
            # Changes its worker made after the supervisor froze stay in its own changelog.
            assert pending > 0, f"{s}: the paused node's unshipped changes are gone"
    heads.check()

    stop_all(nodes)
    for s in sessions:
        versions = admin.versions(s)
        check_versions(versions, admin.head(s))
        if s in theirs:
            after = [v for v in versions if v.version > takeover[s]]
            assert after and {v.node_id for v in after} == {runs[s].node}, [(v.version, v.node_id) for v in after]
            assert all(v.lease_epoch > old_epoch[s] for v in after), "a write under the old epoch was accepted"
        final = admin.restore_to(tmp_path / "final" / s / store.STORE_FILE, cluster.cache, s)
        assert store.diff_tables(final, last_store(nodes, s)) == [], f"{s}: the vault's head differs from the node"
    assert check_no_overlap(nodes, sessions, finished=True) >= len(sessions) + len(theirs)

    # The audit log tells the story: the standby took the expired lease over from the paused node.
    engine = create_engine(cluster.database_url)
    try:
        with engine.connect() as conn:
            for s in theirs:
                taken = [json.loads(e["detail"]) for e in audit.entries(conn, "default", s)
                         if e["action"] == "lease.taken_over"]  # fmt: skip
                want = {"node": runs[s].node, "previous_owner": victim_id, "epoch": takeover_epoch[s]}
                assert any(want.items() <= d.items() for d in taken), (want, taken)
    finally:
        engine.dispose()
