"""The supervisor's SQLite work runs on a few store threads, each session always on the same one.

sqlite3 connections belong to the thread that opened them, so a session's work is pinned to one
thread (its lane). There are a few threads rather than one because that work blocks: every ack
is a commit with an fsync, and a commit or a drain can wait for the worker's lock on its store.
On a single thread one slow store held up every other session's drains and acks (py-spy: 44 % of
the store thread in commit_ack with 30 busy sessions); fsyncs and lock waits release the GIL, so
they overlap across threads.

The change watcher polls `PRAGMA data_version` (it changes when another connection, i.e. the
worker, commits) of every open store, one hop per thread and tick, so hundreds of sessions cost a
few wake-ups, not hundreds.
"""

from __future__ import annotations

import asyncio
import sqlite3
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from session_node import store

T = TypeVar("T")

STORE_THREADS = 2
ACTIVE_TICK_S = 0.01
IDLE_TICK_S = 0.05
IDLE_AFTER_S = 2.0
# Polling a store costs ~4 us: with a thousand sessions a 10 ms tick alone would take 40 % of a
# core (and starve restores). Beyond this many checks per second the tick stretches instead:
# 1000 stores are polled every 100 ms, inside the 200 ms freshness goal.
MAX_POLLS_PER_S = 10_000


class _Thread:
    """One store thread and the connections it watches."""

    def __init__(self, index: int) -> None:
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"store-io-{index}")
        self.watched: dict[str, tuple[sqlite3.Connection, asyncio.Event]] = {}
        self.versions: dict[str, int] = {}

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    def poll(self, conns: list[tuple[str, sqlite3.Connection]]) -> list[str]:
        changed = []
        for key, conn in conns:
            try:
                version = int(conn.execute("PRAGMA data_version").fetchone()[0])
            except sqlite3.Error:
                continue  # closed meanwhile; its session is stopping
            if self.versions.get(key) != version:
                self.versions[key] = version
                changed.append(key)
        return changed

    async def poll_once(self) -> int:
        """Set the event of every watched store that changed; returns how many did."""
        conns = [(k, c) for k, (c, _) in self.watched.items()]
        changed = await self.run(self.poll, conns) if conns else []
        for key in changed:
            if key in self.watched:
                self.watched[key][1].set()
        return len(changed)


class StoreLane:
    """One session's store work, always on its own store thread."""

    def __init__(self, thread: _Thread, key: str) -> None:
        self._thread = thread
        self.key = key

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        return await self._thread.run(fn, *args)

    async def open(self, path: Path) -> sqlite3.Connection:
        return await self.run(store.connect, path)

    async def close(self, conn: sqlite3.Connection) -> None:
        await self.run(conn.close)

    def watch(self, conn: sqlite3.Connection) -> asyncio.Event:
        """An event set whenever another process commits to this store."""
        event = asyncio.Event()
        self._thread.watched[self.key] = (conn, event)
        self._thread.versions.pop(self.key, None)
        return event

    def unwatch(self) -> None:
        self._thread.watched.pop(self.key, None)
        self._thread.versions.pop(self.key, None)


class StoreIO:
    def __init__(self, threads: int = STORE_THREADS) -> None:
        self._threads = [_Thread(i) for i in range(threads)]

    def lane(self, key: str) -> StoreLane:
        """The lane of session ``key`` (a stable choice: the same session, the same thread)."""
        return StoreLane(self._threads[zlib.crc32(key.encode()) % len(self._threads)], key)

    async def watch_loop(self) -> None:
        """Set the event of every store that changed; tick fast while changes flow."""
        loop = asyncio.get_running_loop()
        last_change = loop.time()
        while True:
            changed = sum(await asyncio.gather(*(t.poll_once() for t in self._threads)))
            if changed:
                last_change = loop.time()
            idle = loop.time() - last_change > IDLE_AFTER_S
            watched = sum(len(t.watched) for t in self._threads)
            await asyncio.sleep(max(IDLE_TICK_S if idle else ACTIVE_TICK_S, watched / MAX_POLLS_PER_S))

    def shutdown(self) -> None:
        for t in self._threads:
            t.executor.shutdown(wait=True)
