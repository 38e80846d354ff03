"""API tokens: random, shown once, stored as a sha256 with a short prefix for lookup."""

from __future__ import annotations

import hashlib
import hmac
import secrets

TOKEN_MARK = "mlr"
PREFIX_LENGTH = 8


def new_token() -> tuple[str, str, str]:
    """A fresh token: ``(plaintext, prefix, sha256 hex)``. Only the last two are stored."""
    prefix = secrets.token_hex(PREFIX_LENGTH // 2)
    plaintext = f"{TOKEN_MARK}_{prefix}_{secrets.token_urlsafe(32)}"
    return plaintext, prefix, hash_token(plaintext)


def hash_token(plaintext: str) -> str:
    """The stored form of a token (tokens are 256-bit random: a plain hash is enough)."""
    return hashlib.sha256(plaintext.encode("utf-8")).hexdigest()


def prefix_of(plaintext: str) -> str | None:
    """The lookup prefix of a well-formed token, else ``None``."""
    parts = plaintext.split("_", 2)
    if len(parts) != 3 or parts[0] != TOKEN_MARK or len(parts[1]) != PREFIX_LENGTH:
        return None
    return parts[1]


def matches(plaintext: str, stored_hash: str) -> bool:
    """Constant-time comparison of a presented token with a stored hash."""
    return hmac.compare_digest(hash_token(plaintext), stored_hash)
