"""`python -m vault_service`: configuration problems are one line and exit 2."""

from __future__ import annotations

import asyncio
import logging
import secrets
import sys

from sqlalchemy.exc import SQLAlchemyError

from vault_service import config as config_mod
from vault_service.config import BootstrapToken, Config, ConfigError
from vault_service.server import open_vault, serve

log = logging.getLogger("vault_service")


def _dev_defaults(config: Config) -> Config:
    """--dev: ephemeral key (warned about) and generated tokens if none were given."""
    if config.keyring.ephemeral:
        log.warning(
            "DEV MODE: using an EPHEMERAL master key (%s). Everything stored now becomes unreadable "
            "when this process stops. Never use --dev in production.",
            config.keyring.active_id,
        )
    roles = {t.role for t in config.tokens}
    extra = []
    for role in ("admin", "node"):
        if role not in roles:
            token = secrets.token_urlsafe(24)
            extra.append(BootstrapToken(token, role, "default", f"dev-{role}"))
            log.warning("DEV MODE: generated %s token for tenant 'default': %s", role, token)
    return Config(**{**config.__dict__, "tokens": [*config.tokens, *extra]})


def main(argv: list[str] | None = None) -> int:
    try:
        config = config_mod.load(argv)
    except ConfigError as exc:
        print(f"vault_service: error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=config.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if config.dev:
        config = _dev_defaults(config)
    try:
        vault = open_vault(config)
    except SQLAlchemyError as exc:
        print(f"vault_service: error: database {config.database_url!r}: {exc.__class__.__name__}: "
              f"{str(exc.orig if hasattr(exc, 'orig') else exc).splitlines()[0]}", file=sys.stderr)  # fmt: skip
        return 2
    if config.migrate_only:
        log.info("migrations applied")
        return 0
    if not config.tokens:
        log.warning("no bootstrap tokens given; only tokens already in the database are accepted")
    try:
        asyncio.run(serve(config, vault))
    except OSError as exc:
        print(f"vault_service: error: cannot serve on {config.listen}: {exc}", file=sys.stderr)
        return 2
    return 0
