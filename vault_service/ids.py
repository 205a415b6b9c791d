"""Validation of the identifiers clients send (session, node and tenant ids).

Ids end up in file names on the nodes and in log lines, so the alphabet is
deliberately small: no path separators, no `..`, no control characters.
"""

from __future__ import annotations

import re

from vault_service.errors import invalid

MAX_ID_BYTES = 128
_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+:=-]*")


def check_id(value: str, what: str) -> str:
    """Return `value` if it is a valid id, else raise INVALID_ARGUMENT."""
    if not value:
        raise invalid("EMPTY_ID", f"{what} must not be empty", field=what)
    if len(value.encode("utf-8", "surrogatepass")) > MAX_ID_BYTES:
        raise invalid("ID_TOO_LONG", f"{what} is longer than {MAX_ID_BYTES} bytes", field=what)
    if ".." in value or not _ID_RE.fullmatch(value):
        raise invalid(
            "INVALID_ID",
            f"{what} {value[:40]!r} may only contain A-Z a-z 0-9 . _ @ + : = - "
            "(starting with a letter or digit, no '..')",
            field=what,
        )
    return value
