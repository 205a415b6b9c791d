"""Group commit: one-chunk records from every Sync stream, committed in shared transactions.

A node ships each session's next delta as soon as the last is acked, so with many sessions
the vault sees a steady stream of small independent records. Committing each in its own
transaction costs a thread hop, a BEGIN and a COMMIT (an fsync on SQLite) per record; here
whatever has queued up while a batch was in the database goes in the next one, so batches
grow with load and stay at one record when the vault is idle (no added latency).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from vault_service.storage.tokens import Principal
from vault_service.vault import RecordHeader, Vault

log = logging.getLogger(__name__)

MAX_BATCH = 64  # records per transaction: bounds a batch's lock set and its retry cost
COMMITTERS = 4  # batches in the database at once (the pool has 16 connections)

_Item = tuple[Principal, RecordHeader, bytes, "asyncio.Future[int]"]


class GroupCommitter:
    def __init__(self, vault: Vault, committers: int = COMMITTERS, max_batch: int = MAX_BATCH) -> None:
        self.vault = vault
        self.max_batch = max_batch
        self.committers = committers
        self.queue: asyncio.Queue[_Item] = asyncio.Queue()
        self.tasks: list[asyncio.Task] = []
        self.largest_batch = 0  # for tests and diagnostics

    def start(self) -> None:
        self.tasks = [asyncio.create_task(self._run()) for _ in range(self.committers)]

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def commit(self, who: Principal, header: RecordHeader, data: bytes) -> int:
        """The record's version once it is durable; raises what refused it (a VaultError)."""
        done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        await self.queue.put((who, header, data, done))
        return await done

    async def _run(self) -> None:
        while True:
            batch = [await self.queue.get()]
            while len(batch) < self.max_batch and not self.queue.empty():
                batch.append(self.queue.get_nowait())
            self.largest_batch = max(self.largest_batch, len(batch))
            try:
                results = await asyncio.to_thread(self.vault.commit_many, [(w, h, d) for w, h, d, _ in batch])
            except Exception as exc:  # a bug, not a refusal: every waiter hears of it
                log.exception("group commit failed")
                results = [exc] * len(batch)
            for (*_, done), result in zip(batch, results, strict=True):
                if done.cancelled():
                    continue
                if isinstance(result, Exception):
                    done.set_exception(result)
                else:
                    done.set_result(result)
