"""Validation of user-chosen names: model names, version names, aliases, artifact paths."""

from __future__ import annotations

import re

from mlrig.errors import ValidationError

#: the patterns, also in the API's schema (mlrig.api.types)
MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$"
VERSION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,99}$"
ALIAS_PATTERN = r"^[A-Za-z][A-Za-z0-9_-]{0,62}$"
_NAME = re.compile(MODEL_NAME_PATTERN)
_VERSION = re.compile(VERSION_PATTERN)
_ALIAS = re.compile(ALIAS_PATTERN)


def check_model_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        msg = f"invalid model name {name!r}: letters, digits and . _ - (1-255, no slash)"
        raise ValidationError(msg)
    return name


def check_version_name(version: str) -> str:
    if not isinstance(version, str) or not _VERSION.match(version):
        msg = f"invalid version {version!r}: letters, digits and . _ + - (1-100)"
        raise ValidationError(msg)
    return version


def check_alias(alias: str) -> str:
    if not isinstance(alias, str) or not _ALIAS.match(alias) or alias.isdigit():
        msg = f"invalid alias {alias!r}: a letter, then letters, digits, _ or - (max 63)"
        raise ValidationError(msg)
    return alias
