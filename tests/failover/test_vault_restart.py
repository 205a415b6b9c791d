"""The vault goes away in the middle of churn (SIGTERM, or kill -9 with commits in flight) and comes
back on the same address and database. The leases live in the database and outlast the outage, so
no session changes owner or epoch and no worker is restarted: the WhatsApp clients keep working
while their changes queue in the stores' changelogs. Once the vault answers, the nodes reconnect and
deliver everything, in order, none twice: the history has no gap, no delta repeats its predecessor,
and the vault's head equals each node's store, table by table."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from clusterkit import no_repeated_deltas, read_state, wait_for
from failover.fokit import (
    HeadWatch,
    check_no_overlap,
    check_versions,
    stop_all,
    wait_all_running,
    worker_intervals,
)

from session_node import store

pytestmark = pytest.mark.slow

TTL, MARGIN = 30, 3.0  # the outage (a few seconds) stays well inside the lease
QUEUED = 15  # changes each session must have queued on its node while the vault is down


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "kill9"])
def test_vault_down_during_churn_then_back(cluster, tmp_path: Path, sig: int) -> None:  # type: ignore[no-untyped-def]
    sessions = ["v1", "v2", "v3", "v4"]
    admin = cluster.admin
    admin.seed(sessions)
    nodes = [cluster.node(n, pool=True, rate=10, ttl=TTL, margin=MARGIN) for n in "ab"]
    by_id = {n.node_id: n for n in nodes}

    with HeadWatch(admin, sessions) as heads:
        owners = wait_all_running(admin, nodes, sessions)
        wait_for("a few versions of every session", lambda: all(admin.head(s) >= 3 for s in sessions))
        leases = {s: admin.session(s).lease for s in sessions}  # type: ignore[union-attr]
        runs_before = {s: len(worker_intervals(nodes, s)) for s in sessions}

        assert cluster.vault.stop(sig) == (0 if sig == signal.SIGTERM else -signal.SIGKILL)
        heads_down = {s: read_state(by_id[owners[s]].store_path(s))[0].acked_version for s in sessions}
        wait_for(
            f"{QUEUED} changes queued on the nodes for every session",
            lambda: all(read_state(by_id[owners[s]].store_path(s))[1] >= QUEUED for s in sessions),
        )
        cluster.vault.start()

        def delivered() -> bool:  # the queue drained: what was acked is past what was queued
            return all(
                (st := read_state(by_id[owners[s]].store_path(s)))[0].acked_version >= heads_down[s] + 2
                and st[1] < QUEUED
                for s in sessions
            )

        wait_for("the queued changes delivered", delivered, timeout=60)
        for s in sessions:
            lease = admin.session(s).lease  # type: ignore[union-attr]
            assert (lease.node_id, lease.epoch) == (leases[s].node_id, leases[s].epoch), (s, lease, leases[s])
    heads.check()

    stop_all(nodes)
    for s in sessions:
        assert len(worker_intervals(nodes, s)) == runs_before[s], f"{s}: a worker was restarted"
        check_versions(admin.versions(s), admin.head(s))
        _, records = admin.records(s)
        no_repeated_deltas(records)
        final = admin.restore_to(tmp_path / "final" / s / store.STORE_FILE, cluster.cache, s)
        diff = store.diff_tables(final, by_id[owners[s]].store_path(s))
        assert diff == [], f"{s}: the vault's head differs from the node's store: {diff}"
    check_no_overlap(nodes, sessions, finished=True)
