"""A running worker subprocess as the supervisor sees it: start, events, stop."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from session_node.worker_protocol import parse_event, worker_argv

log = logging.getLogger(__name__)

STOP_GRACE_S = 5.0


class WorkerHandle:
    def __init__(
        self,
        session_id: str,
        store_path: Path,
        driver: str,
        deadline_file: Path,
        extra_args: list[str],
        on_event: Callable[[dict[str, Any]], None],
        activity_log: Path | None = None,
    ) -> None:
        self.session_id = session_id
        if activity_log is not None:
            extra_args = [*extra_args, "--activity-log", str(activity_log)]
        self.argv = worker_argv(
            store=store_path, session=session_id, driver=driver, lease_deadline_file=deadline_file, extra=extra_args
        )
        self.on_event = on_event
        self.activity_log = activity_log
        self._reaped = False
        self.proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task | None = None

    async def start(self) -> None:
        # stdin stays open: the worker stops by itself when this supervisor dies (EOF).
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=sys.stderr,
        )
        self._reader = asyncio.create_task(self._read_events())
        log.info("%s: worker started (pid %d)", self.session_id, self.proc.pid)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    async def _read_events(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        async for line in self.proc.stdout:
            event = parse_event(line)
            if event is not None:
                self.on_event(event)

    async def wait(self) -> int:
        assert self.proc is not None
        rc = await self.proc.wait()
        if not self._reaped:
            self._reaped = True
            if rc < 0:
                self._record_killed(rc)
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader  # deliver the last events before the exit is handled
        return rc

    def _record_killed(self, rc: int) -> None:
        """A worker killed by a signal cannot log its own stop: log it now that it is reaped (so surely dead)."""
        if self.activity_log is None or self.proc is None:
            return
        record = {"session": self.session_id, "pid": self.proc.pid, "event": "stop", "t": time.time(),
                  "reason": f"killed_by_signal_{-rc}", "by": "supervisor"}  # fmt: skip
        try:
            with self.activity_log.open("a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
        except OSError as err:
            log.warning("%s: cannot write the activity log: %s", self.session_id, err)

    async def stop(self, grace_s: float = STOP_GRACE_S) -> int | None:
        """SIGTERM, then SIGKILL after `grace_s`."""
        if self.proc is None or self.proc.returncode is not None:
            return self.proc.returncode if self.proc else None
        with contextlib.suppress(ProcessLookupError):
            self.proc.terminate()
        try:
            return await asyncio.wait_for(self.wait(), grace_s)
        except TimeoutError:
            log.warning("%s: worker did not stop in %.1f s; killing it", self.session_id, grace_s)
            return await self.kill()

    async def kill(self) -> int | None:
        if self.proc is None:
            return None
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        return await self.wait()
