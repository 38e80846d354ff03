"""Roles and the permissions each one grants.

Roles are cumulative: each includes the rights of the ones before it
(viewer < developer < deployer < admin).
"""

from __future__ import annotations

from enum import Enum

ROLES = ("viewer", "developer", "deployer", "admin")


class Permission(str, Enum):
    """What an endpoint or a command needs."""

    READ = "read"  # list and show anything but the audit log and users
    PREDICT = "predict"  # ask a deployment for predictions (a token's scopes may narrow it)
    WRITE = "write"  # create experiments, register models, log metrics, upload artifacts
    DEPLOY = "deploy"  # deploy, scale, run A/B tests
    APPROVE = "approve"  # decide approval requests, move versions to production
    DELETE = "delete"  # delete (and restore) models and versions
    ADMIN = "admin"  # users, tokens of others, the audit log
    READ_PII = "read_pii"  # feature values tagged pii in the clear (others get them masked)


#: the lowest role that holds each permission
PERMISSIONS: dict[Permission, str] = {
    Permission.READ: "viewer",
    Permission.PREDICT: "viewer",
    Permission.WRITE: "developer",
    Permission.DEPLOY: "deployer",
    Permission.APPROVE: "deployer",
    Permission.DELETE: "deployer",
    Permission.ADMIN: "admin",
    Permission.READ_PII: "deployer",
}


def role_allows(role: str, permission: Permission) -> bool:
    """Whether ``role`` holds ``permission``."""
    if role not in ROLES:
        return False
    return ROLES.index(role) >= ROLES.index(PERMISSIONS[permission])
