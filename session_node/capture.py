"""Change capture on a live whatsmeow store: triggers, changelog, drained deltas, delta payloads.

whatsmeow has no "credentials changed" event, so changes are recorded by SQLite triggers that the
supervisor installs before the worker starts. The triggers run inside whatsmeow's own transactions and
record only *which* row changed (table + primary key); ``drain`` later reads the row's *current* value.
That keeps the triggers cheap and makes repeated changes of one row (a Signal ratchet moves on every
message) collapse into one upsert.

Changelog (node-private, never shipped; stripped from snapshots)::

    sessionvault_changelog(seq INTEGER PRIMARY KEY AUTOINCREMENT, tbl TEXT NOT NULL, k1, k2, k3, k4, ...)

``k1..kN`` hold the primary-key values in primary-key order, untyped so TEXT/BLOB/INTEGER keys keep their
storage class (json_array would turn BLOB keys into text). N is the widest primary key (4 today) and
grows by ``ALTER TABLE ADD COLUMN`` if a future table needs more. AUTOINCREMENT because acks delete
every row up to a seq: plain rowids would then be reused and a pipelined ``after_seq`` would skip rows.
Sequence numbers are local to one store file: a rebuilt store starts again at 1.

Delta payload (what travels to the vault as a RECORD_KIND_DELTA record, which encrypts it)::

    byte 0 = 0x00  ->  bytes 1.. are a serialized sessionvault.v1.StoreDelta
    byte 0 = 0x01  ->  bytes 1.. are one zstd frame (content size + checksum) of that serialization

Only deltas of at least COMPRESS_MIN bytes that actually shrink are compressed.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, field

import zstandard
from sessionvault.v1 import store_delta_pb2

from session_node.store import (
    PRIVATE_PREFIX,
    StoreError,
    TableInfo,
    load_schema,
    quote,
    schema_version,
)

CHANGELOG = f"{PRIVATE_PREFIX}changelog"
_TRIGGER_PREFIX = f"{PRIVATE_PREFIX}trg_"
_MIN_KEY_COLUMNS = 4

# Tables whose loss or staleness breaks decryption or the login ("freshness is correctness"): ship
# within ~1 s. Listed for documentation; what matters is COLD_TABLES below.
HOT_TABLES = frozenset(
    {
        "whatsmeow_device",
        "whatsmeow_identity_keys",
        "whatsmeow_pre_keys",
        "whatsmeow_sessions",
        "whatsmeow_sender_keys",
        "whatsmeow_app_state_sync_keys",
        "whatsmeow_app_state_version",
    }
)
# Caches and buffers that can be batched. A table in neither set (a future whatsmeow table) counts as
# hot: it is safer to ship an unknown table too early than to lose keys kept in it.
COLD_TABLES = frozenset(
    {
        "whatsmeow_app_state_mutation_macs",  # written in the same transactions as app_state_version
        "whatsmeow_contacts",
        "whatsmeow_chat_settings",
        "whatsmeow_message_secrets",
        "whatsmeow_privacy_tokens",
        "whatsmeow_nct_salt",
        "whatsmeow_lid_map",
        "whatsmeow_event_buffer",
        "whatsmeow_retry_buffer",
    }
)

DEFAULT_DRAIN_LIMIT = 10_000

PAYLOAD_RAW = 0x00
PAYLOAD_ZSTD = 0x01
COMPRESS_MIN = 512
# A decoded delta larger than this is refused (a corrupt or hostile length field, not a real delta).
MAX_DELTA_BYTES = 256 * 1024 * 1024

Key = tuple[object, ...]


def is_hot(table: str) -> bool:
    """Whether changes of ``table`` should be shipped at once rather than batched."""
    return table not in COLD_TABLES


# --------------------------------------------------------------------------------------------- triggers


def install_triggers(conn: sqlite3.Connection) -> list[str]:
    """Create the changelog and AFTER INSERT/UPDATE/DELETE triggers on every whatsmeow data table.

    Idempotent and self-healing: triggers whose SQL differs from what this code would create (missing
    after a table rebuild, a changed primary key, a new table) are (re)created, stale ones of this
    node dropped. Must run before the worker opens the store: the changelog has to exist before any
    trigger writes to it, or every whatsmeow write would fail. Returns the captured tables.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        schema = load_schema(conn)
        width = max([_MIN_KEY_COLUMNS, *(len(t.pk) for t in schema.values())])
        _ensure_changelog(conn, width)
        wanted = {name: sql for t in schema.values() for name, sql in _trigger_sql(t)}
        existing = dict(
            conn.execute(
                "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND substr(name, 1, ?) = ?",
                (len(_TRIGGER_PREFIX), _TRIGGER_PREFIX),
            ).fetchall()
        )
        for name, sql in existing.items():
            if wanted.get(name) != sql:
                conn.execute(f"DROP TRIGGER {quote(name)}")
        for name, sql in wanted.items():
            if existing.get(name) != sql:
                conn.execute(sql)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return list(schema)


