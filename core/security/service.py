"""Users and tokens: create, list, revoke, authenticate."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
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

if TYPE_CHECKING:
    from mlrig.db import Database

USER_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,254}$"
#: the longest token lifetime, in days (as the API's schema says)
MAX_TOKEN_TTL_DAYS = 3650
_USER_NAME = re.compile(USER_NAME_PATTERN)


@dataclass(frozen=True)
class Principal:
    """Who is acting: a user (through a token) or the local operator."""

    name: str
    role: str
    user_id: uuid.UUID | None = None
    token_id: uuid.UUID | None = None

    def can(self, permission: Permission) -> bool:
        return role_allows(self.role, permission)

    def require(self, permission: Permission) -> None:
        """Raise :class:`PermissionDeniedError` unless this principal holds ``permission``."""
        if not self.can(permission):
            msg = (
                f"user {self.name!r} (role {self.role}) lacks the {permission.value!r} "
                f"permission; it needs the role {_lowest_role(permission)} or higher"
            )
            raise PermissionDeniedError(msg, details={"permission": permission.value})


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
        actor: Principal | None = None,
    ) -> dict[str, Any]:
        """Issue a token for ``user``; the plaintext is in the result and nowhere else.

        With ``actor``: anyone may create their own tokens, only an admin someone else's.
        """
        if actor is not None and user != actor.name:
            actor.require(Permission.ADMIN)
        if ttl_days is not None and not (
            type(ttl_days) is int and 1 <= ttl_days <= MAX_TOKEN_TTL_DAYS
        ):  # a huge one was an OverflowError
            msg = f"ttl_days must be an integer from 1 to {MAX_TOKEN_TTL_DAYS}, got {ttl_days!r}"
            raise ValidationError(msg)
        plaintext, prefix, digest = tokens.new_token()
        with self.db.session() as session:
            owner = self._user(session, user)
            expires = _now() + timedelta(days=ttl_days) if ttl_days else None
            token = ApiToken(
                user_id=owner.id,
                name=name,
                token_prefix=prefix,
                token_hash=digest,
                expires_at=expires,
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
                return Principal(user.name, user.role, user.id, token.id)
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
