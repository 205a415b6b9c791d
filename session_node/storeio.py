"""All of the supervisor's SQLite work runs on one thread.

sqlite3 connections belong to the thread that opened them, and the work is
short and CPU-bound, so one thread serialises it without contention. The
change watcher polls `PRAGMA data_version` (it changes when another
connection, i.e. the worker, commits) of every open store in one hop per tick,
so hundreds of sessions cost one wake-up, not hundreds.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from session_node import store

T = TypeVar("T")

ACTIVE_TICK_S = 0.01
IDLE_TICK_S = 0.05
IDLE_AFTER_S = 2.0
# Polling every store costs ~4 us per store and tick on the one store thread: with a thousand sessions
# a 10 ms tick alone would take 40 % of a core (and starve restores). Beyond this many checks per
# second the tick stretches instead: 1000 stores are polled every 100 ms, inside the 200 ms
# freshness goal.
MAX_POLLS_PER_S = 10_000


class StoreIO:
    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-io")
        self._watched: dict[str, tuple[sqlite3.Connection, asyncio.Event]] = {}
        self._versions: dict[str, int] = {}

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def open(self, path: Path) -> sqlite3.Connection:
        return await self.run(store.connect, path)

    async def close(self, conn: sqlite3.Connection) -> None:
        await self.run(conn.close)

    def watch(self, key: str, conn: sqlite3.Connection) -> asyncio.Event:
        """An event set whenever another process commits to this store."""
        event = asyncio.Event()
        self._watched[key] = (conn, event)
        self._versions.pop(key, None)
        return event

    def unwatch(self, key: str) -> None:
        self._watched.pop(key, None)
        self._versions.pop(key, None)

    def _poll(self, conns: list[tuple[str, sqlite3.Connection]]) -> list[str]:
        changed = []
        for key, conn in conns:
            try:
                version = int(conn.execute("PRAGMA data_version").fetchone()[0])
            except sqlite3.Error:
                continue  # closed meanwhile; its session is stopping
            if self._versions.get(key) != version:
                self._versions[key] = version
                changed.append(key)
        return changed

    async def watch_loop(self) -> None:
        """Set the event of every store that changed; tick fast while changes flow."""
        loop = asyncio.get_running_loop()
        last_change = loop.time()
        while True:
            conns = [(k, c) for k, (c, _) in self._watched.items()]
            changed = await self.run(self._poll, conns) if conns else []
            for key in changed:
                if key in self._watched:
                    self._watched[key][1].set()
            if changed:
                last_change = loop.time()
            idle = loop.time() - last_change > IDLE_AFTER_S
            await asyncio.sleep(max(IDLE_TICK_S if idle else ACTIVE_TICK_S, len(conns) / MAX_POLLS_PER_S))

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True)
