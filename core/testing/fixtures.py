"""pytest fixtures for testing mlrig and mlrig plugins: a platform, an API client, a CLI
runner, a live server on loopback, and a way to register a hook plugin for one test.

Load with ``pytest_plugins = ["mlrig.testing.fixtures"]``.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mlrig.platform import Platform


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_platform(
    home: Path, *, hook_plugins: dict[str, object] | None = None, **overrides: Any
) -> Platform:
    """A platform on SQLite and local storage under ``home`` (an empty config file there,
    so relative path options start at ``home``); ``overrides`` are config sections.

    :param hook_plugins: name -> hook plugin (module or object) registered before the
        platform is built, so that ``plugins={"NAME": {...}}`` is validated by its
        ``Options`` like an installed plugin's ``[plugins.NAME]`` table.
    """
    from mlrig.hooks import get_plugin_manager

    sections: dict[str, Any] = {
        "database": {"url": f"sqlite:///{home / 'mlrig.db'}"},
        "storage": {"backend": "local", "local": {"root": str(home / "artifacts")}},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(sections.get(key), dict):
            sections[key] = {**sections[key], **value}
        else:
            sections[key] = value
    home.mkdir(parents=True, exist_ok=True)
    config = home / "mlrig.toml"
    config.touch()
    pm = get_plugin_manager()
    for name, plugin in (hook_plugins or {}).items():
        pm.register(plugin, name=name)
    return Platform.from_config(config, overrides=sections, plugin_manager=pm)


@pytest.fixture
def platform(tmp_path: Path) -> Iterator[Platform]:
    """A fresh embedded platform (SQLite + local artifacts) in a temporary folder."""
    plat = make_platform(tmp_path / "home")
    yield plat
    plat.close()


@pytest.fixture
def api_client(platform: Platform) -> Iterator[Any]:
    """A ``fastapi.testclient.TestClient`` over ``create_app(platform)``."""
    from fastapi.testclient import TestClient

    from mlrig.api import create_app

    with TestClient(create_app(platform), raise_server_exceptions=False) as client:
        yield client


@dataclass
class CliResult:
    """What one CLI invocation produced."""

    exit_code: int
    stdout: str
    stderr: str


@pytest.fixture
def run_cli(tmp_path: Path) -> Callable[..., CliResult]:
    """Run ``mlrig ARGS...`` as a real subprocess (console-script behaviour, exit codes).

    ``run_cli("plugins", "list", "--json", cwd=..., env={...})``.
    """

    def run(
        *args: str, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 120
    ) -> CliResult:
        full_env = {**os.environ, **(env or {})}
        proc = subprocess.run(
            [sys.executable, "-m", "mlrig.cli", *args],
            cwd=cwd or tmp_path,
            env=full_env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        return CliResult(proc.returncode, proc.stdout, proc.stderr)

    return run


@pytest.fixture
def register_plugin(platform: Platform) -> Iterator[Callable[[object], None]]:
    """Register a hook plugin (module or object) on ``platform`` for one test."""
    added: list[object] = []

    def register(plugin: object) -> None:
        platform.pm.register(plugin)
        added.append(plugin)

    yield register
    for plugin in added:
        platform.pm.unregister(plugin)


@contextlib.contextmanager
def serve(app: Any, *, host: str = "127.0.0.1") -> Iterator[str]:
    """Run ``app`` under a real uvicorn server on a free loopback port; yield its base URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            msg = "uvicorn did not start within 15 s"
            raise RuntimeError(msg)
        time.sleep(0.02)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture
def live_server(platform: Platform) -> Iterator[str]:
    """The API of ``platform`` served by uvicorn on loopback; yields the base URL."""
    from mlrig.api import create_app

    with serve(create_app(platform)) as url:
        yield url


@pytest.fixture
def make_token(platform: Platform) -> Callable[[str, str], dict[str, str]]:
    """``make_token(name, role)`` -> request headers with a fresh token for a new user."""

    def make(name: str, role: str) -> dict[str, str]:
        platform.security.create_user(name=name, role=role)
        token = platform.security.create_token(user=name)["token"]
        return {"Authorization": f"Bearer {token}"}

    return make


@pytest.fixture
def admin_headers(make_token: Callable[[str, str], dict[str, str]]) -> dict[str, str]:
    """Headers authenticating as a fresh admin user."""
    return make_token("root-admin", "admin")


@pytest.fixture
def db_platform(tmp_path: Path, db_url: str, database: Any) -> Iterator[Platform]:
    """A platform on each database of ``db_url`` (SQLite, then PostgreSQL; migrated by the
    ``database`` fixture), with local storage."""
    plat = make_platform(tmp_path / "home", database={"url": db_url})
    yield plat
    plat.close()
