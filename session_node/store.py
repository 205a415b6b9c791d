"""The whatsmeow store of one session as a file: location, creation, connections, table metadata.

Everything here runs in the supervisor (or a tool), never in a process that loaded neonize: two SQLite
library copies in one process corrupt the file (see research/neonize.md). That is why ``create_store``
runs neonize in a short-lived subprocess instead of importing it.

Table metadata is read from the database itself (``PRAGMA table_info`` / ``index_list`` /
``foreign_key_list``), not hard-coded, so a future whatsmeow schema with new tables or columns is
captured and restored without code changes.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

STORE_FILE = "store.sqlite3"
TABLE_PREFIX = "whatsmeow_"
# Schema information, not data: one row without a primary key that only whatsmeow's migrations change,
# together with DDL that a row delta cannot express. Deltas carry the version in
# StoreDelta.schema_version instead, and a schema change is shipped as a full snapshot.
VERSION_TABLE = "whatsmeow_version"
# The newest schema neonize 0.5.2 (whatsmeow 2026-09) can open; a store needing more makes it fail.
KNOWN_SCHEMA_VERSION = 15
# Prefix of every object the node adds to a store (changelog table, triggers); never shipped.
PRIVATE_PREFIX = "sessionvault_"
BUSY_TIMEOUT_S = 5.0
_NEONIZE_TIMEOUT_S = 120.0

# Runs in a child process: the only place this module lets neonize (and its Go SQLite) near a file.
_CREATE_SCRIPT = (
    "import sys\n"
    "from neonize.client import ClientFactory\n"
    "devices = ClientFactory.get_all_devices_from_db(sys.argv[1])\n"
    "sys.exit(0 if devices == [] else 3)\n"
)


class StoreError(Exception):
    """The store could not be created or opened, or is not a whatsmeow store this node can handle."""


class SchemaError(StoreError):
    """The store's schema cannot be captured or restored (unknown version, table without primary key)."""


@dataclass(frozen=True)
class ForeignKey:
    """``columns`` of the child reference ``parent_columns`` of ``parent``."""

    parent: str
    columns: tuple[str, ...]
    parent_columns: tuple[str, ...]


@dataclass(frozen=True)
class TableInfo:
    """What capture and apply need to know about one whatsmeow table."""

    name: str
    columns: tuple[str, ...]
    pk: tuple[str, ...]  # primary-key columns in primary-key order
    unique: tuple[tuple[str, ...], ...]  # UNIQUE constraints other than the primary key
    foreign_keys: tuple[ForeignKey, ...]


def store_path(data_dir: str | os.PathLike[str], session_id: str) -> Path:
    """``<data-dir>/<session>/store.sqlite3``: one file per session, the unit of backup and restore."""
    if not session_id or "/" in session_id or session_id in (".", ".."):
        raise ValueError(f"invalid session id for a directory name: {session_id!r}")
    return Path(data_dir) / session_id / STORE_FILE


def _check_neonize_path(path: Path) -> None:
    # neonize builds the DSN as "file:%s?_foreign_keys=on" and SQLite parses it as a URI, so these
    # characters would silently open a different file or drop the foreign-key flag.
    bad = {"?", "#", "%"} & set(str(path))
    if bad:
        raise StoreError(f"store path {path} contains {''.join(sorted(bad))!r}, which neonize cannot open")


def create_store(path: str | os.PathLike[str]) -> Path:
    """Create an empty whatsmeow store at ``path`` with neonize itself (in a subprocess).

    Using neonize rather than the SQL in research/ guarantees the schema is byte-for-byte what the
    worker will expect, including whatsmeow_version. The file is built under a temporary name and
    renamed, so a failure never leaves a half-created store at ``path``.
    """
    target = Path(path).absolute()
    if target.exists():
        raise FileExistsError(f"store {target} already exists")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.create-", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    tmp.unlink()  # neonize must create the file itself (an empty file is fine too, but be explicit)
    try:
        _check_neonize_path(tmp)
        _run_neonize_create(tmp)
        _verify_created(tmp)
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return target


def _run_neonize_create(path: Path) -> None:
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _CREATE_SCRIPT, str(path)],
            capture_output=True,
            text=True,
            timeout=_NEONIZE_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as e:
        raise StoreError(f"neonize did not create {path} within {_NEONIZE_TIMEOUT_S:.0f} s") from e
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip()[-2000:]
        raise StoreError(f"neonize failed to create store {path} (exit {proc.returncode}): {tail}")


def _verify_created(path: Path) -> None:
    conn = connect(path)
    try:
        version = schema_version(conn)
    finally:
        conn.close()
    if version is None:
        raise StoreError(f"neonize created {path} without a whatsmeow_version row")


_template_lock = threading.Lock()
_templates: dict[Path, Path] = {}


