"""Users, roles, API tokens, permission checks and the audit log.

The names are imported on first use: ``mlrig.security.roles`` is needed by the CLI at
start, the ORM-backed services only when a command touches the database.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "AuditTrail": "mlrig.security.audit",
    "PERMISSIONS": "mlrig.security.roles",
    "ROLES": "mlrig.security.roles",
    "Permission": "mlrig.security.roles",
    "role_allows": "mlrig.security.roles",
    "Principal": "mlrig.security.service",
    "SecurityService": "mlrig.security.service",
}

__all__ = [
    "PERMISSIONS",
    "ROLES",
    "AuditTrail",
    "Permission",
    "Principal",
    "SecurityService",
    "role_allows",
]

if TYPE_CHECKING:
    from mlrig.security.audit import AuditTrail
    from mlrig.security.roles import PERMISSIONS, ROLES, Permission, role_allows
    from mlrig.security.service import Principal, SecurityService


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        msg = f"module 'mlrig.security' has no attribute {name!r}"
        raise AttributeError(msg)
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
