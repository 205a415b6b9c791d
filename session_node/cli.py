"""`python -m session_node`: configuration problems are one line and exit 2."""

from __future__ import annotations

import asyncio
import logging
import sys

from session_node import config as config_mod
from session_node.config import ConfigError
from session_node.supervisor import Supervisor


def main(argv: list[str] | None = None) -> int:
    try:
        config = config_mod.load(argv)
    except ConfigError as exc:
        print(f"session_node: error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=config.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return asyncio.run(Supervisor(config).run())
    except ConfigError as exc:
        print(f"session_node: error: {exc}", file=sys.stderr)
        return 2
