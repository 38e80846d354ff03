"""Deployments, users, tokens and the audit log of a server, with the signatures of
the deployment, security and audit services that the CLI uses."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from mlrig.remote import RemoteService, params, segment

if TYPE_CHECKING:
    from mlrig.security import Principal


class RemoteDeployments(RemoteService):
    """``/api/ml/deployments``."""

    attribute = "deployments"

    def create(
        self, *, name: str, model: str, actor: Principal | None = None, **fields: Any
    ) -> dict[str, Any]:
        body = {"name": name, "model": model, **params(**fields)}
        return self.http.request("POST", "/deployments", json=body)

    def get(self, ref: str) -> dict[str, Any]:
        return self.http.request("GET", f"/deployments/{segment(ref)}")

    def list(
        self,
        *,
        status: str | None = None,
        environment: str | None = None,
        model: str | None = None,
        limit: int = 100,
        offset: int = 0,
        cursor: str | None = None,
    ) -> dict[str, Any]:
        query = params(
            status=status,
            environment=environment,
            model=model,
            limit=limit,
            offset=offset or None,
            cursor=cursor,
        )
        return self.http.request("GET", "/deployments", params=query)

    def update(self, ref: str, *, actor: Principal | None = None, **changes: Any) -> dict[str, Any]:
        return self.http.request("PUT", f"/deployments/{segment(ref)}", json=changes)

    def delete(self, ref: str, *, actor: Principal | None = None) -> dict[str, Any]:
        return self.http.request("DELETE", f"/deployments/{segment(ref)}")


class RemoteSecurity(RemoteService):
    """``/api/ml/users`` and ``/api/ml/tokens``."""

    attribute = "security"

    def create_user(self, *, name: str, role: str, email: str | None = None) -> dict[str, Any]:
        body = params(name=name, role=role, email=email)
        return self.http.request("POST", "/users", json=body)

    def list_users(self) -> list[dict[str, Any]]:
        return self.http.request("GET", "/users")["items"]

    def create_token(
        self,
        *,
        user: str,
        name: str = "default",
        ttl_days: int | None = None,
        scopes: list[str] | tuple[str, ...] | None = None,
        actor: Principal | None = None,
    ) -> dict[str, Any]:
        body = params(
            user=user, name=name, ttl_days=ttl_days, scopes=list(scopes) if scopes else None
        )
        return self.http.request("POST", "/tokens", json=body)

    def list_tokens(
        self, *, user: str | None = None, actor: Principal | None = None
    ) -> list[dict[str, Any]]:
        """The tokens the server shows the caller (theirs; all for an admin), of ``user``."""
        from mlrig.security.roles import Permission

        if actor is not None and user is not None and user != actor.name:
            actor.require(Permission.ADMIN)  # as the service: another's tokens are admin's
        rows = self.http.request("GET", "/tokens")["items"]
        return [t for t in rows if user is None or t["user"] == user]

    def revoke_token(self, token_id: str, *, actor: Principal | None = None) -> dict[str, Any]:
        return self.http.request("DELETE", f"/tokens/{segment(token_id)}")


class RemoteAudit(RemoteService):
    """``GET /api/ml/audit``; the server writes the entries of its own routes."""

    attribute = "audit"

    def record(self, **_entry: Any) -> None:
        """Nothing: the server audits every write it serves, as the token's user."""

    def query(
        self,
        *,
        since: datetime | None = None,
        actor: str | None = None,
        action: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[dict[str, Any]]:
        if offset:
            msg = "the audit route pages by cursor, not by offset"
            raise ValueError(msg)
        query = params(
            since=since.isoformat() if since else None, actor=actor, action=action, limit=limit
        )
        return self.http.request("GET", "/audit", params=query)["items"]
