"""Property: snapshot + drained deltas reproduce every whatsmeow table of the source exactly.

Random whatsmeow-shaped workloads (the statements of whatsmeow's sqlstore: upserts, pre-key batches,
device deletes that cascade, app-state versions with mutation MACs, INSERT OR REPLACE on lid_map,
plus a primary-key-changing device update) run on a neonize-created store with capture triggers,
randomly interleaved with drains (small limits, so batches get cut), acks, snapshots and trigger
re-installs. A replica follows along by applying every drained delta; whenever a drain has consumed
the whole changelog the replica must equal the source, and at the end a store rebuilt from the last
snapshot plus the deltas after it must equal the source too.

SESSIONVAULT_HYPOTHESIS_EXAMPLES sets the number of examples (default 30); the examples are
derandomized for CI unless SESSIONVAULT_HYPOTHESIS_RANDOM=1.
"""

from __future__ import annotations

import os
import re
import sqlite3
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from session_node import capture, restore, snapshot, store

# Two devices are paired at the start; the third jid is free, so device renames (pk updates) can succeed.
JIDS = ["1555000001:3@s.whatsapp.net", "1555000002:7@s.whatsapp.net", "1555000003:1@s.whatsapp.net"]
PEERS = ["p1", "p2", "p3"]
NAMES = ["regular", "critical_block"]

jid = st.sampled_from(JIDS)
peer = st.sampled_from(PEERS)
small_blob = st.binary(max_size=12)
key32 = st.binary(min_size=32, max_size=32)
mac32 = st.sampled_from([bytes([i]) * 32 for i in range(4)])
text = st.text(max_size=4)

OPS = st.one_of(
    st.tuples(st.just("device_add"), jid),
    st.tuples(st.just("device_delete"), jid),
    st.tuples(st.just("device_add"), jid),
    st.tuples(st.just("device_rename"), jid, jid),
    st.tuples(st.just("push_name"), jid, text),
    st.tuples(st.just("prekeys_gen"), jid, st.integers(0, 12), st.integers(1, 6)),
    st.tuples(st.just("prekeys_uploaded"), jid, st.integers(0, 12)),
    st.tuples(st.just("prekey_used"), jid, st.integers(0, 12)),
    st.tuples(st.just("session_put"), jid, peer, small_blob),
    st.tuples(st.just("session_delete"), jid, peer),
    st.tuples(st.just("identity_put"), jid, peer, key32),
    st.tuples(st.just("sender_key_put"), jid, st.sampled_from(["g1@g.us", "g2@g.us"]), peer, small_blob),
    st.tuples(
        st.just("app_state"), jid, st.sampled_from(NAMES), st.integers(0, 9), st.lists(mac32, max_size=3, unique=True)
    ),
    st.tuples(st.just("app_state_delete"), jid, st.sampled_from(NAMES)),
    st.tuples(st.just("sync_key_put"), jid, st.sampled_from([b"\x00k1", b"\x00k2"]), st.integers(0, 5)),
    st.tuples(st.just("lid_map_put"), st.sampled_from(["1@lid", "2@lid", "3@lid"]), st.sampled_from(["a", "b", "c"])),
    st.tuples(st.just("lid_map_put"), st.sampled_from(["1@lid", "2@lid", "3@lid"]), st.sampled_from(["a", "b", "c"])),
    st.tuples(st.just("contact_put"), jid, peer, text, text),
    st.tuples(st.just("chat_settings_put"), jid, peer, st.booleans()),
    st.tuples(st.just("privacy_token_put"), jid, peer, small_blob, st.integers(0, 3)),
    st.tuples(st.just("event_buffer"), jid, mac32, st.one_of(st.none(), small_blob)),
    st.tuples(st.just("drain"), st.integers(1, 15)),
    st.tuples(st.just("drain"), st.integers(1, 15)),
    st.tuples(st.just("ack")),
    st.tuples(st.just("snapshot"), st.booleans()),
    st.tuples(st.just("reinstall_triggers")),
)


def add_device(conn: sqlite3.Connection, jid: str) -> None:
    r = os.urandom
    conn.execute(
        "INSERT INTO whatsmeow_device (jid, registration_id, noise_key, identity_key, signed_pre_key,"
        " signed_pre_key_id, signed_pre_key_sig, adv_key, adv_details, adv_account_sig, adv_account_sig_key,"
        " adv_device_sig) VALUES (?, 1, ?, ?, ?, 1, ?, ?, x'0801', ?, ?, ?)",
        (jid, r(32), r(32), r(32), r(64), r(32), r(64), r(32), r(64)),
    )


