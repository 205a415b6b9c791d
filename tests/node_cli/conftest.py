"""Fixtures for the node CLI tests: one real vault process (SQLite) for the directory, node
processes that are always reaped, unique session names, an offline-for-sure environment.

The pytest process reads stores with Python's sqlite3, so it must never load neonize (two SQLite
copies in one process corrupt the file): neonize only ever runs in the node's subprocesses.
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from node_cli.nodekit import NodeProc
from support import VaultProcess, free_port

from session_node import store

_names = itertools.count(1)


@pytest.fixture(autouse=True)
def _neonize_stays_out_of_pytest() -> Iterator[None]:
    yield
    assert "neonize" not in sys.modules, "neonize was imported into the pytest process"


@pytest.fixture(scope="session")
def vault(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VaultProcess]:
    """`python -m vault_service` on SQLite, shared by the directory; tests use their own sessions."""
    workdir = tmp_path_factory.mktemp("vault")
    proc = VaultProcess(f"sqlite:///{workdir}/vault.db", str(workdir)).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def store_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The neonize-created empty template (one neonize subprocess per run), for rebuilding stores."""
    cache = tmp_path_factory.mktemp("store-cache")
    store.template_store(cache)
    return cache


@pytest.fixture
def session_name(request: pytest.FixtureRequest) -> Callable[[], str]:
    """Fresh session ids per call: the vault is shared, so every test works on its own sessions."""
    stem = "".join(c if c.isalnum() else "-" for c in request.node.name)[:40].strip("-")
    return lambda: f"s{next(_names)}-{stem}"


@pytest.fixture
def offline_env() -> dict[str, str]:
    """Make WhatsApp unreachable whatever the machine's network: whatsmeow honours HTTPS_PROXY,
    and nothing listens on this port, so every dial fails at once (connection refused). gRPC
    honours it too: NO_PROXY keeps the node's own channel to the vault on loopback direct."""
    proxy = f"http://127.0.0.1:{free_port()}"
    direct = "127.0.0.1,localhost"
    return {"HTTPS_PROXY": proxy, "https_proxy": proxy, "NO_PROXY": direct, "no_proxy": direct}


@pytest.fixture
def start_node(vault: VaultProcess, tmp_path: Path) -> Iterator[Callable[..., NodeProc]]:
    """``start_node(data_dir_name, [sessions], *args, env=None)``; killed at teardown if alive."""
    nodes: list[NodeProc] = []

    def start(name: str, sessions: list[str], *args: str, env: dict[str, str] | None = None) -> NodeProc:
        node = NodeProc(vault.address, tmp_path / name, sessions, *args, env=env)
        nodes.append(node)
        return node

    yield start
    for node in nodes:
        node.close()