def _neonize_version() -> str:
    # Read from the distribution metadata: importing neonize here is exactly what must not happen.
    try:
        return metadata.version("neonize")
    except metadata.PackageNotFoundError:
        return "unknown"


def template_store(cache_dir: str | os.PathLike[str]) -> Path:
    """An empty neonize-created store in ``cache_dir``, created at most once per process.

    The file name carries the neonize version so an upgrade never reuses an older schema. Callers
    must copy it (``new_empty_store``), never open it for writing.
    """
    key = Path(cache_dir).absolute()
    with _template_lock:
        cached = _templates.get(key)
        if cached is not None and cached.is_file():
            return cached
        path = key / f"empty-neonize-{_neonize_version()}.sqlite3"
        if not path.is_file():
            with contextlib.suppress(FileExistsError):  # another process won the race: same content
                create_store(path)
        _templates[key] = path
        return path


def new_empty_store(path: str | os.PathLike[str], cache_dir: str | os.PathLike[str]) -> Path:
    """Create an empty store at ``path`` by copying the cached template (fast path of create_store)."""
    target = Path(path)
    if target.exists():
        raise FileExistsError(f"store {target} already exists")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(template_store(cache_dir), target)
    return target


def connect(path: str | os.PathLike[str], *, readonly: bool = False) -> sqlite3.Connection:
    """Open an existing store for the supervisor side.

    Autocommit mode (``isolation_level=None``) so callers issue explicit ``BEGIN [IMMEDIATE]`` and
    nothing is committed behind their back; foreign keys on, as in whatsmeow's DSN, so cascades
    behave the same; a busy timeout because the worker's Go side holds locks during its commits.
    ``mode=rw`` refuses to create a missing file: an empty file is not a whatsmeow store.
    """
    p = Path(path).absolute()
    if not p.is_file():
        raise StoreError(f"store {p} does not exist")
    mode = "ro" if readonly else "rw"
    uri = f"{p.as_uri()}?mode={mode}"
    conn = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_S, isolation_level=None)
    try:
        conn.execute("PRAGMA foreign_keys=ON")
    except sqlite3.Error:
        conn.close()
        raise
    return conn


def quote(name: str) -> str:
    """An SQL identifier; names come from the database, so quote them rather than trust them."""
    return '"' + name.replace('"', '""') + '"'


def schema_version(conn: sqlite3.Connection) -> int | None:
    """whatsmeow's schema version (``whatsmeow_version.version``), or None if the table is empty."""
    try:
        row = conn.execute(f"SELECT version FROM {VERSION_TABLE}").fetchone()
    except sqlite3.OperationalError as e:
        raise StoreError(f"not a whatsmeow store: {e}") from e
    return None if row is None else int(row[0])


def check_schema_supported(conn: sqlite3.Connection) -> int:
    """The schema version, or SchemaError if neonize 0.5.2 could not open this store."""
    row = conn.execute(f"SELECT version, compat FROM {VERSION_TABLE}").fetchone()
    if row is None:
        raise SchemaError("whatsmeow_version is empty")
    version, compat = int(row[0]), int(row[1])
    if compat > KNOWN_SCHEMA_VERSION:
        raise SchemaError(
            f"store schema v{version} needs whatsmeow >= v{compat}; neonize here knows v{KNOWN_SCHEMA_VERSION}"
        )
    return version


def data_tables(conn: sqlite3.Connection) -> list[str]:
    """Names of the whatsmeow tables that hold data (all ``whatsmeow_*`` except whatsmeow_version)."""
    rows = conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND substr(name, 1, ?) = ? ORDER BY name",
        (len(TABLE_PREFIX), TABLE_PREFIX),
    ).fetchall()
    return [r[0] for r in rows if r[0] != VERSION_TABLE]


def load_schema(conn: sqlite3.Connection) -> dict[str, TableInfo]:
    """Metadata of every data table, in dependency order (parents before children).

    Raises SchemaError for a table without a primary key: its rows could not be identified in a
    delta, and silently not syncing a future whatsmeow table would lose credentials.
    """
    tables = {name: _table_info(conn, name) for name in data_tables(conn)}
    return {name: tables[name] for name in _parents_first(tables)}


def _table_info(conn: sqlite3.Connection, table: str) -> TableInfo:
    cols = conn.execute(f"PRAGMA table_info({quote(table)})").fetchall()
    columns = tuple(c[1] for c in cols)
    pk = tuple(c[1] for c in sorted((c for c in cols if c[5] > 0), key=lambda c: c[5]))
    if not pk:
        raise SchemaError(f"table {table} has no primary key: its changes cannot be captured")
    return TableInfo(
        name=table,
        columns=columns,
        pk=pk,
        unique=_unique_constraints(conn, table, pk),
        foreign_keys=_foreign_keys(conn, table),
    )