# whatsmeow's sqlstore statements, reduced to what shapes the changes. Each op is one transaction.
STATEMENTS: dict[str, list[str]] = {
    "device_delete": ["DELETE FROM whatsmeow_device WHERE jid = ?1"],
    "device_rename": ["UPDATE whatsmeow_device SET jid = ?2 WHERE jid = ?1"],
    "push_name": ["UPDATE whatsmeow_device SET push_name = ?2 WHERE jid = ?1"],
    "prekeys_uploaded": ["UPDATE whatsmeow_pre_keys SET uploaded = true WHERE jid = ?1 AND key_id <= ?2"],
    "prekey_used": ["DELETE FROM whatsmeow_pre_keys WHERE jid = ?1 AND key_id = ?2"],
    "session_put": [
        "INSERT INTO whatsmeow_sessions (our_jid, their_id, session) VALUES (?1, ?2, ?3)"
        " ON CONFLICT (our_jid, their_id) DO UPDATE SET session = excluded.session"
    ],
    "session_delete": ["DELETE FROM whatsmeow_sessions WHERE our_jid = ?1 AND their_id = ?2"],
    "identity_put": [
        "INSERT INTO whatsmeow_identity_keys (our_jid, their_id, identity) VALUES (?1, ?2, ?3)"
        " ON CONFLICT (our_jid, their_id) DO UPDATE SET identity = excluded.identity"
    ],
    "sender_key_put": [
        "INSERT INTO whatsmeow_sender_keys (our_jid, chat_id, sender_id, sender_key) VALUES (?1, ?2, ?3, ?4)"
        " ON CONFLICT (our_jid, chat_id, sender_id) DO UPDATE SET sender_key = excluded.sender_key"
    ],
    "app_state_delete": ["DELETE FROM whatsmeow_app_state_version WHERE jid = ?1 AND name = ?2"],
    "sync_key_put": [
        "INSERT INTO whatsmeow_app_state_sync_keys (jid, key_id, key_data, timestamp, fingerprint)"
        " VALUES (?1, ?2, randomblob(8), ?3, x'0102') ON CONFLICT (jid, key_id) DO UPDATE SET"
        " key_data = excluded.key_data, timestamp = excluded.timestamp, fingerprint = excluded.fingerprint"
        " WHERE excluded.timestamp > whatsmeow_app_state_sync_keys.timestamp"
    ],
    "lid_map_put": ["INSERT OR REPLACE INTO whatsmeow_lid_map (lid, pn) VALUES (?1, ?2)"],
    "contact_put": [
        "INSERT INTO whatsmeow_contacts (our_jid, their_jid, first_name, full_name) VALUES (?1, ?2, ?3, ?4)"
        " ON CONFLICT (our_jid, their_jid) DO UPDATE SET first_name = excluded.first_name,"
        " full_name = excluded.full_name"
    ],
    "chat_settings_put": [
        "INSERT INTO whatsmeow_chat_settings (our_jid, chat_jid, pinned) VALUES (?1, ?2, ?3)"
        " ON CONFLICT (our_jid, chat_jid) DO UPDATE SET pinned = excluded.pinned"
    ],
    "privacy_token_put": [
        "INSERT INTO whatsmeow_privacy_tokens (our_jid, their_jid, token, timestamp) VALUES (?1, ?2, ?3, ?4)"
        " ON CONFLICT (our_jid, their_jid) DO UPDATE SET token = excluded.token, timestamp = excluded.timestamp"
    ],
    "event_buffer": [
        "DELETE FROM whatsmeow_event_buffer WHERE our_jid = ?1 AND plaintext IS NULL",
        "INSERT INTO whatsmeow_event_buffer (our_jid, ciphertext_hash, plaintext, server_timestamp,"
        " insert_timestamp) VALUES (?1, ?2, ?3, 1, 2) ON CONFLICT (our_jid, ciphertext_hash)"
        " DO UPDATE SET plaintext = excluded.plaintext",
    ],
}


def write(conn: sqlite3.Connection, op: tuple) -> None:
    """Run one workload op as its own transaction; ops the store's constraints refuse roll back."""
    name, *args = op
    conn.execute("BEGIN")
    try:
        if name == "device_add":
            add_device(conn, *args)
        elif name == "prekeys_gen":
            jid_, start, n = args
            for key_id in range(start, start + n):
                conn.execute("INSERT INTO whatsmeow_pre_keys VALUES (?, ?, randomblob(32), false)", (jid_, key_id))
        elif name == "app_state":
            jid_, coll, version, macs = args
            conn.execute(
                "INSERT INTO whatsmeow_app_state_version (jid, name, version, hash) VALUES (?, ?, ?, randomblob(128))"
                " ON CONFLICT (jid, name) DO UPDATE SET version = excluded.version, hash = excluded.hash",
                (jid_, coll, version),
            )
            for mac in macs:
                conn.execute(
                    "INSERT INTO whatsmeow_app_state_mutation_macs VALUES (?, ?, ?, ?, randomblob(32))",
                    (jid_, coll, version, mac),
                )
            conn.execute(
                "DELETE FROM whatsmeow_app_state_mutation_macs WHERE jid = ? AND name = ? AND version < ?",
                (jid_, coll, version - 2),
            )
        else:
            for sql in STATEMENTS[name]:
                conn.execute(sql, args[: max(int(n) for n in re.findall(r"\?(\d)", sql))])
        conn.execute("COMMIT")
    except sqlite3.IntegrityError:  # e.g. a session for a device that does not exist: whatsmeow never does it
        conn.execute("ROLLBACK")


