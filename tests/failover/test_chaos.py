"""Randomised chaos: rounds of kill -9 (the node restarted at once or after the takeover), SIGSTOP past
the lease TTL (then SIGCONT), graceful restart and MoveSession, across 3 pool nodes and 10 sessions
under churn, on MariaDB.

Invariants, checked after every round and at the end:
- at most one running worker per session at any time (the workers' own start/stop records);
- no acked change lost: every row a killed or paused owner had acked is in the state its successor
  restored, a graceful stop or a move leaves nothing unshipped, and the vault's final head equals
  the store of the session's last owner, table by table;
- head versions only move forward (polled all along), the history has no gap and its epochs never
  go back (no stale write accepted).

Size from the environment: CHAOS_ROUNDS (default 8: each kind of round twice), CHAOS_SEED (default
random, printed so a failure can be replayed).
"""

from __future__ import annotations

import math
import os
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from clusterkit import copy_store, read_state
from failover.fokit import (
    TTL,
    HeadWatch,
    NodeProc,
    acked_rows_differ,
    check_no_overlap,
    check_versions,
    last_store,
    stop_all,
    wait_all_running,
    wait_new_workers,
)

from session_node import store

pytestmark = pytest.mark.slow

ROUNDS = int(os.environ.get("CHAOS_ROUNDS", "8"))
SEED = int(os.environ.get("CHAOS_SEED", str(random.SystemRandom().randrange(1 << 30))))
SESSIONS = [f"c{i:02d}" for i in range(1, 11)]
ACTIONS = ("kill", "pause", "restart", "move")
ROUND_TIMEOUT_S = TTL + 60.0


class Chaos:
    def __init__(self, cluster: Any, nodes: list[NodeProc], rng: random.Random, tmp_path: Path) -> None:
        self.cluster, self.admin, self.nodes, self.rng, self.tmp = cluster, cluster.admin, nodes, rng, tmp_path
        self.owners: dict[str, str] = {}
        self.checked_rows = 0  # sessions whose acked rows were checked after a takeover

    def owned_by(self, node: NodeProc) -> list[str]:
        return sorted(s for s, o in self.owners.items() if o == node.node_id)

    def pick_owner(self) -> NodeProc:
        """A node holding sessions, the busiest more likely."""
        counts = Counter(self.owners.values())
        ids = sorted(counts)
        return self.cluster.nodes[self.rng.choices(ids, weights=[counts[i] for i in ids])[0]]

    def snapshot_acked(self, node: NodeProc, sessions: list[str], tag: str) -> dict[str, Path]:
        return {s: copy_store(node.store_path(s), self.tmp / tag / s / store.STORE_FILE) for s in sessions}

    def check_takeover(self, copies: dict[str, Path], since: float, exclude: str | None) -> None:
        """Each session's next owner restored a state holding every row the old owner had acked."""
        others = [n for n in self.nodes if n.node_id != exclude]
        runs = wait_new_workers(others, copies, since, timeout=ROUND_TIMEOUT_S)
        for s, copy in copies.items():
            acked = read_state(copy)[0].acked_version
            got = self.cluster.nodes[runs[s].node].wait_event("lease_acquired", session=s, since=since)
            assert got["head"] >= acked, f"{s}: taken over at {got['head']}, but v{acked} had been acked"
            if got["head"] == 0:
                continue  # nothing was acked (the old owner froze before its pairing snapshot shipped)
            at = self.admin.restore_to(self.tmp / "at" / f"{s}-{got['head']}" / store.STORE_FILE,
                                       self.cluster.cache, s, got["head"])  # fmt: skip
            assert acked_rows_differ(copy, at) == [], f"{s}: acked changes lost in the takeover"
            self.checked_rows += 1

    # -- rounds --

    def kill(self) -> str:
        victim = self.pick_owner()
        theirs = self.owned_by(victim)
        since = time.time()
        victim.kill9()
        copies = self.snapshot_acked(victim, theirs, f"kill-{since:.3f}")
        at_once = self.rng.random() < 0.5
        if at_once:  # it races the standbys for its own sessions (its stores are kept if still current)
            victim.start()
        self.check_takeover(copies, since, exclude=None if at_once else victim.node_id)
        if not at_once:
            victim.start()
        return f"kill -9 {victim.node_id} ({len(theirs)} sessions, restarted {'at once' if at_once else 'after'})"

    def pause(self) -> str:
        victim = self.pick_owner()
        theirs = self.owned_by(victim)
        since = time.time()
        victim.pause()
        copies = self.snapshot_acked(victim, theirs, f"pause-{since:.3f}")
        self.check_takeover(copies, since, exclude=victim.node_id)
        woke = time.time()
        victim.resume()
        for s in theirs:
            victim.wait_event("fenced", session=s, since=woke, timeout=ROUND_TIMEOUT_S)
        return f"SIGSTOP {victim.node_id} past the TTL ({len(theirs)} sessions), SIGCONT: fenced"

    def released(self, source: NodeProc, sessions: list[str]) -> dict[str, int]:
        """A graceful release ships everything first: nothing left in the source's changelog.
        Returns each session's last acked version, read before anyone may write the store again."""
        out = {}
        for s in sessions:
            st, pending = read_state(source.store_path(s))
            assert pending == 0, f"{s}: {pending} changes left unshipped by a graceful release"
            out[s] = st.acked_version
        return out

    def check_handover(self, acked: dict[str, int], since: float, to: list[NodeProc]) -> float:
        """The next owner starts from exactly the last acked version. Returns the slowest handover (s)."""
        runs = wait_new_workers(to, acked, since, timeout=ROUND_TIMEOUT_S)
        for s, version in acked.items():
            got = self.cluster.nodes[runs[s].node].wait_event("lease_acquired", session=s, since=since)
            assert got["head"] == version, (s, version, got)
        return max(r.start - since for r in runs.values())

    def restart(self) -> str:
        node = self.pick_owner()
        theirs = self.owned_by(node)
        since = time.time()
        assert node.terminate() == 0, node.log()
        acked = self.released(node, theirs)
        node.start()
        self.check_handover(acked, since, to=self.nodes)
        return f"SIGTERM + start {node.node_id} ({len(theirs)} sessions handed over)"

    def move(self) -> str:
        s = self.rng.choice(sorted(self.owners))
        source = self.cluster.nodes[self.owners[s]]
        target = self.rng.choice([n.node_id for n in self.nodes if n is not source] + ["any"])
        since = time.time()
        moved = self.admin.move(s, target)
        assert moved.previous_node_id == source.node_id, moved
        source.wait_event("session_stopped", session=s, since=since, handoff=True, timeout=ROUND_TIMEOUT_S)
        acked = self.released(source, [s])
        took = self.check_handover(acked, since, to=[self.cluster.nodes[moved.target_node_id]])
        return f"move {s} {source.node_id} -> {target} ({moved.target_node_id}) in {took:.2f} s"


