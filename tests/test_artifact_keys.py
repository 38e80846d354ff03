"""Artifact key rules: one normal form, and clear refusals."""

from __future__ import annotations

import unicodedata

import pytest

from mlrig.artifacts import normalize_key, normalize_prefix
from mlrig.artifacts.keys import MAX_KEY_BYTES
from mlrig.errors import InvalidKeyError


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("model.pkl", "model.pkl"),
        ("models/churn/3/model.onnx", "models/churn/3/model.onnx"),
        ("  models/a.bin \n", "models/a.bin"),
        ("a/.hidden/b..c/.../x", "a/.hidden/b..c/.../x"),  # dots inside names are fine
        ("ünï/cødé 1.bin", "ünï/cødé 1.bin"),
    ],
)
def test_valid_keys(key: str, expected: str) -> None:
    assert normalize_key(key) == expected


def test_unicode_is_nfc() -> None:
    decomposed = unicodedata.normalize("NFD", "café/modèle.bin")
    assert decomposed != "café/modèle.bin"
    assert normalize_key(decomposed) == "café/modèle.bin"


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("/etc/passwd", "absolute"),
        ("C:/Users/x", "absolute"),
        ("c:model", "absolute"),
        ("a\\b", "backslash"),
        ("a\x00b", "control character"),
        ("a\nb", "control character"),
        ("a//b", "empty segment"),
        ("a/b/", "empty segment"),
        ("..", "'..' segment"),
        ("../x", "'..' segment"),
        ("a/../../x", "'..' segment"),
        ("./a", "'.' segment"),
        ("a/./b", "'.' segment"),
        ("x" * (MAX_KEY_BYTES + 1), f"longer than {MAX_KEY_BYTES} bytes"),
        ("é" * (MAX_KEY_BYTES // 2 + 1), f"longer than {MAX_KEY_BYTES} bytes"),
    ],
)
def test_invalid_keys(key: str, reason: str) -> None:
    with pytest.raises(InvalidKeyError) as info:
        normalize_key(key)
    assert reason in info.value.message
    assert repr(key)[:40] in info.value.message  # names the bad value


def test_longest_key_is_accepted() -> None:
    assert normalize_key("x" * MAX_KEY_BYTES) == "x" * MAX_KEY_BYTES


@pytest.mark.parametrize("key", [None, 3, b"bytes/key"])
def test_non_string_key(key: object) -> None:
    with pytest.raises(InvalidKeyError, match="must be a string"):
        normalize_key(key)  # type: ignore[arg-type]


def test_invalid_key_is_a_422_validation_error() -> None:
    with pytest.raises(InvalidKeyError) as info:
        normalize_key("../x")
    assert info.value.http_status == 422 and info.value.code == "invalid_key"


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [("", ""), ("  ", ""), ("models/", "models/"), ("models/ch", "models/ch"), ("m", "m")],
)
def test_valid_prefixes(prefix: str, expected: str) -> None:
    assert normalize_prefix(prefix) == expected


@pytest.mark.parametrize("prefix", ["/", "/models", "../", "a//", "a/../", "a\\b"])
def test_invalid_prefixes(prefix: str) -> None:
    with pytest.raises(InvalidKeyError, match="prefix"):
        normalize_prefix(prefix)
