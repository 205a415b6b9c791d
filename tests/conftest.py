"""Fixtures shared by every test directory."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from support import VaultUnderTest, mariadb_database, start_vault, stop_vault


@pytest.fixture(params=["sqlite", "mariadb"])
def database_url(request: pytest.FixtureRequest, tmp_path) -> Iterator[str]:
    """Every storage test runs on the embedded default and on MariaDB (TiDB's stand-in)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/vault.db"
    else:
        with mariadb_database() as url:
            yield url


@pytest.fixture
async def vault(database_url: str) -> AsyncIterator[VaultUnderTest]:
    handle = await start_vault(database_url)
    yield handle
    await stop_vault(handle)
