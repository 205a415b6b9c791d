"""Fixtures for the end-to-end node tests: a real vault subprocess (SQLite or MariaDB), node
subprocesses with the simulated driver, and an admin view of the vault.

The pytest process reads the node stores with Python's sqlite3, so neonize only ever runs in
subprocesses; the autouse fixture proves it never leaks into this process.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from clusterkit import Admin
from node_e2e.e2ekit import Node
from support import VaultProcess

from session_node import store

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _neonize_stays_out_of_pytest() -> Iterator[None]:
    yield
    assert "neonize" not in sys.modules, "neonize was imported into the pytest process"


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    report = yield
    item.stash.setdefault(_REPORTS, {})[report.when] = report
    return report


_REPORTS = pytest.StashKey[dict]()


@pytest.fixture(scope="session")
def store_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The neonize-made empty template store, created once per run (in a subprocess)."""
    cache = tmp_path_factory.mktemp("store-cache")
    store.template_store(cache)
    return cache


@pytest.fixture
def vault_proc(database_url: str, tmp_path: Path) -> Iterator[VaultProcess]:
    vault = VaultProcess(database_url, str(tmp_path)).start()
    yield vault
    vault.stop()


@pytest.fixture
def admin(vault_proc: VaultProcess) -> Admin:
    return Admin(vault_proc.address)


NodeFactory = Callable[..., Node]


@pytest.fixture
def nodes(
    request: pytest.FixtureRequest, tmp_path: Path, vault_proc: VaultProcess, store_cache: Path
) -> Iterator[NodeFactory]:
    """Start nodes: ``nodes("a", ttl=3, ...)``; each gets DATA_DIR tmp_path/<id> (unless given).

    A node creates its template store with neonize on first use (0.5-1 s); the data dir is seeded
    with the run's template instead, exactly what the node's own cache holds after its first start.
    On failure the tail of every node's log (and the vault's) is printed.
    """
    started: list[Node] = []

    def start(node_id: str, *, data_dir: Path | None = None, **kwargs: Any) -> Node:
        data_dir = data_dir or tmp_path / node_id
        template = store.template_store(store_cache)
        seeded = data_dir / ".template" / template.name
        if not seeded.exists():
            seeded.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(template, seeded)
        node = Node(node_id, vault_proc.address, data_dir, **kwargs).start()
        started.append(node)
        return node

    yield start
    for node in started:
        node.kill()
    reports = request.node.stash.get(_REPORTS, {})
    if any(r.failed for r in reports.values()):
        for node in started:
            print(f"----- node {node.node_id} (pid {node.proc.pid if node.proc else '-'}) -----\n{node.log()}")
            print("\n".join(f"  {e}" for e in node.events()))
        for log in sorted(tmp_path.glob("vault-*.log")):
            print(f"----- {log.name} -----\n" + "\n".join(log.read_text(errors="replace").splitlines()[-30:]))
