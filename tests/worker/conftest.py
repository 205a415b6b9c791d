"""Fixtures for the worker tests: neonize-created stores, worker subprocesses, a blackhole proxy.

The pytest process opens stores with Python's sqlite3, so it must never load neonize itself
(two SQLite copies in one process corrupt the file): neonize only ever runs in subprocesses here.
"""

from __future__ import annotations

import shutil
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from worker.workerkit import WorkerProc

from session_node.store import create_store


@pytest.fixture(autouse=True)
def _neonize_stays_out_of_pytest() -> Iterator[None]:
    yield
    assert "neonize" not in sys.modules, "neonize was imported into the pytest process"


@pytest.fixture(scope="session")
def template_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One empty store made by neonize (in a subprocess), copied for each test: creating one
    costs a neonize import, copying a closed SQLite file costs nothing."""
    return create_store(tmp_path_factory.mktemp("template") / "store.sqlite3")


@pytest.fixture
def store(tmp_path: Path, template_store: Path) -> Path:
    path = tmp_path / "store.sqlite3"
    shutil.copyfile(template_store, path)
    return path


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Callable[..., WorkerProc]]:
    """``start_worker(*args, env=None)``; every worker is killed at teardown if still alive."""
    procs: list[WorkerProc] = []

    def start(*args: str, env: dict[str, str] | None = None) -> WorkerProc:
        w = WorkerProc(list(args), tmp_path / f"worker{len(procs)}.stderr", env)
        procs.append(w)
        return w

    yield start
    for w in procs:
        w.close()


@pytest.fixture
def blackhole_proxy() -> Iterator[str]:
    """An HTTP proxy that accepts connections and never answers: whatsmeow honours HTTPS_PROXY,
    so the websocket dial hangs (~60 s) instead of failing at once, i.e. the worker stays in
    connect(), like a client on a dead network. Plain sockets; nothing of neonize here."""
    srv = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            held.append(conn)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.getsockname()[1]}"
    stop.set()
    t.join(5)
    srv.close()
    for c in held:
        c.close()
