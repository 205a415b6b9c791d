"""Crypto: key parsing, per-session keys, and what the associated data binds."""

from __future__ import annotations

import base64
import os

import pytest

from vault_service import crypto

KEY = os.urandom(32)


def test_master_key_formats() -> None:
    assert crypto.parse_master_key(KEY.hex()) == KEY
    assert crypto.parse_master_key(base64.b64encode(KEY).decode() + "\n") == KEY


@pytest.mark.parametrize(
    "text", ["", "abc", "00" * 32, "ab" * 32, base64.b64encode(os.urandom(16)).decode(), "zz" * 32, "0123" * 16]
)
def test_bad_or_weak_master_keys_are_refused(text: str) -> None:
    with pytest.raises(crypto.MasterKeyError):
        crypto.parse_master_key(text)


def _ring() -> crypto.Keyring:
    return crypto.Keyring({"k1": KEY, "k0": os.urandom(32)}, "k1")


def test_seal_open_and_every_binding() -> None:
    ring, salt = _ring(), crypto.new_salt()
    cipher = ring.session_cipher("k1", salt, "t", "s")
    ctx = crypto.ChunkContext("t", "s", 7, 2, "k1")
    sealed = crypto.seal_chunk(cipher, ctx, 3, False, b"secret")
    assert crypto.open_chunk(cipher, ctx, 3, False, sealed) == b"secret"
    assert crypto.seal_chunk(cipher, ctx, 3, False, b"secret") != sealed  # fresh nonce
    wrong = [
        (cipher, crypto.ChunkContext("t2", "s", 7, 2, "k1"), 3, False),
        (cipher, crypto.ChunkContext("t", "s2", 7, 2, "k1"), 3, False),
        (cipher, crypto.ChunkContext("t", "s", 8, 2, "k1"), 3, False),
        (cipher, crypto.ChunkContext("t", "s", 7, 1, "k1"), 3, False),
        (cipher, crypto.ChunkContext("t", "s", 7, 2, "k0"), 3, False),
        (cipher, ctx, 4, False),
        (cipher, ctx, 3, True),
        (ring.session_cipher("k1", crypto.new_salt(), "t", "s"), ctx, 3, False),
        (ring.session_cipher("k1", salt, "t", "other"), ctx, 3, False),
        (ring.session_cipher("k0", salt, "t", "s"), ctx, 3, False),
    ]
    for c, x, index, last in wrong:
        with pytest.raises(crypto.IntegrityError):
            crypto.open_chunk(c, x, index, last, sealed)
    with pytest.raises(crypto.IntegrityError):
        crypto.open_chunk(cipher, ctx, 3, False, sealed[:10])


def test_aad_fields_are_length_prefixed() -> None:
    a = crypto.ChunkContext("ab", "c", 1, 1, "k").aad(0, False)
    b = crypto.ChunkContext("a", "bc", 1, 1, "k").aad(0, False)
    assert a != b


def test_keyring_needs_its_active_key() -> None:
    with pytest.raises(crypto.MasterKeyError):
        crypto.Keyring({"k1": KEY}, "k2")
