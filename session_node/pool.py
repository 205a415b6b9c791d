"""Heartbeats and pool mode: which sessions this node runs beyond its
explicit --session list, and how it reacts to the vault's move commands.

Fair share: a pool node runs at most ceil(active sessions / live pool nodes)
sessions (and never more than --capacity). Claims are jittered and restores
bounded, so nodes that come up together don't stampede the vault.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import socket
from collections.abc import Callable
from dataclasses import dataclass

from sessionvault.v1 import sync_service_pb2 as sync_pb

from session_node.vault_client import VaultClient, VaultRefused, VaultUnavailable

log = logging.getLogger(__name__)

HEARTBEAT_S = 2.0
CLAIM_JITTER_S = 0.5
MOVE_CLAIM_WINDOW_S = 30.0  # the vault reserves a moved session for its target this long


@dataclass(frozen=True)
class PoolSettings:
    enabled: bool = False
    capacity: int = 0  # 0: no limit


def fair_share(active_sessions: int, pool_nodes: int, capacity: int) -> int:
    share = math.ceil(active_sessions / max(1, pool_nodes))
    return min(share, capacity) if capacity else share


class Pool:
    """Runs the heartbeat loop; asks the supervisor to start runners for claims.

    `owned()` lists sessions this node holds; `start(session, deadline_s)` starts a
    claiming runner (it tries to acquire until the deadline, then gives up).
    """

    def __init__(
        self,
        client: VaultClient,
        settings: PoolSettings,
        owned: Callable[[], list[str]],
        active: Callable[[], set[str]],
        start: Callable[[str, float], None],
    ) -> None:
        self.client = client
        self.settings = settings
        self.owned = owned
        self.active = active
        self.start = start
        self.address = socket.gethostname()

    async def run(self) -> None:
        registered = False
        while True:
            try:
                view = await self.client.heartbeat(
                    self.address, self.owned(), self.settings.capacity, self.settings.enabled
                )
                # The first beat only registers this node: nodes started together then all count
                # in each other's fair share, instead of the first one up claiming everything.
                if self.settings.enabled and registered:
                    await self._claim(view)
                registered = True
            except (VaultUnavailable, VaultRefused) as err:
                log.warning("heartbeat failed: %s", err)
            await asyncio.sleep(HEARTBEAT_S * random.uniform(0.8, 1.2))

    async def _claim(self, view: sync_pb.HeartbeatResponse) -> None:
        running = self.active()
        room = fair_share(view.active_sessions, view.live_pool_nodes, self.settings.capacity) - len(running)
        candidates = [s for s in view.claimable_session_ids if s not in running]
        if not candidates:
            return
        if room <= 0 and (not self.settings.capacity or len(running) < self.settings.capacity):
            # Over our share but sessions are orphaned (a dead node may still count as live for a
            # few seconds): take one per beat, so nothing waits for the pool's view to settle.
            room = 1
        if room <= 0:
            return
        random.shuffle(candidates)
        await asyncio.sleep(random.uniform(0, CLAIM_JITTER_S))
        for session_id in candidates[:room]:
            self.start(session_id, HEARTBEAT_S)

    def on_claim_command(self, session_id: str) -> None:
        """A move names this node as the target: take the session once its owner lets go."""
        if session_id not in self.active():
            self.start(session_id, MOVE_CLAIM_WINDOW_S)
