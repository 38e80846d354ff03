"""Token scopes: what a token is narrowed to, within its user's role.

A token's ``scopes`` is ``None`` (everything the role allows) or a list of entries:

- a permission name (``"read"``, ``"write"``, ``"deploy"``, ...): that permission, and
  only that one (``"write"`` does not imply ``"read"``: list both);
- ``"predict"`` or ``"predict:*"``: predictions from every deployment;
- ``"predict:<deployment name or id>"``: predictions from that deployment only.

A scoped token holds what its scopes list AND its role allows: a scope never raises a
role, it only narrows it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from mlrig.errors import ValidationError
from mlrig.security.roles import Permission
from mlrig.validation import scrub

PREDICT_PREFIX = "predict:"
#: the scope of predictions from every deployment (``"predict"`` means the same)
PREDICT_ANY = "predict:*"
#: the most entries one token may carry
MAX_SCOPES = 100
#: a deployment's name or id after ``predict:``: what a deployment name may be
#: (mlrig.serving.spec.NAME_PATTERN; a uuid fits it too)
_TARGET = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_PERMISSIONS = {p.value: p for p in Permission}
#: every valid scope entry, for schemas (the API's TokenCreate)
SCOPE_PATTERN = (
    rf"^({'|'.join(_PERMISSIONS)}|predict:\*|predict:[A-Za-z0-9][A-Za-z0-9._-]{{0,99}})$"
)


def _invalid(entry: object, why: str) -> ValidationError:
    return ValidationError(
        f"invalid scope {entry!r}: {why}; a scope is a permission "
        f"({', '.join(_PERMISSIONS)}), 'predict:*' or 'predict:<deployment name or id>'",
        # scrubbed: a lone surrogate (a CLI argument's bad byte) could not be sent as JSON
        details={"scope": scrub(entry) if isinstance(entry, str) else repr(entry)},
    )


def normalize_scopes(scopes: Iterable[str] | None) -> tuple[str, ...] | None:
    """Check ``scopes`` and return them without duplicates (``"predict"`` is written
    ``"predict:*"``), in the given order; ``None`` stays ``None``.

    :class:`ValidationError` (422) names the first bad entry; an empty list is refused
    (a token that may do nothing is a mistake: leave the scopes out for the role's).
    """
    if scopes is None:
        return None
    if isinstance(scopes, str):  # a lone string is a list of characters to iter()
        scopes = [scopes]
    entries = list(scopes)
    if not entries:
        msg = "scopes must not be empty; leave them out for everything the role allows"
        raise ValidationError(msg, details={"scopes": []})
    if len(entries) > MAX_SCOPES:
        msg = f"at most {MAX_SCOPES} scopes, got {len(entries)}"
        raise ValidationError(msg, details={"count": len(entries)})
    seen: dict[str, None] = {}
    for entry in entries:
        if not isinstance(entry, str):
            raise _invalid(entry, "not a string")
        if entry == Permission.PREDICT.value:
            entry = PREDICT_ANY
        elif entry.startswith(PREDICT_PREFIX):
            target = entry[len(PREDICT_PREFIX) :]
            if target != "*" and not _TARGET.fullmatch(target):
                raise _invalid(
                    entry,
                    "the deployment must be a name or id (letters, digits, . _ -; at most 100)",
                )
        elif entry not in _PERMISSIONS:
            raise _invalid(entry, "unknown permission")
        seen[entry] = None
    return tuple(seen)


def scope_permissions(scopes: Iterable[str]) -> frozenset[Permission]:
    """The permissions ``scopes`` name (any ``predict:...`` entry counts as predict)."""
    found = set()
    for entry in scopes:
        if entry.startswith(PREDICT_PREFIX):
            found.add(Permission.PREDICT)
        elif entry in _PERMISSIONS:
            found.add(_PERMISSIONS[entry])
    return frozenset(found)


def predict_targets(scopes: Iterable[str]) -> frozenset[str] | None:
    """The deployments ``scopes`` may predict from: ``None`` for all, else the names and
    ids listed (empty: none)."""
    targets = set()
    for entry in scopes:
        if entry in (PREDICT_ANY, Permission.PREDICT.value):
            return None
        if entry.startswith(PREDICT_PREFIX):
            targets.add(entry[len(PREDICT_PREFIX) :])
    return frozenset(targets)


def covers(held: Iterable[str], wanted: Iterable[str]) -> list[str]:
    """The entries of ``wanted`` that ``held`` does not cover (empty: all covered).

    For a scoped token creating another token: it may hand on only what it has."""
    held = tuple(held)
    permissions = scope_permissions(held)
    targets = predict_targets(held)
    missing = []
    for entry in wanted:
        if entry.startswith(PREDICT_PREFIX):
            target = entry[len(PREDICT_PREFIX) :]
            ok = targets is None or (target != "*" and target in targets)
        else:
            ok = _PERMISSIONS[entry] in permissions
        if not ok:
            missing.append(entry)
    return missing
