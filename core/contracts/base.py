"""What every backend class shares: a user-facing name and a validated options model."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict


class NoOptions(BaseModel):
    """Options model of a backend that takes none."""

    model_config = ConfigDict(extra="forbid")


class Backend:
    """Mixin of every backend contract.

    ``Options`` is the pydantic model of the backend's ``[<kind>.<name>]`` config table;
    :meth:`from_options` validates a raw mapping against it so a typo in a backend
    option fails at start with the key's name, like any other config error. Options typed
    :data:`mlrig.config.ConfigPath` are resolved against the config file's folder.
    """

    Options: ClassVar[type[BaseModel]] = NoOptions

    @classmethod
    def from_options(cls, raw: dict[str, Any], *, where: str, base_dir: Path | None = None) -> Any:
        """Validate ``raw`` against :attr:`Options` and build the backend.

        :param where: the option table's place in the config (``storage.s3``), for errors.
        :param base_dir: the folder relative :data:`~mlrig.config.ConfigPath` options are
            resolved against (the platform passes the config file's folder).
        """
        from mlrig.config import validate_options

        return cls(validate_options(cls.Options, raw, where=where, base_dir=base_dir))

    def __init__(self, options: BaseModel) -> None:
        self.options = options
