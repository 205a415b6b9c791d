"""whatsmeow-shaped store traffic without WhatsApp: a fake paired device and a change generator.

Used by the worker's ``simulated`` driver (benchmarks, failover tests) and by tests that need a
paired store offline. The SQL mirrors whatsmeow's ``store/sqlstore`` statements (same upserts,
same conflict clauses, same short transactions), so change capture sees what it would see in
production: upserts firing UPDATE triggers, cascades firing child DELETE triggers, and
``INSERT OR REPLACE`` on ``whatsmeow_lid_map`` removing a conflicting row without DELETE triggers.

Only ever use this with Python's sqlite3 in a process that has NOT loaded neonize (two SQLite
copies in one process corrupt the file).
"""

from __future__ import annotations

import random
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

SCHEMA_VERSION = 15
PREKEY_BATCH = 50  # whatsmeow's WantedPreKeyCount
PREKEY_MIN_UPLOADED = 5  # whatsmeow's MinPreKeyCount: refill below this
APP_STATE_NAMES = ("critical_block", "critical_unblock_low", "regular_high", "regular_low", "regular")


class StoreError(Exception):
    """The store is missing, not a whatsmeow store, or of an unsupported schema version."""


def open_store(path: str | Path, *, wal: bool = False) -> sqlite3.Connection:
    """Open an existing whatsmeow store the way whatsmeow does (foreign keys on, 5 s busy wait).

    Autocommit mode: every change below opens its own explicit transaction, as whatsmeow does.
    """
    p = Path(path)
    if not p.is_file():
        raise StoreError(f"store {p} does not exist (create it with neonize first)")
    conn = sqlite3.connect(p, timeout=5.0, isolation_level=None, check_same_thread=False)
    try:
        conn.execute("PRAGMA foreign_keys=ON")
        if wal:
            conn.execute("PRAGMA journal_mode=WAL")
        check_schema(conn)
    except (sqlite3.DatabaseError, StoreError):
        conn.close()
        raise
    return conn


def check_schema(conn: sqlite3.Connection) -> int:
    """Refuse stores that whatsmeow 0.5.2 could not open (it knows up to v15)."""
    try:
        row = conn.execute("SELECT version, compat FROM whatsmeow_version").fetchone()
    except sqlite3.OperationalError as e:
        raise StoreError(f"not a whatsmeow store: {e}") from e
    if row is None:
        raise StoreError("whatsmeow_version is empty")
    version, compat = row
    if compat > SCHEMA_VERSION:
        raise StoreError(f"unsupported store schema v{version} (compat {compat} > {SCHEMA_VERSION})")
    return int(version)


def device_jid(conn: sqlite3.Connection) -> str | None:
    """The first device's JID, as whatsmeow's GetFirstDevice would pick it (or None)."""
    row = conn.execute("SELECT jid FROM whatsmeow_device LIMIT 1").fetchone()
    return row[0] if row else None


# --- fake device ------------------------------------------------------------------------------
@dataclass(frozen=True)
class FakeDevice:
    jid: str
    lid: str
    push_name: str


def random_phone(rng: random.Random) -> str:
    """A number in the fictional 1-555-000 range, so nothing ever points at a real person."""
    return f"1555000{rng.randrange(10_000):04d}"


def fake_device(rng: random.Random, *, phone: str | None = None, device_id: int = 7) -> FakeDevice:
    phone = phone or random_phone(rng)
    lid_user = str(rng.randrange(10**14, 10**15))
    return FakeDevice(
        jid=f"{phone}:{device_id}@s.whatsapp.net",
        lid=f"{lid_user}:{device_id}@lid",
        push_name="Session Vault Sim",
    )