def _ensure_changelog(conn: sqlite3.Connection, width: int) -> None:
    keys = ", ".join(f"k{i}" for i in range(1, width + 1))
    conn.execute(
        f"CREATE TABLE IF NOT EXISTS {CHANGELOG} (seq INTEGER PRIMARY KEY AUTOINCREMENT, tbl TEXT NOT NULL, {keys})"
    )
    have = len(_key_columns(conn))
    for i in range(have + 1, width + 1):  # a future table with a wider primary key
        conn.execute(f"ALTER TABLE {CHANGELOG} ADD COLUMN k{i}")


def _key_columns(conn: sqlite3.Connection) -> list[str]:
    cols = [r[1] for r in conn.execute(f"PRAGMA table_info({CHANGELOG})")]
    return [c for c in cols if c.startswith("k") and c[1:].isdigit()]


def _trigger_sql(t: TableInfo) -> list[tuple[str, str]]:
    """(name, CREATE TRIGGER statement) for the three triggers of one table."""
    table_lit = "'" + t.name.replace("'", "''") + "'"
    keys = ", ".join(f"k{i}" for i in range(1, len(t.pk) + 1))
    target = f"INSERT INTO {CHANGELOG} (tbl, {keys})"

    def values(row: str) -> str:
        return ", ".join(f"{row}.{quote(c)}" for c in t.pk)

    pk_changed = " OR ".join(f"OLD.{quote(c)} IS NOT NEW.{quote(c)}" for c in t.pk)
    on = f"ON {quote(t.name)} FOR EACH ROW BEGIN"
    base = f"{_TRIGGER_PREFIX}{t.name}"
    return [
        (
            f"{base}_ins",
            f"CREATE TRIGGER {quote(base + '_ins')} AFTER INSERT {on} "
            f"{target} VALUES ({table_lit}, {values('NEW')}); END",
        ),
        (
            f"{base}_upd",
            # Both keys when an UPDATE moves a row (ON UPDATE CASCADE does): the old one is now a tombstone.
            f"CREATE TRIGGER {quote(base + '_upd')} AFTER UPDATE {on} "
            f"{target} SELECT {table_lit}, {values('OLD')} WHERE {pk_changed}; "
            f"{target} VALUES ({table_lit}, {values('NEW')}); END",
        ),
        (
            f"{base}_del",
            f"CREATE TRIGGER {quote(base + '_del')} AFTER DELETE {on} "
            f"{target} VALUES ({table_lit}, {values('OLD')}); END",
        ),
    ]


def triggers_installed(conn: sqlite3.Connection) -> bool:
    """Whether every data table has exactly the triggers install_triggers would create."""
    schema = load_schema(conn)
    wanted = {name: sql for t in schema.values() for name, sql in _trigger_sql(t)}
    rows = conn.execute(
        "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND substr(name, 1, ?) = ?",
        (len(_TRIGGER_PREFIX), _TRIGGER_PREFIX),
    ).fetchall()
    has_log = conn.execute("SELECT 1 FROM sqlite_master WHERE name = ?", (CHANGELOG,)).fetchone()
    return has_log is not None and dict(rows) == wanted


def data_version(conn: sqlite3.Connection) -> int:
    """``PRAGMA data_version``: changes when another connection (the worker) commits.

    Only meaningful on one long-lived connection, compared with its own previous value: the cheap
    "something changed, drain now" signal that needs no file-system polling.
    """
    return int(conn.execute("PRAGMA data_version").fetchone()[0])


def pending(conn: sqlite3.Connection, after_seq: int = 0) -> int:
    """Number of changelog rows after ``after_seq`` (not yet drained/acked)."""
    return int(conn.execute(f"SELECT count(*) FROM {CHANGELOG} WHERE seq > ?", (after_seq,)).fetchone()[0])