def _unique_constraints(conn: sqlite3.Connection, table: str, pk: tuple[str, ...]) -> tuple[tuple[str, ...], ...]:
    found: list[tuple[str, ...]] = []
    # index_list rows: seq, name, unique, origin ('c' CREATE INDEX, 'u' UNIQUE, 'pk'), partial
    for _seq, index, unique, origin, partial in conn.execute(f"PRAGMA index_list({quote(table)})"):
        if not unique or origin == "pk" or partial:
            continue  # a partial index conflicts only under its predicate: apply would get it wrong
        info = conn.execute(f"PRAGMA index_info({quote(index)})").fetchall()
        cols = tuple(r[2] for r in sorted(info, key=lambda r: r[0]))
        if None in cols or cols == pk:
            continue  # expression index (cannot be matched by value) or a duplicate of the pk
        found.append(cols)
    return tuple(sorted(found))


def _foreign_keys(conn: sqlite3.Connection, table: str) -> tuple[ForeignKey, ...]:
    # foreign_key_list rows: id, seq, table, from, to, on_update, on_delete, match
    by_id: dict[int, list[tuple[int, str, str, str | None]]] = {}
    for fk_id, seq, parent, col, parent_col, *_ in conn.execute(f"PRAGMA foreign_key_list({quote(table)})"):
        by_id.setdefault(fk_id, []).append((seq, parent, col, parent_col))
    fks: list[ForeignKey] = []
    for parts in by_id.values():
        parts.sort()
        parent = parts[0][1]
        parent_cols = [p[3] for p in parts]
        if None in parent_cols:  # "REFERENCES parent" without columns means the parent's primary key
            parent_cols = list(_table_info_pk(conn, parent))
        fks.append(ForeignKey(parent, tuple(p[2] for p in parts), tuple(str(c) for c in parent_cols)))
    return tuple(sorted(fks, key=lambda f: (f.parent, f.columns)))


def _table_info_pk(conn: sqlite3.Connection, table: str) -> tuple[str, ...]:
    cols = conn.execute(f"PRAGMA table_info({quote(table)})").fetchall()
    return tuple(c[1] for c in sorted((c for c in cols if c[5] > 0), key=lambda c: c[5]))


def _parents_first(tables: dict[str, TableInfo]) -> list[str]:
    """Topological order by foreign keys (ties by name, for deterministic deltas)."""
    order: list[str] = []
    state: dict[str, int] = {}  # 1 = visiting, 2 = done

    def visit(name: str) -> None:
        if state.get(name) == 2 or name not in tables:
            return
        if state.get(name) == 1:
            raise SchemaError(f"foreign-key cycle through {name}: no safe apply order")
        state[name] = 1
        for fk in tables[name].foreign_keys:
            if fk.parent != name:
                visit(fk.parent)
        state[name] = 2
        order.append(name)

    for name in sorted(tables):
        visit(name)
    return order


Rows = list[tuple[object, ...]]


def dump_tables(path: str | os.PathLike[str]) -> dict[str, Rows]:
    """Every ``whatsmeow_*`` table (whatsmeow_version included) with all its rows, sorted.

    Sorted by SQLite itself (ORDER BY every column), whose cross-type order is total where Python's
    is not (None vs str vs bytes). Column order is the table's, so equal dumps mean equal stores.
    """
    conn = connect(path, readonly=True)
    try:
        names = [VERSION_TABLE, *data_tables(conn)]
        out: dict[str, Rows] = {}
        for name in names:
            ncols = len(conn.execute(f"PRAGMA table_info({quote(name)})").fetchall())
            order = ", ".join(str(i) for i in range(1, ncols + 1))
            out[name] = conn.execute(f"SELECT * FROM {quote(name)} ORDER BY {order}").fetchall()
        return out
    finally:
        conn.close()


def diff_tables(a: str | os.PathLike[str], b: str | os.PathLike[str], *, limit: int = 5) -> list[str]:
    """Human-readable differences between the whatsmeow tables of two stores ([] when equal)."""
    da, db = dump_tables(a), dump_tables(b)
    problems = [f"table {t} only in {a}" for t in da.keys() - db.keys()]
    problems += [f"table {t} only in {b}" for t in db.keys() - da.keys()]
    for table in sorted(da.keys() & db.keys()):
        ra, rb = set(da[table]), set(db[table])
        if ra != rb or len(da[table]) != len(db[table]):
            problems.append(
                f"{table}: {len(da[table])} vs {len(db[table])} rows; "
                f"only in first {sorted(ra - rb, key=repr)[:limit]}; only in second {sorted(rb - ra, key=repr)[:limit]}"
            )
    return problems


def tables_equal(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """Whether two stores hold exactly the same rows in every whatsmeow table."""
    return dump_tables(a) == dump_tables(b)