# whatsmeow's PutDevice (container.go) as of schema v15: all key columns, upsert on jid.
_PUT_DEVICE = """
INSERT INTO whatsmeow_device (jid, lid, registration_id, noise_key, identity_key,
    signed_pre_key, signed_pre_key_id, signed_pre_key_sig,
    adv_key, adv_details, adv_account_sig, adv_account_sig_key, adv_device_sig,
    platform, business_name, push_name, lid_migration_ts, facebook_uuid, companion_meta_nonce)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (jid) DO UPDATE
    SET lid=excluded.lid, platform=excluded.platform, business_name=excluded.business_name,
        push_name=excluded.push_name, lid_migration_ts=excluded.lid_migration_ts,
        facebook_uuid=excluded.facebook_uuid, companion_meta_nonce=excluded.companion_meta_nonce
"""


def write_fake_device(
    conn: sqlite3.Connection, rng: random.Random | None = None, device: FakeDevice | None = None
) -> FakeDevice:
    """Insert a paired-looking device row with random keys of the lengths whatsmeow checks.

    whatsmeow validates only lengths on load (no crypto), so neonize loads it and ``get_me()``
    returns its JID; nothing can actually log in with it.
    """
    rng = rng or random.Random()
    device = device or fake_device(rng)
    b = rng.randbytes
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(
            _PUT_DEVICE,
            (
                device.jid,
                device.lid,
                rng.randrange(2**32),
                b(32),  # noise_key
                b(32),  # identity_key
                b(32),  # signed_pre_key
                rng.randrange(1, 2**24),
                b(64),  # signed_pre_key_sig
                b(32),  # adv_key (the ADV secret)
                b"\x08\x01",  # adv_details: a minimal ADVDeviceIdentity protobuf
                b(64),  # adv_account_sig
                b(32),  # adv_account_sig_key
                b(64),  # adv_device_sig
                "",
                "",
                device.push_name,
                0,
                None,
                "",
            ),
        )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return device


def write_fake_device_file(path: str | Path, seed: int | None = None) -> FakeDevice:
    """Convenience for tests and tools: open the store at ``path`` and add a fake device."""
    conn = open_store(path)
    try:
        return write_fake_device(conn, random.Random(seed))
    finally:
        conn.close()


# --- traffic ----------------------------------------------------------------------------------
@dataclass
class _Peers:
    """What the generator remembers, so deletes and updates hit rows that exist."""

    sessions: list[str] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)
    event_hashes: list[bytes] = field(default_factory=list)
    retry_ids: list[tuple[str, str]] = field(default_factory=list)
    lids: list[tuple[str, str]] = field(default_factory=list)  # (lid user, pn user)
    macs: dict[str, list[tuple[int, bytes]]] = field(default_factory=dict)
    app_state_key_ids: list[bytes] = field(default_factory=list)


