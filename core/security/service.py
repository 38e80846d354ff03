"""Users and tokens: create, list, revoke, authenticate."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from mlrig.db.models.auth import ApiToken, User
from mlrig.errors import (
    AuthenticationError,
    ConflictError,
    NotFoundError,
    PermissionDeniedError,
    ValidationError,
)
from mlrig.security import tokens
from mlrig.security.roles import ROLES, Permission, role_allows
from mlrig.security.scopes import (
    covers,
    normalize_scopes,
    predict_targets,
    scope_permissions,
)

if TYPE_CHECKING:
    from mlrig.db import Database

USER_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,254}$"
#: the longest token lifetime, in days (as the API's schema says)
MAX_TOKEN_TTL_DAYS = 3650
_USER_NAME = re.compile(USER_NAME_PATTERN)


@dataclass(frozen=True)
class Principal:
    """Who is acting: a user (through a token) or the local operator.

    ``scopes`` narrows what the token may do within the role (:mod:`mlrig.security.scopes`;
    ``None``: everything the role allows). ``expires_at`` is the token's expiry (for
    caches, :class:`mlrig.serving.auth.TokenCache`)."""

    name: str
    role: str
    user_id: uuid.UUID | None = None
    token_id: uuid.UUID | None = None
    scopes: tuple[str, ...] | None = None
    expires_at: datetime | None = field(default=None, compare=False)
    # derived from scopes once: can() and may_predict() run on every request
    _granted: frozenset[Permission] | None = field(
        default=None, init=False, repr=False, compare=False
    )
    #: the deployments it may predict from: None for all (else names and ids; empty: none)
    _targets: frozenset[str] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.scopes is not None:
            scopes = tuple(self.scopes)
            object.__setattr__(self, "scopes", scopes)
            object.__setattr__(self, "_granted", scope_permissions(scopes))
            object.__setattr__(self, "_targets", predict_targets(scopes))
        if not self.can(Permission.PREDICT):
            object.__setattr__(self, "_targets", frozenset())

    def can(self, permission: Permission) -> bool:
        """Whether the role holds ``permission`` and the scopes (if any) include it; for
        predict, whether the token may predict from some deployment (which ones:
        :meth:`may_predict`)."""
        if not role_allows(self.role, permission):
            return False
        return self._granted is None or permission in self._granted

    def may_predict(self, deployment_id: str, deployment_name: str) -> bool:
        """Whether this principal may ask the deployment (its id and name) for
        predictions: the role holds predict and the scopes (if any) name it or all."""
        targets = self._targets  # worked out once, in __post_init__
        return targets is None or deployment_id in targets or deployment_name in targets

    def require(self, permission: Permission) -> None:
        """Raise :class:`PermissionDeniedError` unless this principal holds ``permission``."""
        if self.can(permission):
            return
        if role_allows(self.role, permission):  # the role has it: the token's scopes don't
            msg = (
                f"this token of user {self.name!r} is limited to the scopes "
                f"{', '.join(self.scopes or ())}; it lacks the {permission.value!r} permission "
                "(create a token with that scope, or without scopes)"
            )
            details = {"permission": permission.value, "scopes": list(self.scopes or ())}
            raise PermissionDeniedError(msg, details=details)
        msg = (
            f"user {self.name!r} (role {self.role}) lacks the {permission.value!r} "
            f"permission; it needs the role {_lowest_role(permission)} or higher"
        )
        raise PermissionDeniedError(msg, details={"permission": permission.value})

    def require_predict(self, deployment_id: str, deployment_name: str) -> None:
        """Raise :class:`PermissionDeniedError` (403) unless :meth:`may_predict`."""
        if self.may_predict(deployment_id, deployment_name):
            return
        self.require(Permission.PREDICT)  # the role's or the scopes' refusal, if that
        msg = (
            f"this token of user {self.name!r} may not predict from deployment "
            f"{deployment_name!r}; its scopes are: {', '.join(self.scopes or ())}"
        )
        details = {
            "permission": Permission.PREDICT.value,
            "deployment": deployment_name,
            "scopes": list(self.scopes or ()),
        }
        raise PermissionDeniedError(msg, details=details)


def _lowest_role(permission: Permission) -> str:
    return next(r for r in ROLES if role_allows(r, permission))


def _now() -> datetime:
    return datetime.now(timezone.utc)


def user_view(user: User) -> dict[str, Any]:
    return {
        "id": str(user.id),
        "name": user.name,
        "role": user.role,
        "email": user.email,
        "disabled": user.disabled,
        "created_at": user.created_at.isoformat() if user.created_at else None,
    }


def token_view(token: ApiToken, user_name: str) -> dict[str, Any]:
    def iso(value: datetime | None) -> str | None:
        return value.isoformat() if value else None

    return {
        "id": str(token.id),
        "name": token.name,
        "user": user_name,
        "prefix": token.token_prefix,
        "created_at": iso(token.created_at),
        "last_used_at": iso(token.last_used_at),
        "expires_at": iso(token.expires_at),
        "revoked_at": iso(token.revoked_at),
        "scopes": list(token.scopes) if token.scopes is not None else None,
    }


class SecurityService:
    """Users and API tokens over the database."""

    def __init__(self, db: Database) -> None:
        self.db = db

    # --- users ------------------------------------------------------------------------

    def create_user(self, *, name: str, role: str, email: str | None = None) -> dict[str, Any]:
        """Create a user; :class:`ConflictError` if the name is taken."""
        if not _USER_NAME.match(name):
            msg = f"invalid user name {name!r}: use letters, digits and . _ @ - (max 255)"
            raise ValidationError(msg)
        if role not in ROLES:
            msg = f"unknown role {role!r}; roles are: {', '.join(ROLES)}"
            raise ValidationError(msg)
        try:
            with self.db.session() as session:
                user = User(name=name, role=role, email=email)
                session.add(user)
                session.flush()
                return user_view(user)
        except IntegrityError:
            msg = f"a user named {name!r} already exists"
            raise ConflictError(msg) from None

    def list_users(self) -> list[dict[str, Any]]:
        with self.db.session() as session:
            return [user_view(u) for u in session.scalars(select(User).order_by(User.name))]

    def has_users(self) -> bool:
        with self.db.session() as session:
            return session.scalar(select(User.id).limit(1)) is not None

    def _user(self, session: Any, name: str) -> User:
        user = session.scalar(select(User).where(User.name == name))
        if user is None:
            msg = f"no user named {name!r}; create one with: mlrig users create {name} --role ROLE"
            raise NotFoundError(msg)
        return user

    # --- tokens -----------------------------------------------------------------------

    def create_token(
        self,
        *,
        user: str,
        name: str = "default",
        ttl_days: int | None = None,
        scopes: list[str] | tuple[str, ...] | None = None,
        actor: Principal | None = None,
    ) -> dict[str, Any]:
        """Issue a token for ``user``; the plaintext is in the result and nowhere else.

        ``scopes`` narrows the token within the user's role (:mod:`mlrig.security.scopes`;
        ``None``: everything the role allows): :class:`ValidationError` (422) names an
        entry that is malformed or that the user's role does not hold.
        With ``actor``: anyone may create their own tokens, only an admin someone else's;
        an actor acting through a scoped token may hand on only scopes it holds itself.
        """
        if actor is not None and user != actor.name:
            actor.require(Permission.ADMIN)
        scopes = normalize_scopes(scopes)
        if actor is not None and actor.scopes is not None:
            # else a predict-only token could mint itself an unscoped one
            missing = covers(actor.scopes, scopes) if scopes is not None else ["(all)"]
            if missing:
                msg = (
                    "a scoped token may create only tokens within its own scopes "
                    f"({', '.join(actor.scopes)}); not: {', '.join(missing)}"
                )
                raise PermissionDeniedError(msg, details={"scopes": missing})
        if ttl_days is not None and not (
            type(ttl_days) is int and 1 <= ttl_days <= MAX_TOKEN_TTL_DAYS
        ):  # a huge one was an OverflowError
            msg = f"ttl_days must be an integer from 1 to {MAX_TOKEN_TTL_DAYS}, got {ttl_days!r}"
            raise ValidationError(msg)
        plaintext, prefix, digest = tokens.new_token()
        with self.db.session() as session:
            owner = self._user(session, user)
            if scopes is not None:
                for scope in scopes:
                    if not all(role_allows(owner.role, p) for p in scope_permissions([scope])):
                        msg = (
                            f"scope {scope!r} is beyond what user {owner.name!r} "
                            f"(role {owner.role}) may do"
                        )
                        raise PermissionDeniedError(msg, details={"scope": scope})
            expires = _now() + timedelta(days=ttl_days) if ttl_days else None
            token = ApiToken(
                user_id=owner.id,
                name=name,
                token_prefix=prefix,
                token_hash=digest,
                expires_at=expires,
                scopes=list(scopes) if scopes is not None else None,
            )
            session.add(token)
            session.flush()
            return {**token_view(token, owner.name), "token": plaintext}

    def list_tokens(
        self, *, user: str | None = None, actor: Principal | None = None
    ) -> list[dict[str, Any]]:
        """The tokens (of ``user``), never their secrets; with a non-admin ``actor``, only
        the actor's own."""
        if actor is not None and not actor.can(Permission.ADMIN):
            if user is not None and user != actor.name:
                actor.require(Permission.ADMIN)
            user = actor.name
        with self.db.session() as session:
            query = select(ApiToken, User.name).join(User).order_by(ApiToken.created_at)
            if user is not None:
                query = query.where(User.name == user)
            return [token_view(t, n) for t, n in session.execute(query)]

    def revoke_token(self, token_id: str, *, actor: Principal | None = None) -> dict[str, Any]:
        """Revoke a token by id (or by its prefix); idempotent. With a non-admin ``actor``,
        only one of the actor's own (another user's token is reported as not found)."""
        with self.db.session() as session:
            query = select(ApiToken, User.name).join(User)
            try:
                query = query.where(ApiToken.id == uuid.UUID(token_id))
            except ValueError:
                query = query.where(ApiToken.token_prefix == token_id)
            if actor is not None and not actor.can(Permission.ADMIN):
                query = query.where(User.name == actor.name)
            row = session.execute(query).first()
            if row is None:
                msg = f"no token with id or prefix {token_id!r}; see: mlrig tokens list"
                raise NotFoundError(msg)
            token, owner = row
            if token.revoked_at is None:
                token.revoked_at = _now()
            return token_view(token, owner)

    def authenticate(self, plaintext: str | None) -> Principal:
        """The principal a bearer token stands for; :class:`AuthenticationError` if none."""
        if not plaintext:
            msg = "this endpoint needs a token: send 'Authorization: Bearer <token>'"
            raise AuthenticationError(msg)
        prefix = tokens.prefix_of(plaintext)
        if prefix is None:
            msg = "malformed token; create one with: mlrig tokens create --user NAME"
            raise AuthenticationError(msg)
        with self.db.session() as session:
            rows = session.execute(
                select(ApiToken, User).join(User).where(ApiToken.token_prefix == prefix)
            ).all()
            for token, user in rows:
                if not tokens.matches(plaintext, token.token_hash):
                    continue
                if token.revoked_at is not None:
                    msg = "this token was revoked"
                    raise AuthenticationError(msg)
                if token.expires_at is not None and token.expires_at <= _now():
                    msg = "this token has expired"
                    raise AuthenticationError(msg)
                if user.disabled:
                    msg = f"user {user.name!r} is disabled"
                    raise AuthenticationError(msg)
                # last_used_at to the minute: no write per request on a busy token
                now = _now()
                if token.last_used_at is None or now - token.last_used_at > timedelta(minutes=1):
                    token.last_used_at = now
                scopes = tuple(token.scopes) if token.scopes is not None else None
                return Principal(user.name, user.role, user.id, token.id, scopes, token.expires_at)
        msg = "unknown token"
        raise AuthenticationError(msg)

    def bootstrap_admin(self) -> dict[str, Any] | None:
        """On an empty user table: create ``admin`` and a token for it; else ``None``."""
        if self.has_users():
            return None
        try:
            self.create_user(name="admin", role="admin")
        except ConflictError:  # another server process won the race
            return None
        return self.create_token(user="admin", name="bootstrap")
