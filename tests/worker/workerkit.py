"""Helpers for the worker tests: a worker subprocess with its events, small store queries.

(A module of its own, not conftest: ``from conftest import ...`` is ambiguous with tests/conftest.py.)
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from session_node import worker_protocol as wp

REPO = Path(__file__).resolve().parents[2]
EVENT_TIMEOUT = 30.0  # generous: slow machines take a while to import neonize (0.4-0.7 s here)


def query(path: Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def count(path: Path, table: str) -> int:
    return query(path, f"SELECT COUNT(*) FROM {table}")[0][0]


class WorkerProc:
    """A worker subprocess with its stdout events collected by a reader thread.

    Tests synchronise on events (``wait_for``) and on the exit (``wait``), never on sleeps.
    stderr goes to a file so a chatty worker can never block on a full pipe.
    """

    def __init__(self, args: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in close()
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "session_node.worker", *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            cwd=REPO,
            env={**os.environ, **(env or {})},
        )
        self.events: list[dict[str, Any]] = []
        self.raw_lines: list[bytes] = []
        self._cond = threading.Condition()
        self._eof = False
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            ev = wp.parse_event(line)
            with self._cond:
                self.raw_lines.append(line)
                if ev is not None:
                    self.events.append(ev)
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def stderr_tail(self, n: int = 30) -> str:
        self._log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def wait_for(
        self, name: str, timeout: float = EVENT_TIMEOUT, where: Callable[[dict[str, Any]], bool] | None = None
    ) -> dict[str, Any]:
        """The first event called ``name`` (matching ``where``); fails on timeout or stdout EOF."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for ev in self.events:
                    if ev["event"] == name and (where is None or where(ev)):
                        return ev
                remaining = deadline - time.monotonic()
                if self._eof or remaining <= 0:
                    seen = [e["event"] for e in self.events]
                    why = "stdout closed" if self._eof else f"timeout {timeout}s"
                    raise AssertionError(f"no {name!r} event ({why}); saw {seen}\n--- stderr ---\n{self.stderr_tail()}")
                self._cond.wait(remaining)

    def wait(self, timeout: float = EVENT_TIMEOUT) -> int:
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"worker still running after {timeout}s\n{self.stderr_tail()}") from None
        self._reader.join(5)
        return rc

    def names(self) -> list[str]:
        with self._cond:
            return [e["event"] for e in self.events]

    def of(self, name: str) -> list[dict[str, Any]]:
        with self._cond:
            return [e for e in self.events if e["event"] == name]

    def close_stdin(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()
        self._reader.join(5)
        self._log.close()
