"""Fixtures for the failover tests: a real vault subprocess on MariaDB (TiDB's stand-in) and node
subprocesses with the simulated driver. neonize only ever runs in subprocesses (the template store);
the autouse fixture proves it never leaks into the pytest process."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from clusterkit import Admin
from failover.fokit import NodeProc
from support import VaultProcess, mariadb_database

from session_node import store

pytestmark = pytest.mark.slow

_REPORTS = pytest.StashKey[dict]()


@pytest.fixture(autouse=True)
def _neonize_stays_out_of_pytest() -> Iterator[None]:
    yield
    assert "neonize" not in sys.modules, "neonize was imported into the pytest process"


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    report = yield
    item.stash.setdefault(_REPORTS, {})[report.when] = report
    return report


@pytest.fixture(scope="session")
def store_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The neonize-made empty template store, created once per run (in a subprocess)."""
    cache = tmp_path_factory.mktemp("store-cache")
    store.template_store(cache)
    return cache


@dataclass
class Cluster:
    vault: VaultProcess
    admin: Admin
    workdir: Path
    cache: Path
    database_url: str
    nodes: dict[str, NodeProc] = field(default_factory=dict)

    def node(self, node_id: str, **kwargs: Any) -> NodeProc:
        """Start node ``node_id`` (data dir WORKDIR/<id>); see NodeProc for the options."""
        node = NodeProc(node_id, self.vault.address, self.workdir / node_id, store.template_store(self.cache), **kwargs)
        self.nodes[node_id] = node
        return node.start()


@pytest.fixture
def cluster(request: pytest.FixtureRequest, tmp_path: Path, store_cache: Path) -> Iterator[Cluster]:
    with mariadb_database() as url:
        vault = VaultProcess(url, str(tmp_path)).start()
        c = Cluster(vault, Admin(vault.address), tmp_path, store_cache, url)
        try:
            yield c
        finally:
            for node in c.nodes.values():
                node.cleanup()
            vault.stop()
            reports = request.node.stash.get(_REPORTS, {})
            if any(r.failed for r in reports.values()):
                for node in c.nodes.values():
                    print(f"----- node {node.node_id} -----\n{node.log(60)}")
                for log in sorted(tmp_path.glob("vault-*.log")):
                    print(f"----- {log.name} -----\n" + "\n".join(log.read_text(errors="replace").splitlines()[-40:]))
