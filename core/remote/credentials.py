"""Stored logins: ``mlrig login URL`` keeps a server's token in the user config dir.

The file (``credentials.toml`` beside the user's ``mlrig.toml``, or ``$MLRIG_CREDENTIALS``)
holds one table per server URL and is written with mode 0600::

    [servers."https://mlrig.example.com"]
    token = "mlrig_..."
    user = "alice"

A stored token is used for a server when the command names that server (``--url`` or
``MLRIG_URL``) and gives no ``--token``/``MLRIG_TOKEN``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

FILENAME = "credentials.toml"


def credentials_path() -> Path:
    """Where logins are kept: ``$MLRIG_CREDENTIALS``, else the user config dir."""
    override = os.environ.get("MLRIG_CREDENTIALS")
    if override:
        return Path(override)
    from platformdirs import user_config_dir

    return Path(user_config_dir("mlrig")) / FILENAME


def normalize_url(url: str) -> str:
    """``url`` as logins are keyed: no trailing slash, scheme and host in lower case."""
    from urllib.parse import urlsplit, urlunsplit

    from mlrig.errors import ValidationError

    parts = urlsplit(url.strip())
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        msg = f"not a server URL: {url!r}; give one like http://mlrig.internal:8080"
        raise ValidationError(msg)
    return urlunsplit((parts.scheme.lower(), parts.netloc.lower(), parts.path.rstrip("/"), "", ""))


def load() -> dict[str, dict[str, Any]]:
    """Every stored login: ``{url: {"token", "user"}}`` (empty without a file)."""
    import tomllib

    path = credentials_path()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError) as exc:
        from mlrig.errors import ConfigError

        msg = f"cannot read the stored logins {path}: {exc}; fix or remove the file"
        raise ConfigError(msg) from None
    servers = data.get("servers")
    return servers if isinstance(servers, dict) else {}


def token_for(url: str) -> str | None:
    """The stored token of the server at ``url``, if one was stored."""
    entry = load().get(normalize_url(url))
    token = entry.get("token") if isinstance(entry, dict) else None
    return token if isinstance(token, str) and token else None


def _write(servers: dict[str, dict[str, Any]]) -> Path:
    path = credentials_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["# mlrig logins (mlrig login / mlrig logout); keep this file private", ""]
    for url, entry in sorted(servers.items()):
        lines.append(f"[servers.{json.dumps(url)}]")
        for key, value in sorted(entry.items()):
            if isinstance(value, str):
                lines.append(f"{key} = {json.dumps(value)}")
        lines.append("")
    partial = path.with_name(f".{path.name}.partial")
    # created 0600 before a byte of the token is written; then swapped in atomically
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, "\n".join(lines).encode())
    finally:
        os.close(fd)
    os.replace(partial, path)
    return path


def store(url: str, token: str, *, user: str | None = None) -> Path:
    """Keep ``token`` for the server at ``url``; return the file written."""
    servers = load()
    servers[normalize_url(url)] = {"token": token, **({"user": user} if user else {})}
    return _write(servers)


def remove(url: str | None = None) -> list[str]:
    """Forget the login of ``url`` (every login when ``None``); the URLs forgotten."""
    servers = load()
    gone = list(servers) if url is None else [u for u in servers if u == normalize_url(url)]
    for key in gone:
        del servers[key]
    if gone:
        if servers:
            _write(servers)
        else:
            credentials_path().unlink(missing_ok=True)
    return gone
