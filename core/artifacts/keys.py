"""Artifact keys: one normal form, checked before any backend sees a key.

A key is a relative, ``/``-separated path such as ``models/churn/3/model.onnx``. Keys are
compared byte for byte by object stores, so the same name typed on two machines must
become the same key: surrounding whitespace is stripped and Unicode is normalised to NFC
(macOS file names arrive decomposed). Anything that could escape a backend's root or
means different things on different stores is rejected rather than repaired, so a bad
key fails loudly at the call that made it.
"""

from __future__ import annotations

import re
import unicodedata

from mlrig.errors import InvalidKeyError

#: S3's limit on a key, in UTF-8 bytes; the strictest store we ship decides.
MAX_KEY_BYTES = 1024

_DRIVE = re.compile(r"^[A-Za-z]:")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def normalize_key(key: str) -> str:
    """Return ``key`` in normal form, or raise :class:`InvalidKeyError` saying why not.

    Rules: a non-empty string; no leading ``/`` or drive letter (keys are relative);
    no backslash (a separator on Windows, an ordinary character on S3); no NUL or other
    control character; no empty, ``.`` or ``..`` segment (so no trailing ``/`` either);
    at most :data:`MAX_KEY_BYTES` bytes of UTF-8.
    """
    if not isinstance(key, str):
        msg = f"artifact key must be a string, not {type(key).__name__} ({key!r})"
        raise InvalidKeyError(msg)
    cleaned = unicodedata.normalize("NFC", key.strip())
    if not cleaned:
        msg = f"artifact key {key!r} is empty; give a relative path such as 'models/m/1/model.pkl'"
        raise InvalidKeyError(msg)
    _check(cleaned, original=key)
    return cleaned


def normalize_prefix(prefix: str) -> str:
    """Return a listing prefix in normal form (``""`` lists everything).

    A prefix follows the key rules except that it may end with ``/`` and its last
    segment may be partial (``models/ch`` matches ``models/churn/...``).
    """
    if not isinstance(prefix, str):
        msg = f"artifact prefix must be a string, not {type(prefix).__name__} ({prefix!r})"
        raise InvalidKeyError(msg)
    cleaned = unicodedata.normalize("NFC", prefix.strip())
    if not cleaned:
        return ""
    body = cleaned[:-1] if cleaned.endswith("/") else cleaned
    if not body:
        msg = f"artifact prefix {prefix!r} is absolute; use '' to list every key"
        raise InvalidKeyError(msg)
    _check(body, original=prefix, what="prefix")
    return cleaned


def _check(cleaned: str, *, original: str, what: str = "key") -> None:
    def bad(reason: str) -> InvalidKeyError:
        return InvalidKeyError(
            f"artifact {what} {original!r} {reason}",
            details={what: original},
        )

    if cleaned.startswith("/") or _DRIVE.match(cleaned):
        raise bad("is absolute; keys are relative paths such as 'models/m/1/model.pkl'")
    if "\\" in cleaned:
        raise bad("contains a backslash; separate segments with '/'")
    if _CONTROL.search(cleaned):
        raise bad("contains a NUL or other control character")
    for segment in cleaned.split("/"):
        if segment == "":
            raise bad("has an empty segment ('//' or a trailing '/')")
        if segment in (".", ".."):
            raise bad(f"has a {segment!r} segment; keys cannot step out of or around folders")
    if len(cleaned.encode("utf-8")) > MAX_KEY_BYTES:
        raise bad(f"is longer than {MAX_KEY_BYTES} bytes of UTF-8")