@dataclass
class Run:
    source: Path
    replica: Path
    cache: Path
    worker: sqlite3.Connection
    supervisor: sqlite3.Connection
    replica_conn: sqlite3.Connection
    after: int = 0  # highest changelog seq drained so far
    snapshot: bytes | None = None  # the latest snapshot, as the vault would hold it
    deltas: list[bytes] = field(default_factory=list)  # payloads drained after that snapshot
    complete_drains: int = 0

    def drain(self, limit: int) -> bool:
        batch = capture.drain(self.supervisor, limit=limit, after_seq=self.after)
        if batch.empty:
            return False
        payload = capture.encode(batch.delta)
        restore.apply_delta(self.replica_conn, payload)
        self.deltas.append(payload)
        self.after = batch.upto_seq
        if not batch.more:  # everything committed so far is in: the replica must be exact now
            self.complete_drains += 1
            assert store.diff_tables(self.source, self.replica) == []
        return True

    def take_snapshot(self, skip_covered: bool) -> None:
        with snapshot.take_snapshot(self.source) as snap:
            self.snapshot = snap.read()
            covers = snap.covers_seq
        self.deltas = []
        capture.ack(self.supervisor, covers)  # the vault has the snapshot: its entries are redundant
        if skip_covered:
            self.after = max(self.after, covers)
        self.replica_conn.close()
        restore.rebuild_store(self.replica, [self.snapshot[:100], self.snapshot[100:]], [])
        self.replica_conn = store.connect(self.replica)

    def step(self, op: tuple) -> None:
        name = op[0]
        if name == "drain":
            self.drain(op[1])
        elif name == "ack":
            capture.ack(self.supervisor, self.after)
        elif name == "snapshot":
            self.take_snapshot(op[1])
        elif name == "reinstall_triggers":
            capture.install_triggers(self.supervisor)
        else:
            self.write_and_classify(op)

    def write_and_classify(self, op: tuple) -> None:
        """Write, and tell hypothesis which interesting cases the example really reached."""
        before = capture.pending(self.supervisor)
        if op[0] == "lid_map_put":
            clash = "SELECT 1 FROM whatsmeow_lid_map WHERE pn = ? AND lid != ?"
            if self.worker.execute(clash, (op[2], op[1])).fetchone():
                event("INSERT OR REPLACE removed a row conflicting on pn")
        write(self.worker, op)
        logged = capture.pending(self.supervisor) - before
        if op[0] in ("device_delete", "device_rename", "app_state_delete") and logged > 1:
            event(f"{op[0]} cascaded to children")


EXAMPLES = int(os.environ.get("SESSIONVAULT_HYPOTHESIS_EXAMPLES", "30"))


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=os.environ.get("SESSIONVAULT_HYPOTHESIS_RANDOM") != "1",
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(ops=st.lists(OPS, min_size=20, max_size=80), final_limit=st.integers(1, 50))
def test_snapshot_plus_deltas_reproduce_the_source(store_cache: Path, ops: list[tuple], final_limit: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        src = store.new_empty_store(Path(tmp) / "src" / store.STORE_FILE, store_cache)
        replica = restore.rebuild_store(Path(tmp) / "replica" / store.STORE_FILE, None, [], cache_dir=store_cache)
        supervisor = store.connect(src)
        capture.install_triggers(supervisor)
        run = Run(src, replica, store_cache, store.connect(src), supervisor, store.connect(replica))
        try:
            for op in [("device_add", j) for j in JIDS[:2]] + ops:  # whatsmeow writes nothing before pairing
                run.step(op)
            while run.drain(final_limit):
                pass
            assert store.diff_tables(src, replica) == []
            event(f"complete drains during the run: {min(run.complete_drains, 3)}")
            event(f"rows at the end: {'>20' if _row_count(src) > 20 else '<=20'}")
            base = None if run.snapshot is None else [run.snapshot]
            rebuilt = Path(tmp) / "rebuilt" / store.STORE_FILE
            restore.rebuild_store(rebuilt, base, run.deltas, cache_dir=store_cache)
            assert store.diff_tables(src, rebuilt) == []
        finally:
            run.worker.close()
            run.supervisor.close()
            run.replica_conn.close()


def _row_count(path: Path) -> int:
    return sum(len(rows) for rows in store.dump_tables(path).values())
