"""Users, roles, API tokens, permission checks and the audit log."""

from mlrig.security.audit import AuditTrail
from mlrig.security.roles import PERMISSIONS, ROLES, Permission, role_allows
from mlrig.security.service import Principal, SecurityService

__all__ = [
    "PERMISSIONS",
    "ROLES",
    "AuditTrail",
    "Permission",
    "Principal",
    "SecurityService",
    "role_allows",
]