def ack(conn: sqlite3.Connection, upto_seq: int) -> int:
    """Forget changelog rows up to ``upto_seq``; call only after the vault acked the delta holding them."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        n = conn.execute(f"DELETE FROM {CHANGELOG} WHERE seq <= ?", (upto_seq,)).rowcount
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return n


# ------------------------------------------------------------------------------------------------ drain


@dataclass
class Batch:
    """One drained delta and the changelog range it covers."""

    delta: store_delta_pb2.StoreDelta
    upto_seq: int  # highest changelog seq included: ack(conn, upto_seq) once the vault has it
    entries: int  # changelog rows consumed (before de-duplication)
    tables: frozenset[str] = field(default_factory=frozenset)
    more: bool = False  # the limit cut the changelog: drain again (after_seq=upto_seq)

    @property
    def empty(self) -> bool:
        return self.entries == 0

    @property
    def hot(self) -> bool:
        """Touches a table whose changes must reach the vault within ~1 s."""
        return any(is_hot(t) for t in self.tables)


def drain(conn: sqlite3.Connection, limit: int = DEFAULT_DRAIN_LIMIT, after_seq: int = 0) -> Batch:
    """Build a delta from up to ``limit`` changelog rows after ``after_seq``, without deleting them.

    One read transaction, so the rows read are one committed state of the store. Each changed primary
    key becomes one change: an upsert with all current columns if the row exists now, else a
    tombstone. Tombstones come first (children before parents), then upserts parents first, so the
    delta applies with foreign keys enforced. The changelog is left alone: ``ack`` after the vault acked.
    """
    if limit <= 0:
        raise ValueError("limit must be positive")
    conn.execute("BEGIN")
    try:
        batch = _drain_locked(conn, limit, after_seq)
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")  # read-only transaction: this just releases the shared lock
    return batch


def _drain_locked(conn: sqlite3.Connection, limit: int, after_seq: int) -> Batch:
    if conn.execute("SELECT 1 FROM sqlite_master WHERE name = ?", (CHANGELOG,)).fetchone() is None:
        raise StoreError("no changelog in this store: install_triggers() before starting the worker")
    schema = load_schema(conn)
    keys = ", ".join(_key_columns(conn))
    rows = conn.execute(
        f"SELECT seq, tbl, {keys} FROM {CHANGELOG} WHERE seq > ? ORDER BY seq LIMIT ?", (after_seq, limit)
    ).fetchall()
    delta = store_delta_pb2.StoreDelta(schema_version=schema_version(conn) or 0)
    if not rows:
        return Batch(delta=delta, upto_seq=after_seq, entries=0)
    upto = rows[-1][0]
    changed: dict[tuple[str, Key], None] = {}  # an ordered set: one entry per changed row
    for _seq, tbl, *k in rows:
        info = schema.get(tbl)
        if info is not None:  # a dropped table: its loss is a schema change, shipped as a snapshot
            changed[(tbl, tuple(k[: len(info.pk)]))] = None
    more = conn.execute(f"SELECT 1 FROM {CHANGELOG} WHERE seq > ? LIMIT 1", (upto,)).fetchone() is not None
    upserts, tombstones = _read_current(conn, schema, changed)
    if more:
        _add_parents(conn, schema, upserts)
    _emit(delta, schema, upserts, tombstones)
    return Batch(delta=delta, upto_seq=upto, entries=len(rows), tables=frozenset(t for t, _ in changed), more=more)


def _select_by_key(info: TableInfo) -> str:
    where = " AND ".join(f"{quote(c)} IS ?" for c in info.pk)  # IS: a NULL key part must match too
    cols = ", ".join(quote(c) for c in info.columns)
    return f"SELECT {cols} FROM {quote(info.name)} WHERE {where}"


def _read_current(
    conn: sqlite3.Connection, schema: dict[str, TableInfo], changed: dict[tuple[str, Key], None]
) -> tuple[dict[tuple[str, Key], tuple[object, ...]], set[tuple[str, Key]]]:
    upserts: dict[tuple[str, Key], tuple[object, ...]] = {}
    tombstones: set[tuple[str, Key]] = set()
    for tbl, key in changed:
        info = schema[tbl]
        row = conn.execute(_select_by_key(info), key).fetchone()
        if row is None:
            tombstones.add((tbl, key))
        else:
            upserts[(tbl, _row_key(info, row))] = tuple(row)
    return upserts, tombstones


def _row_key(info: TableInfo, row: Iterable[object]) -> Key:
    values = dict(zip(info.columns, row, strict=True))
    return tuple(values[c] for c in info.pk)


def _add_parents(
    conn: sqlite3.Connection, schema: dict[str, TableInfo], upserts: dict[tuple[str, Key], tuple[object, ...]]
) -> None:
    """Also ship the current parent row of every upserted child when the limit cut the changelog.

    After a cut, rows changed beyond the cut keep their older state on the restore side. A parent
    deleted before the cut and re-created after it would then be missing under a child re-created in
    this batch, and the delta would violate the foreign key. Re-sending current parents (a device row,
    an app-state version) is harmless and closes that gap; uncut drains never need it.
    """
    todo = list(upserts)
    while todo:
        tbl, key = todo.pop()
        info = schema[tbl]
        values = dict(zip(info.columns, upserts[(tbl, key)], strict=True))
        for fk in info.foreign_keys:
            parent = schema.get(fk.parent)
            fk_values = tuple(values[c] for c in fk.columns)
            if parent is None or None in fk_values:
                continue
            where = " AND ".join(f"{quote(c)} = ?" for c in fk.parent_columns)
            cols = ", ".join(quote(c) for c in parent.columns)
            row = conn.execute(f"SELECT {cols} FROM {quote(parent.name)} WHERE {where}", fk_values).fetchone()
            if row is None:
                continue
            pkey = (parent.name, _row_key(parent, row))
            if pkey not in upserts:
                upserts[pkey] = tuple(row)
                todo.append(pkey)


def _emit(
    delta: store_delta_pb2.StoreDelta,
    schema: dict[str, TableInfo],
    upserts: dict[tuple[str, Key], tuple[object, ...]],
    tombstones: set[tuple[str, Key]],
) -> None:
    order = {name: i for i, name in enumerate(schema)}
    # Children's tombstones before their parents', although a parent's cascade would remove them anyway.
    for tbl, key in sorted(tombstones, key=lambda tk: (-order[tk[0]], _sort_key(tk[1]))):
        delta.changes.append(store_delta_pb2.RowChange(table=tbl, key=[to_sql_value(v) for v in key], deleted=True))
    for (tbl, key), row in sorted(upserts.items(), key=lambda kv: (order[kv[0][0]], _sort_key(kv[0][1]))):
        info = schema[tbl]
        delta.changes.append(
            store_delta_pb2.RowChange(
                table=tbl,
                key=[to_sql_value(v) for v in key],
                columns=list(info.columns),
                values=[to_sql_value(v) for v in row],
            )
        )


def _sort_key(key: Key) -> tuple[tuple[int, object], ...]:
    # SQLite's own cross-type order (NULL < numbers < TEXT < BLOB), so mixed keys sort deterministically.
    rank = {type(None): 0, int: 1, float: 1, str: 2, bytes: 3}
    return tuple((rank[type(v)], 0 if v is None else v) for v in key)


# ------------------------------------------------------------------------------------------ SqlValue


def to_sql_value(v: object) -> store_delta_pb2.SqlValue:
    """A Python value read by sqlite3 as a SqlValue with the same storage class."""
    if v is None:
        return store_delta_pb2.SqlValue(is_null=True)
    if isinstance(v, bool):  # never produced by sqlite3, but bool is an int subclass: be explicit
        return store_delta_pb2.SqlValue(integer=int(v))
    if isinstance(v, int):
        return store_delta_pb2.SqlValue(integer=v)
    if isinstance(v, float):
        return store_delta_pb2.SqlValue(real=v)
    if isinstance(v, str):
        return store_delta_pb2.SqlValue(text=v)
    if isinstance(v, bytes | bytearray | memoryview):
        return store_delta_pb2.SqlValue(blob=bytes(v))
    raise TypeError(f"not an SQLite value: {type(v).__name__}")


def from_sql_value(v: store_delta_pb2.SqlValue) -> object:
    """The Python value to bind for a SqlValue (an unset oneof is treated as NULL)."""
    kind = v.WhichOneof("value")
    if kind is None or kind == "is_null":
        return None
    return getattr(v, kind)


# ------------------------------------------------------------------------------------------- payload


def encode(delta: store_delta_pb2.StoreDelta) -> bytes:
    """Serialize a delta into the payload format described in the module docstring."""
    raw = delta.SerializeToString(deterministic=True)
    if len(raw) >= COMPRESS_MIN:
        packed = zstandard.ZstdCompressor(level=3, write_checksum=True, write_content_size=True).compress(raw)
        if len(packed) < len(raw):
            return bytes([PAYLOAD_ZSTD]) + packed
    return bytes([PAYLOAD_RAW]) + raw


def decode(payload: bytes) -> store_delta_pb2.StoreDelta:
    """Parse a payload made by ``encode``; ValueError if it is not one."""
    if not payload:
        raise ValueError("empty delta payload")
    kind, body = payload[0], payload[1:]
    if kind == PAYLOAD_ZSTD:
        body = _decompress(body)
    elif kind != PAYLOAD_RAW:
        raise ValueError(f"unknown delta payload format 0x{kind:02x}")
    delta = store_delta_pb2.StoreDelta()
    try:
        delta.ParseFromString(body)
    except Exception as e:  # protobuf raises its own DecodeError, a plain Exception subclass
        raise ValueError(f"corrupt delta payload: {e}") from e
    return delta


def _decompress(body: bytes) -> bytes:
    try:
        size = zstandard.frame_content_size(body)
    except zstandard.ZstdError as e:
        raise ValueError(f"corrupt zstd delta payload: {e}") from e
    if size < 0 or size > MAX_DELTA_BYTES:  # -1: unknown size, which encode never writes
        raise ValueError(f"zstd delta payload declares an unacceptable size ({size})")
    try:
        return zstandard.ZstdDecompressor().decompress(body)
    except zstandard.ZstdError as e:
        raise ValueError(f"corrupt zstd delta payload: {e}") from e
