"""Crypto cost per record: key derivation + encryption of 4 KiB.

Ours: vault_service.crypto (HKDF-SHA256 per session + AES-256-GCM with AAD),
with the derivation done every time and with the derivation cache hit.
Reference: the original Baileys design, PBKDF2-HMAC-SHA256 with 100,000
iterations per save + AES-256-CBC (PKCS7), no integrity.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from cryptography.hazmat.primitives import hashes, padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

from bench.context import Context
from bench.figures import Figure, Goal, median
from vault_service import crypto

RECORD_BYTES = 4096
PBKDF2_ITERATIONS = 100_000


def original(password: bytes, salt: bytes, data: bytes) -> bytes:
    """PBKDF2 100k + AES-256-CBC: what the original design did on every save."""
    key = PBKDF2HMAC(algorithm=hashes.SHA256(), length=32, salt=salt, iterations=PBKDF2_ITERATIONS).derive(password)
    iv = os.urandom(16)
    padder = padding.PKCS7(128).padder()
    padded = padder.update(data) + padder.finalize()
    encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    return iv + encryptor.update(padded) + encryptor.finalize()


def ours(keyring: crypto.Keyring, salt: bytes, data: bytes, cached: bool) -> bytes:
    """HKDF per session (optionally from the cache) + AES-256-GCM, as the vault seals a chunk."""
    if not cached:
        crypto._session_cipher.cache_clear()
    cipher = keyring.session_cipher(keyring.active_id, salt, "default", "bench-session")
    ctx = crypto.ChunkContext("default", "bench-session", 1, 2, keyring.active_id)
    return crypto.seal_chunk(cipher, ctx, 0, True, data)


def _per_op(fn: Callable[[], bytes], count: int) -> float:
    start = time.perf_counter()
    for _ in range(count):
        fn()
    return (time.perf_counter() - start) / count


def measure(rounds: int, ours_ops: int, orig_ops: int) -> dict[str, list[float]]:
    """Per-op seconds of each variant, one sample per round, variants alternating."""
    keyring = crypto.Keyring({"k1": os.urandom(32)}, "k1")
    salt, data, password = os.urandom(32), os.urandom(RECORD_BYTES), os.urandom(32)
    variants: dict[str, Callable[[], bytes]] = {
        "hkdf_gcm": lambda: ours(keyring, salt, data, cached=False),
        "pbkdf2_cbc": lambda: original(password, salt, data),
        "cached_gcm": lambda: ours(keyring, salt, data, cached=True),
    }
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            samples[name].append(_per_op(fn, orig_ops if name == "pbkdf2_cbc" else ours_ops))
    return samples


async def run(ctx: Context) -> list[Figure]:
    samples = measure(rounds=ctx.pick(10, 3), ours_ops=ctx.pick(2000, 200), orig_ops=ctx.pick(5, 1))
    reference = median(samples["pbkdf2_cbc"]) * 1e6
    note = "per 4 KiB record; reference: PBKDF2-HMAC-SHA256 100k + AES-256-CBC (original design)"
    return [
        Figure("crypto.hkdf_aes_gcm", median(samples["hkdf_gcm"]) * 1e6, "us", reference, Goal(100.0), note=note),
        Figure("crypto.cached_key_aes_gcm", median(samples["cached_gcm"]) * 1e6, "us", reference, note=note),
        Figure("crypto.pbkdf2_aes_cbc", reference, "us", note="the original design's cost per save, for the record"),
    ]
