"""The exceptions mlrig raises.

Every error a user can cause is an :class:`MlrigError` (or a subclass) whose message says
what was wrong, what was expected and what to do next. The API maps each class to an HTTP
status and a stable ``code``; the CLI prints the message on one line and exits non-zero.
"""

from __future__ import annotations

from typing import Any


class MlrigError(Exception):
    """Base class of every error mlrig reports to a user."""

    code = "error"
    http_status = 400

    def __init__(self, message: str, *, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}


class ConfigError(MlrigError):
    """The configuration file or an ``MLRIG_*`` override is invalid."""

    code = "config_error"


class SchemaOutOfDateError(ConfigError):
    """The database schema is not at the revision this mlrig needs (run ``mlrig db upgrade``)."""

    code = "schema_out_of_date"
    http_status = 503


class PluginError(MlrigError):
    """A backend or hook plugin is unknown, broken or misses its optional dependency."""

    code = "plugin_error"


class MissingExtraError(PluginError):
    """A backend needs an optional dependency that is not installed."""

    code = "missing_extra"


class ValidationError(MlrigError):
    """Input that does not have the expected shape or value."""

    code = "validation_error"
    http_status = 422


class TooLargeError(ValidationError):
    """Input past a configured size limit (a dataset the server was asked to read)."""

    code = "too_large"
    http_status = 413


class PayloadTooLargeError(TooLargeError):
    """A request body over the limit of its route class (``[api] max_*_bytes``)."""

    code = "payload_too_large"


class NotFoundError(MlrigError):
    """The object a request names does not exist."""

    code = "not_found"
    http_status = 404


class ConflictError(MlrigError):
    """The request conflicts with the current state (duplicate, still in use...)."""

    code = "conflict"
    http_status = 409


class AuthenticationError(MlrigError):
    """No credentials, or credentials that are not valid."""

    code = "unauthenticated"
    http_status = 401


class PermissionDeniedError(MlrigError):
    """Valid credentials without the permission the action needs."""

    code = "forbidden"
    http_status = 403


class StorageError(MlrigError):
    """The artifact store failed to read or write."""

    code = "storage_error"
    http_status = 502


class ArtifactNotFoundError(NotFoundError):
    """No artifact is stored under the given key."""

    code = "artifact_not_found"


class InvalidKeyError(ValidationError):
    """An artifact key is empty, absolute, or escapes its root."""

    code = "invalid_key"


class CorruptArtifactError(StorageError):
    """The bytes read back do not match the recorded size or sha256."""

    code = "corrupt_artifact"
    http_status = 500


class EncryptionKeyError(MlrigError):
    """The master key is missing or is not the one the artifact was encrypted with."""

    code = "encryption_key_error"
    http_status = 500
