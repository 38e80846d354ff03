"""A CLI runner in both modes, for a CLI test suite that neither mode lets rot.

``cli_mode`` is parametrised ``embedded`` | ``remote``: the same installation (SQLite and
local storage in a temporary folder), driven by ``mlrig --config ...`` in this process, or
by ``mlrig --url ... --token ...`` against a uvicorn server of that installation on
loopback (the CLI then gets a config path that does not exist: it must not open the
database). Both act as one admin user, so the outputs compare::

    pytest_plugins = ["mlrig.testing.cli_modes"]

    def test_models_list(cli_mode):
        cli_mode.platform.registry.create_model(name="iris", actor=ADMIN)
        result = cli_mode("models", "list", "--json")
        assert result.exit_code == 0
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from click.testing import Result

    from mlrig.platform import Platform
    from mlrig.security import Principal

MODES = ("embedded", "remote")
#: the admin user both modes act as
ADMIN_USER = "cli-admin"
#: variables that would point the CLI elsewhere than the test installation
_ISOLATED_ENV = {"MLRIG_URL": None, "MLRIG_TOKEN": None, "MLRIG_CONFIG": None}


@dataclass
class CliMode:
    """``cli_mode(*args, token=None, input=None)`` runs ``mlrig ARGS`` in this mode."""

    mode: str
    #: the installation, for setting things up and checking what commands did
    platform: Platform
    config: Path
    admin_token: str
    url: str | None = None

    @property
    def admin(self) -> Principal:
        """The admin principal the commands act as (for setting things up)."""
        return self.platform.security.authenticate(self.admin_token)

    def args(self, token: str | None = None) -> list[str]:
        """The global options of this mode."""
        token = token or self.admin_token
        if self.url is None:
            return ["--config", str(self.config), "--token", token]
        missing = self.config.with_name("no-such-dir") / "mlrig.toml"
        return ["--config", str(missing), "--url", self.url, "--token", token]

    def __call__(self, *args: str, token: str | None = None, input: str | None = None) -> Result:
        from click.testing import CliRunner

        from mlrig.cli.context import CliState
        from mlrig.cli.main import build_cli

        state = CliState()
        try:
            return CliRunner().invoke(
                build_cli(), [*self.args(token), *args], obj=state, input=input, env=_ISOLATED_ENV
            )
        finally:
            if state._platform is not None:
                state._platform.close()


def write_config(home: Path) -> Path:
    """An ``mlrig.toml`` for SQLite and local storage under ``home``."""
    home.mkdir(parents=True, exist_ok=True)
    config = home / "mlrig.toml"
    database, artifacts = (home / "mlrig.db").as_posix(), (home / "artifacts").as_posix()
    config.write_text(
        f'[database]\nurl = "sqlite:///{database}"\n'
        f'[storage]\nbackend = "local"\n[storage.local]\nroot = "{artifacts}"\n'
    )
    return config


@contextlib.contextmanager
def cli_in_mode(mode: str, home: Path) -> Iterator[CliMode]:
    """A fresh installation under ``home`` and a :class:`CliMode` runner for it."""
    from mlrig.platform import Platform

    if mode not in MODES:
        msg = f"unknown CLI mode {mode!r}; modes: {', '.join(MODES)}"
        raise ValueError(msg)
    config = write_config(home)
    platform = Platform.from_config(config)
    try:
        platform.security.create_user(name=ADMIN_USER, role="admin")
        token = platform.security.create_token(user=ADMIN_USER, name="cli-tests")["token"]
        if mode == "embedded":
            yield CliMode(mode, platform, config, token)
            return
        from mlrig.api import create_app
        from mlrig.testing.fixtures import serve

        with serve(create_app(platform)) as url:
            yield CliMode(mode, platform, config, token, url=url)
    finally:
        platform.close()


@pytest.fixture(params=MODES)
def cli_mode(request: Any, tmp_path: Path) -> Iterator[CliMode]:
    """The CLI against a fresh installation, embedded and then against its server."""
    with cli_in_mode(request.param, tmp_path / "home") as runner:
        yield runner