class Traffic:
    """Writes whatsmeow-shaped changes into a store, one short transaction per change.

    ``step()`` performs one change and returns the table it touched (the main one, for traces).
    The first len(KINDS) steps visit every kind once (so even a small --count covers all tables),
    then kinds are drawn with weights resembling a chatty account: ratchets dominate.
    """

    # (kind, weight); the method for each kind is ``_do_<kind>``.
    KINDS: tuple[tuple[str, int], ...] = (
        ("session", 30),
        ("identity", 5),
        ("prekey_consume", 8),
        ("sender_key", 10),
        ("app_state_sync_key", 2),
        ("app_state_patch", 6),
        ("contact", 8),
        ("chat_setting", 4),
        ("message_secret", 5),
        ("lid_map", 4),
        ("event_buffer", 6),
        ("retry_buffer", 4),
        ("privacy_token", 2),
        ("nct_salt", 1),
        ("session_delete", 1),
        ("device_update", 1),
    )

    def __init__(self, conn: sqlite3.Connection, jid: str, rng: random.Random) -> None:
        self.conn = conn
        self.jid = jid
        self.rng = rng
        self.peers = _Peers()
        self._warmup = [k for k, _ in self.KINDS]
        rng.shuffle(self._warmup)
        self._kinds = [k for k, _ in self.KINDS]
        self._weights = [w for _, w in self.KINDS]
        self._load_peers()

    # -- plumbing --
    def _txn(self, fn: Callable[[sqlite3.Connection], None]) -> None:
        """One whatsmeow-style transaction: BEGIN IMMEDIATE (take the write lock up front, as
        Go's single-writer pool effectively does), run, COMMIT; roll back on any error."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            fn(self.conn)
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise

    def _load_peers(self) -> None:
        c = self.conn
        self.peers.sessions = [
            r[0] for r in c.execute("SELECT their_id FROM whatsmeow_sessions WHERE our_jid=?", (self.jid,))
        ]
        self.peers.groups = [
            r[0] for r in c.execute("SELECT DISTINCT chat_id FROM whatsmeow_sender_keys WHERE our_jid=?", (self.jid,))
        ]
        self.peers.lids = [tuple(r) for r in c.execute("SELECT lid, pn FROM whatsmeow_lid_map")]

    def _peer_user(self) -> str:
        return random_phone(self.rng)

    def _peer_address(self) -> str:
        """A Signal address as whatsmeow stores it: "<user>:<device>" (PN) or LID-based."""
        if self.peers.sessions and self.rng.random() < 0.8:
            return self.rng.choice(self.peers.sessions)
        user = self._peer_user() if self.rng.random() < 0.5 else str(self.rng.randrange(10**14, 10**15))
        suffix = "" if user.startswith("1555") else "_1"  # LID addresses carry the agent suffix
        return f"{user}{suffix}.{self.rng.choice((0, 0, 0, 1, 7))}"

    def _chat_jid(self) -> str:
        if self.rng.random() < 0.3:
            return f"1203630{self.rng.randrange(10**11):011d}@g.us"
        return f"{self._peer_user()}@s.whatsapp.net"

    # -- public --
    def next_kind(self) -> str:
        if self._warmup:
            return self._warmup.pop()
        return self.rng.choices(self._kinds, self._weights)[0]

    def step(self) -> str:
        """Write one change; return the main table it touched."""
        kind = self.next_kind()
        return getattr(self, f"_do_{kind}")()

    def uploaded_prekeys(self) -> int:
        row = self.conn.execute(
            "SELECT COUNT(*) FROM whatsmeow_pre_keys WHERE jid=? AND uploaded=true", (self.jid,)
        ).fetchone()
        return int(row[0])

    def needs_prekey_refill(self) -> bool:
        return self.uploaded_prekeys() < PREKEY_MIN_UPLOADED

    def generate_prekeys(self) -> str:
        """GetOrGenPreKeys(50): insert not-yet-uploaded keys in one transaction."""

        def run(c: sqlite3.Connection) -> None:
            have = c.execute(
                "SELECT COUNT(*) FROM whatsmeow_pre_keys WHERE jid=? AND uploaded=false", (self.jid,)
            ).fetchone()[0]
            (last,) = c.execute("SELECT MAX(key_id) FROM whatsmeow_pre_keys WHERE jid=?", (self.jid,)).fetchone()
            next_id = (last or 0) + 1
            rows = [(self.jid, next_id + i, self.rng.randbytes(32), False) for i in range(PREKEY_BATCH - have)]
            c.executemany("INSERT INTO whatsmeow_pre_keys (jid, key_id, key, uploaded) VALUES (?, ?, ?, ?)", rows)

        self._txn(run)
        return "whatsmeow_pre_keys"

    def mark_prekeys_uploaded(self) -> str:
        """MarkPreKeysAsUploaded(upToID) after the (here imaginary) upload to the server."""

        def run(c: sqlite3.Connection) -> None:
            (last,) = c.execute("SELECT MAX(key_id) FROM whatsmeow_pre_keys WHERE jid=?", (self.jid,)).fetchone()
            c.execute("UPDATE whatsmeow_pre_keys SET uploaded=true WHERE jid=? AND key_id<=?", (self.jid, last or 0))

        self._txn(run)
        return "whatsmeow_pre_keys"

    def logout(self) -> str:
        """whatsmeow's Store.Delete on LoggedOut: one DELETE that cascades to every child table."""
        self._txn(lambda c: c.execute("DELETE FROM whatsmeow_device WHERE jid=?", (self.jid,)))
        return "whatsmeow_device"

    # -- kinds (each one transaction, the statements are whatsmeow's) --
    def _do_session(self) -> str:
        addr = self._peer_address()
        blob = self.rng.randbytes(self.rng.randrange(300, 2048))  # serialized SessionRecord
        self._txn(
            lambda c: c.execute(
                "INSERT INTO whatsmeow_sessions (our_jid, their_id, session) VALUES (?, ?, ?) "
                "ON CONFLICT (our_jid, their_id) DO UPDATE SET session=excluded.session",
                (self.jid, addr, blob),
            )
        )
        if addr not in self.peers.sessions:
            self.peers.sessions.append(addr)
        return "whatsmeow_sessions"

    def _do_session_delete(self) -> str:
        if not self.peers.sessions:
            return self._do_session()
        addr = self.peers.sessions.pop(self.rng.randrange(len(self.peers.sessions)))

        def run(c: sqlite3.Connection) -> None:
            c.execute("DELETE FROM whatsmeow_sessions WHERE our_jid=? AND their_id=?", (self.jid, addr))
            c.execute("DELETE FROM whatsmeow_identity_keys WHERE our_jid=? AND their_id=?", (self.jid, addr))

        self._txn(run)
        return "whatsmeow_sessions"

    def _do_identity(self) -> str:
        addr = self._peer_address()
        self._txn(
            lambda c: c.execute(
                "INSERT INTO whatsmeow_identity_keys (our_jid, their_id, identity) VALUES (?, ?, ?) "
                "ON CONFLICT (our_jid, their_id) DO UPDATE SET identity=excluded.identity",
                (self.jid, addr, self.rng.randbytes(32)),
            )
        )
        return "whatsmeow_identity_keys"

    def _do_prekey_consume(self) -> str:
        """A peer started a session with one of our one-time pre-keys: RemovePreKey."""
        row = self.conn.execute(
            "SELECT key_id FROM whatsmeow_pre_keys WHERE jid=? AND uploaded=true ORDER BY random() LIMIT 1",
            (self.jid,),
        ).fetchone()
        if row is None:
            return self._do_session()  # none left: the refill logic in the driver takes care of it
        self._txn(lambda c: c.execute("DELETE FROM whatsmeow_pre_keys WHERE jid=? AND key_id=?", (self.jid, row[0])))
        return "whatsmeow_pre_keys"

    def _do_sender_key(self) -> str:
        if not self.peers.groups or self.rng.random() < 0.2:
            self.peers.groups.append(f"1203630{self.rng.randrange(10**11):011d}@g.us")
        group = self.rng.choice(self.peers.groups)
        self._txn(
            lambda c: c.execute(
                "INSERT INTO whatsmeow_sender_keys (our_jid, chat_id, sender_id, sender_key) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (our_jid, chat_id, sender_id) DO UPDATE SET sender_key=excluded.sender_key",
                (self.jid, group, self._peer_address(), self.rng.randbytes(self.rng.randrange(150, 600))),
            )
        )
        return "whatsmeow_sender_keys"

    def _do_app_state_sync_key(self) -> str:
        if not self.peers.app_state_key_ids or self.rng.random() < 0.5:
            self.peers.app_state_key_ids.append(self.rng.randbytes(6))
        key_id = self.rng.choice(self.peers.app_state_key_ids)
        self._txn(
            lambda c: c.execute(
                "INSERT INTO whatsmeow_app_state_sync_keys (jid, key_id, key_data, timestamp, fingerprint) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (jid, key_id) DO UPDATE "
                "SET key_data=excluded.key_data, timestamp=excluded.timestamp, fingerprint=excluded.fingerprint "
                "WHERE excluded.timestamp > whatsmeow_app_state_sync_keys.timestamp",
                (self.jid, key_id, self.rng.randbytes(32), time.time_ns() // 1_000_000, self.rng.randbytes(20)),
            )
        )
        return "whatsmeow_app_state_sync_keys"

    def _do_app_state_patch(self) -> str:
        """An app-state patch: bump the collection version + hash, add MACs, drop overwritten ones."""
        name = self.rng.choice(APP_STATE_NAMES)
        macs = self.peers.macs.setdefault(name, [])
        row = self.conn.execute(
            "SELECT version FROM whatsmeow_app_state_version WHERE jid=? AND name=?", (self.jid, name)
        ).fetchone()
        version = (row[0] if row else 0) + 1
        new = [(version, self.rng.randbytes(32)) for _ in range(self.rng.randrange(1, 4))]
        gone = [macs.pop(self.rng.randrange(len(macs)))[1] for _ in range(min(len(macs), self.rng.randrange(0, 2)))]

        def run(c: sqlite3.Connection) -> None:
            c.execute(
                "INSERT INTO whatsmeow_app_state_version (jid, name, version, hash) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (jid, name) DO UPDATE SET version=excluded.version, hash=excluded.hash",
                (self.jid, name, version, self.rng.randbytes(128)),
            )
            c.executemany(
                "INSERT INTO whatsmeow_app_state_mutation_macs (jid, name, version, index_mac, value_mac) "
                "VALUES (?, ?, ?, ?, ?)",
                [(self.jid, name, v, idx, self.rng.randbytes(32)) for v, idx in new],
            )
            if gone:
                marks = ",".join("?" * len(gone))
                c.execute(
                    f"DELETE FROM whatsmeow_app_state_mutation_macs WHERE jid=? AND name=? AND index_mac IN ({marks})",
                    (self.jid, name, *gone),
                )

        self._txn(run)
        macs.extend(new)
        return "whatsmeow_app_state_version"

    def _do_contact(self) -> str:
        their = f"{self._peer_user()}@s.whatsapp.net"
        column, value = self.rng.choice(
            (
                ("push_name", f"Push {self.rng.randrange(1000)}"),
                ("business_name", f"Biz {self.rng.randrange(1000)}"),
                ("redacted_phone", f"+1 555-***-{self.rng.randrange(10_000):04d}"),
                ("names", None),
            )
        )
        if column == "names":
            sql = (
                "INSERT INTO whatsmeow_contacts (our_jid, their_jid, first_name, full_name) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (our_jid, their_jid) DO UPDATE SET first_name=excluded.first_name, "
                "full_name=excluded.full_name"
            )
            params: tuple[object, ...] = (self.jid, their, "Ada", f"Ada Sim {self.rng.randrange(1000)}")
        else:
            sql = (
                f"INSERT INTO whatsmeow_contacts (our_jid, their_jid, {column}) VALUES (?, ?, ?) "
                f"ON CONFLICT (our_jid, their_jid) DO UPDATE SET {column}=excluded.{column}"
            )
            params = (self.jid, their, value)
        self._txn(lambda c: c.execute(sql, params))
        return "whatsmeow_contacts"

    def _do_chat_setting(self) -> str:
        column, value = self.rng.choice(
            (("muted_until", self.rng.choice((-1, 0, int(time.time()) + 3600))), ("pinned", True), ("archived", True))
        )
        self._txn(
            lambda c: c.execute(
                f"INSERT INTO whatsmeow_chat_settings (our_jid, chat_jid, {column}) VALUES (?, ?, ?) "
                f"ON CONFLICT (our_jid, chat_jid) DO UPDATE SET {column}=excluded.{column}",
                (self.jid, self._chat_jid(), value),
            )
        )
        return "whatsmeow_chat_settings"

    def _do_message_secret(self) -> str:
        self._txn(
            lambda c: c.execute(
                "INSERT INTO whatsmeow_message_secrets (our_jid, chat_jid, sender_jid, message_id, key) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (our_jid, chat_jid, sender_jid, message_id) DO NOTHING",
                (
                    self.jid,
                    self._chat_jid(),
                    f"{self._peer_user()}@s.whatsapp.net",
                    self._msg_id(),
                    self.rng.randbytes(32),
                ),
            )
        )
        return "whatsmeow_message_secrets"

    def _msg_id(self) -> str:
        return "3EB0" + self.rng.randbytes(8).hex().upper()

    def _do_lid_map(self) -> str:
        """LID<->PN mapping. Half the time INSERT OR REPLACE (silently drops a row conflicting on
        lid OR on the UNIQUE pn, no DELETE trigger), half whatsmeow's current DELETE + upsert.
        Often re-points an existing pn to a new lid, the case that matters for capture."""
        if self.peers.lids and self.rng.random() < 0.4:
            _, pn = self.rng.choice(self.peers.lids)  # same phone, new LID
        else:
            pn = self._peer_user()
        lid = str(self.rng.randrange(10**14, 10**15))
        if self.rng.random() < 0.5:
            self._txn(
                lambda c: c.execute("INSERT OR REPLACE INTO whatsmeow_lid_map (lid, pn) VALUES (?, ?)", (lid, pn))
            )
        else:

            def run(c: sqlite3.Connection) -> None:
                c.execute("DELETE FROM whatsmeow_lid_map WHERE (lid<>? AND pn=?)", (lid, pn))
                c.execute(
                    "INSERT INTO whatsmeow_lid_map (lid, pn) VALUES (?, ?) "
                    "ON CONFLICT (lid) DO UPDATE SET pn=excluded.pn WHERE whatsmeow_lid_map.pn<>excluded.pn",
                    (lid, pn),
                )

            self._txn(run)
        self.peers.lids = [(lv, p) for lv, p in self.peers.lids if p != pn and lv != lid] + [(lid, pn)]
        return "whatsmeow_lid_map"

    def _do_event_buffer(self) -> str:
        """Decryption buffer: insert plaintext, later clear it, occasionally prune old rows."""
        hashes = self.peers.event_hashes
        roll = self.rng.random()
        if hashes and roll < 0.35:
            h = hashes.pop(0)
            self._txn(
                lambda c: c.execute(
                    "UPDATE whatsmeow_event_buffer SET plaintext = NULL WHERE our_jid = ? AND ciphertext_hash = ?",
                    (self.jid, h),
                )
            )
        elif roll < 0.4:
            cutoff = time.time_ns() // 1_000_000 - 60_000  # whatsmeow uses 14 days; a minute keeps it moving
            self._txn(lambda c: c.execute("DELETE FROM whatsmeow_event_buffer WHERE insert_timestamp < ?", (cutoff,)))
        else:
            h = self.rng.randbytes(32)
            now = time.time()
            self._txn(
                lambda c: c.execute(
                    "INSERT INTO whatsmeow_event_buffer (our_jid, ciphertext_hash, plaintext, server_timestamp, "
                    "insert_timestamp) VALUES (?, ?, ?, ?, ?)",
                    (self.jid, h, self._plaintext(), int(now), int(now * 1000)),
                )
            )
            hashes.append(h)
        return "whatsmeow_event_buffer"

    def _plaintext(self) -> bytes:
        # Looks like a serialized message: this is exactly the data that must be encrypted.
        return b"\n\x1b" + f"sim message {self.rng.randrange(10**6)} hello".encode() + self.rng.randbytes(16)

    def _do_retry_buffer(self) -> str:
        if self.peers.retry_ids and self.rng.random() < 0.2:
            cutoff = time.time_ns() // 1_000_000 - 60_000
            self._txn(
                lambda c: c.execute(
                    "DELETE FROM whatsmeow_retry_buffer WHERE our_jid=? AND timestamp < ?", (self.jid, cutoff)
                )
            )
            return "whatsmeow_retry_buffer"
        key = (self._chat_jid(), self._msg_id())
        self._txn(
            lambda c: c.execute(
                "INSERT INTO whatsmeow_retry_buffer (our_jid, chat_jid, message_id, format, plaintext, timestamp) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (our_jid, chat_jid, message_id) DO UPDATE "
                "SET format=excluded.format, plaintext=excluded.plaintext, timestamp=excluded.timestamp",
                (self.jid, *key, "message", self._plaintext(), time.time_ns() // 1_000_000),
            )
        )
        self.peers.retry_ids.append(key)
        return "whatsmeow_retry_buffer"

    def _do_privacy_token(self) -> str:
        now = int(time.time())
        self._txn(
            lambda c: c.execute(
                "INSERT INTO whatsmeow_privacy_tokens (our_jid, their_jid, token, timestamp, sender_timestamp) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (our_jid, their_jid) DO UPDATE SET token=excluded.token, "
                "timestamp=excluded.timestamp, "
                "sender_timestamp=COALESCE(excluded.sender_timestamp, whatsmeow_privacy_tokens.sender_timestamp) "
                "WHERE excluded.timestamp >= whatsmeow_privacy_tokens.timestamp",
                (self.jid, f"{self._peer_user()}@s.whatsapp.net", self.rng.randbytes(24), now, None),
            )
        )
        return "whatsmeow_privacy_tokens"

    def _do_nct_salt(self) -> str:
        self._txn(
            lambda c: c.execute(
                "INSERT INTO whatsmeow_nct_salt (our_jid, salt) VALUES (?, ?) "
                "ON CONFLICT (our_jid) DO UPDATE SET salt=excluded.salt",
                (self.jid, self.rng.randbytes(32)),
            )
        )
        return "whatsmeow_nct_salt"

    def _do_device_update(self) -> str:
        """Push-name change: the PutDevice upsert touches only the mutable columns."""
        self._txn(
            lambda c: c.execute(
                "UPDATE whatsmeow_device SET push_name=? WHERE jid=?", (f"Sim {self.rng.randrange(1000)}", self.jid)
            )
        )
        return "whatsmeow_device"

    # -- bulk pre-population for benchmarks --
    def populate(self, rows: int, batch: int = 2000) -> int:
        """Grow the store to about ``rows`` sessions and ``rows`` contacts (plus half as many
        identity keys and sender keys), in large transactions. Idempotent: counts what is
        there first, so a restarted worker does not double the store. Returns rows written."""
        (have,) = self.conn.execute("SELECT COUNT(*) FROM whatsmeow_sessions WHERE our_jid=?", (self.jid,)).fetchone()
        missing = max(0, rows - have)
        written = 0
        for start in range(0, missing, batch):
            n = min(batch, missing - start)
            written += self._populate_batch(have + start, n)
        self._load_peers()
        return written

    def _populate_batch(self, offset: int, n: int) -> int:
        r = self.rng
        users = [f"1555{(offset + i) % 10**7:07d}" for i in range(n)]

        def run(c: sqlite3.Connection) -> None:
            c.executemany(
                "INSERT OR IGNORE INTO whatsmeow_sessions (our_jid, their_id, session) VALUES (?, ?, ?)",
                [(self.jid, f"{u}.0", r.randbytes(r.randrange(300, 2048))) for u in users],
            )
            c.executemany(
                "INSERT OR IGNORE INTO whatsmeow_contacts (our_jid, their_jid, first_name, full_name, push_name) "
                "VALUES (?, ?, ?, ?, ?)",
                [(self.jid, f"{u}@s.whatsapp.net", "Sim", f"Sim {u}", f"push {u}") for u in users],
            )
            c.executemany(
                "INSERT OR IGNORE INTO whatsmeow_identity_keys (our_jid, their_id, identity) VALUES (?, ?, ?)",
                [(self.jid, f"{u}.0", r.randbytes(32)) for u in users[::2]],
            )
            c.executemany(
                "INSERT OR IGNORE INTO whatsmeow_sender_keys (our_jid, chat_id, sender_id, sender_key) "
                "VALUES (?, ?, ?, ?)",
                [
                    (self.jid, f"1203630{i % 97:011d}@g.us", f"{u}.0", r.randbytes(300))
                    for i, u in enumerate(users[::2])
                ],
            )

        self._txn(run)
        return 2 * n + 2 * len(users[::2])