def test_chaos_rounds(cluster, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    print(f"\nchaos: CHAOS_SEED={SEED} CHAOS_ROUNDS={ROUNDS}")
    rng = random.Random(SEED)
    admin = cluster.admin
    admin.seed(SESSIONS)
    nodes = [cluster.node(n, pool=True, rate=2) for n in "abc"]
    chaos = Chaos(cluster, nodes, rng, tmp_path)
    actions = [ACTIONS[i % len(ACTIONS)] for i in range(ROUNDS)]
    rng.shuffle(actions)

    with HeadWatch(admin, SESSIONS) as heads:
        chaos.owners = wait_all_running(admin, nodes, SESSIONS, timeout=120)
        spread = Counter(chaos.owners.values())
        print(f"start: owners {dict(sorted(spread.items()))}")
        # Fair share ceil(10 / 3) = 4, +1 a node may take while sessions are still orphaned.
        assert max(spread.values()) <= math.ceil(len(SESSIONS) / len(nodes)) + 1, spread
        for i, action in enumerate(actions, 1):
            t0 = time.time()
            what = getattr(chaos, action)()
            chaos.owners = wait_all_running(admin, nodes, SESSIONS, timeout=ROUND_TIMEOUT_S)
            runs = check_no_overlap(nodes, SESSIONS)
            spread = dict(sorted(Counter(chaos.owners.values()).items()))
            print(f"round {i}/{ROUNDS}: {what}; all running again after {time.time() - t0:.1f} s; {runs} worker "
                  f"runs so far; owners {spread}")  # fmt: skip
    heads.check()

    stop_all(nodes)
    for s in SESSIONS:
        check_versions(admin.versions(s), admin.head(s))
        final = admin.restore_to(tmp_path / "final" / s / store.STORE_FILE, cluster.cache, s)
        assert store.diff_tables(final, last_store(nodes, s)) == [], f"{s}: the vault's head differs from the node"
    runs = check_no_overlap(nodes, SESSIONS, finished=True)
    print(f"chaos: {ROUNDS} rounds, {runs} worker runs, {chaos.checked_rows} takeovers checked row by row")
    assert chaos.checked_rows >= actions.count("kill") + actions.count("pause")
