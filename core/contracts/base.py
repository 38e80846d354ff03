"""What every backend class shares: a user-facing name and a validated options model."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict
from pydantic import ValidationError as PydanticValidationError

from mlrig.errors import ConfigError


class NoOptions(BaseModel):
    """Options model of a backend that takes none."""

    model_config = ConfigDict(extra="forbid")


class Backend:
    """Mixin of every backend contract.

    ``Options`` is the pydantic model of the backend's ``[<kind>.<name>]`` config table;
    :meth:`from_options` validates a raw mapping against it so a typo in a backend
    option fails at start with the key's name, like any other config error.
    """

    Options: ClassVar[type[BaseModel]] = NoOptions

    @classmethod
    def from_options(cls, raw: dict[str, Any], *, where: str) -> Any:
        """Validate ``raw`` against :attr:`Options` and build the backend."""
        try:
            options = cls.Options.model_validate(raw)
        except PydanticValidationError as exc:
            first = exc.errors()[0]
            key = ".".join([where, *(str(p) for p in first["loc"])])
            msg = f"config error: {key}: {first['msg'].lower()} (found {first.get('input')!r})"
            raise ConfigError(msg) from None
        return cls(options)

    def __init__(self, options: BaseModel) -> None:
        self.options = options
