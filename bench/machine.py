"""Facts about the machine and software a run was measured on."""

from __future__ import annotations

import datetime as dt
import os
import platform
import sqlite3
import subprocess
from importlib import metadata
from pathlib import Path

from bench.databases import mariadb_version


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def _mariadb(server_url: str) -> str | None:
    try:
        return mariadb_version(server_url)
    except Exception as exc:  # reported, not fatal: SQLite-only runs need no MariaDB
        return f"unavailable ({exc.__class__.__name__})"


def facts(mariadb_url: str) -> dict[str, object]:
    mem_kib = next(
        int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal")
    )
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "memory_mib": mem_kib // 1024,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "mariadb": _mariadb(mariadb_url),
        "grpcio": metadata.version("grpcio"),
        "sqlalchemy": metadata.version("sqlalchemy"),
        "cryptography": metadata.version("cryptography"),
        "git_commit": _git_commit(),
        "loadavg_at_start": list(os.getloadavg()),
    }
