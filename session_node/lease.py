"""Keeping a session's lease: renew at about TTL/3, give up at TTL minus a
safety margin, and publish the deadline for the worker so it fences itself
even if this supervisor is paused or wedged."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from sessionvault.v1 import common_pb2 as pb

from session_node.vault_client import FENCING_REASONS, VaultClient, VaultRefused, VaultUnavailable
from session_node.worker_protocol import write_lease_deadline

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LeaseSettings:
    ttl_s: int = 15
    margin_s: float = 3.0  # stop the worker this long before the vault could hand the lease to another node

    @property
    def renew_every_s(self) -> float:
        return self.ttl_s / 3


class LeaseLost(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class LeaseKeeper:
    def __init__(
        self, client: VaultClient, session_id: str, lease: pb.Lease, settings: LeaseSettings, deadline_file: Path
    ) -> None:
        self.client = client
        self.session_id = session_id
        self.lease = lease
        self.settings = settings
        self.deadline_file = deadline_file
        self._deadline = 0.0  # monotonic
        self._extend(time.monotonic())

    @property
    def epoch(self) -> int:
        return self.lease.epoch

    def _extend(self, sent_at: float) -> None:
        """The lease runs TTL from when the vault granted it, which is after `sent_at`:
        counting from the send keeps us on the safe side of any clock skew."""
        self._deadline = sent_at + self.settings.ttl_s - self.settings.margin_s
        wall = time.time() + (self._deadline - time.monotonic())
        write_lease_deadline(self.deadline_file, wall)

    def remaining(self) -> float:
        return self._deadline - time.monotonic()

    async def run(self) -> None:
        """Renew until the lease is lost; raises LeaseLost."""
        while True:
            await asyncio.sleep(max(0.0, min(self.settings.renew_every_s, self.remaining())))
            if self.remaining() <= 0:
                raise LeaseLost("LEASE_EXPIRED_LOCALLY")
            sent_at = time.monotonic()
            try:
                self.lease = await asyncio.wait_for(
                    self.client.renew(self.session_id, self.lease.epoch, self.settings.ttl_s),
                    timeout=max(0.1, self.remaining()),
                )
            except VaultRefused as err:
                if err.reason in FENCING_REASONS:
                    raise LeaseLost(err.reason) from err
                log.warning("%s: lease renewal refused: %s", self.session_id, err)
                continue
            except (VaultUnavailable, TimeoutError) as err:
                log.warning("%s: lease renewal failed (%s); %.1f s left", self.session_id, err, self.remaining())
                await asyncio.sleep(min(1.0, max(0.0, self.remaining())))
                continue
            self._extend(sent_at)

    def revoke_locally(self) -> None:
        """Tell the worker its lease is gone (a missing deadline file counts as revoked)."""
        self.deadline_file.unlink(missing_ok=True)

    async def reacquire(self) -> pb.Lease:
        """Re-acquiring a lease we hold extends it and returns the head (for reconciling acks)."""
        response = await self.client.acquire(self.session_id, self.settings.ttl_s)
        if not response.acquired or response.lease.epoch != self.lease.epoch:
            raise LeaseLost("LEASE_NOT_HELD")
        return response.lease
