"""Encryption of session records: a keyring of master keys, per-session keys
derived with HKDF-SHA256, and AES-256-GCM per chunk.

Each chunk is sealed with a fresh 96-bit nonce and associated data binding
tenant, session, version, record kind, chunk index, last-chunk flag and key
id, so a stored ciphertext cannot be moved to another session or version,
reordered, or have its tail cut off without `open_chunk` failing.
"""

from __future__ import annotations

import base64
import binascii
import os
import struct
from dataclasses import dataclass
from functools import lru_cache

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

KEY_BYTES = 32
NONCE_BYTES = 12
SALT_BYTES = 32
_AAD_MAGIC = b"sessionvault/v1/chunk"
_HKDF_INFO = b"sessionvault/v1/session-key"


class MasterKeyError(ValueError):
    """Bad master key material (raised at start-up, shown as one line)."""


class IntegrityError(Exception):
    """A chunk failed authentication: tampered, moved, reordered or truncated."""


def parse_master_key(text: str) -> bytes:
    """Decode 32 bytes given as 64 hex digits or base64; refuse weak keys."""
    text = text.strip()
    key: bytes | None = None
    if len(text) == 2 * KEY_BYTES:
        try:
            key = bytes.fromhex(text)
        except ValueError:
            key = None
    if key is None:
        try:
            key = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            key = None
    if key is None or len(key) != KEY_BYTES:
        raise MasterKeyError("the master key must be 32 bytes, given as 64 hex digits or base64")
    # 32 random bytes have ~28 distinct values; fewer than 16 means a
    # placeholder ("000..."), a repeated pattern or a typed-in password.
    if len(set(key)) < 16:
        raise MasterKeyError("the master key looks weak (too few distinct bytes); generate 32 random bytes")
    return key


@dataclass(frozen=True)
class Keyring:
    """Master keys by key id; new records are sealed with `active_id`."""

    keys: dict[str, bytes]
    active_id: str
    ephemeral: bool = False

    def __post_init__(self) -> None:
        if self.active_id not in self.keys:
            raise MasterKeyError(f"active key id {self.active_id!r} has no key")

    @classmethod
    def ephemeral_dev(cls) -> Keyring:
        key_id = "dev-" + os.urandom(4).hex()
        return cls({key_id: os.urandom(KEY_BYTES)}, key_id, ephemeral=True)

    def has(self, key_id: str) -> bool:
        return key_id in self.keys

    def session_cipher(self, key_id: str, salt: bytes, tenant: str, session_id: str) -> AESGCM:
        """AES-GCM keyed with the session key (derivation costs microseconds, cached anyway)."""
        return _session_cipher(self.keys[key_id], salt, tenant, session_id)


@lru_cache(maxsize=4096)
def _session_cipher(master: bytes, salt: bytes, tenant: str, session_id: str) -> AESGCM:
    info = _HKDF_INFO + b"\x00" + _lp(tenant.encode()) + _lp(session_id.encode())
    key = HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=salt, info=info).derive(master)
    return AESGCM(key)


def new_salt() -> bytes:
    return os.urandom(SALT_BYTES)


@dataclass(frozen=True)
class ChunkContext:
    """Everything a chunk's ciphertext is bound to."""

    tenant: str
    session_id: str
    version: int
    kind: int
    key_id: str

    def aad(self, index: int, last: bool) -> bytes:
        return b"".join(
            (
                _AAD_MAGIC,
                _lp(self.tenant.encode()),
                _lp(self.session_id.encode()),
                struct.pack(">QBI?", self.version, self.kind, index, last),
                _lp(self.key_id.encode()),
            )
        )


def seal_chunk(cipher: AESGCM, ctx: ChunkContext, index: int, last: bool, plaintext: bytes) -> bytes:
    """nonce || ciphertext+tag."""
    nonce = os.urandom(NONCE_BYTES)
    return nonce + cipher.encrypt(nonce, plaintext, ctx.aad(index, last))


def open_chunk(cipher: AESGCM, ctx: ChunkContext, index: int, last: bool, sealed: bytes) -> bytes:
    if len(sealed) < NONCE_BYTES + 16:
        raise IntegrityError(f"chunk {index} of version {ctx.version} is too short")
    try:
        return cipher.decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], ctx.aad(index, last))
    except InvalidTag as exc:
        raise IntegrityError(f"chunk {index} of version {ctx.version} failed authentication") from exc


def _lp(data: bytes) -> bytes:
    """Length-prefixed, so ("ab","c") and ("a","bc") give different AAD."""
    return struct.pack(">H", len(data)) + data
