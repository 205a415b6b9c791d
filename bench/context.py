"""What every scenario gets: run options, a scratch directory and vaults on demand."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from bench.databases import create_raw_tables, scratch_mariadb, sqlite_url
from bench.vaultproc import VaultProcess, running_vault

T = TypeVar("T")
BACKENDS = ("mariadb", "sqlite")


@dataclass
class Context:
    quick: bool
    workdir: Path
    mariadb_url: str
    backends: tuple[str, ...] = BACKENDS
    profile_dir: Path | None = None
    log_dir: Path | None = None  # vault logs (default: the scratch directory)
    notes: list[str] = field(default_factory=list)

    def pick(self, full: T, quick: T) -> T:
        return quick if self.quick else full

    @contextlib.contextmanager
    def database(self, backend: str) -> Iterator[str]:
        """A fresh database (with the raw reference tables) for one scenario."""
        if backend == "mariadb":
            with scratch_mariadb(self.mariadb_url) as url:
                create_raw_tables(url)
                yield url
            return
        with tempfile.TemporaryDirectory(dir=self.workdir) as tmp:
            url = sqlite_url(Path(tmp))
            create_raw_tables(url)
            yield url

    @contextlib.asynccontextmanager
    async def vault(self, backend: str, label: str) -> AsyncIterator[tuple[VaultProcess, str]]:
        """A vault subprocess on a fresh database of `backend`; yields it and the database URL."""
        with self.database(backend) as url:
            async with running_vault(
                url, self.log_dir or self.workdir, f"{label}-{backend}", self.profile_dir
            ) as vault:
                yield vault, url
