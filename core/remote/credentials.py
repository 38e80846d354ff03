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

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

FILENAME = "credentials.toml"
#: the files :func:`_warn_if_readable` already warned about in this process
_WARNED: set[Path] = set()


def credentials_path() -> Path:
    """Where logins are kept: ``$MLRIG_CREDENTIALS``, else the user config dir."""
    override = os.environ.get("MLRIG_CREDENTIALS")
    if override:
        return Path(override)
    from platformdirs import user_config_dir

    return Path(user_config_dir("mlrig")) / FILENAME


def normalize_url(url: str) -> str:
    """``url`` as logins are keyed and requests sent: ``http(s)://host[:port][/path]``, no
    trailing slash nor ``/api/ml`` (the API's own prefix, which a URL copied from a request
    may carry), scheme and host in lower case. Anything else (no scheme, another scheme, no
    host, a port that is no port) is a :class:`~mlrig.errors.ValidationError` naming the
    form expected: a URL without its scheme would be read as a path on port 80."""
    from urllib.parse import urlsplit, urlunsplit

    from mlrig.errors import ValidationError

    text = url.strip() if isinstance(url, str) else ""
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018  # raises for a port out of range or not a number
    except ValueError as exc:
        parts = None
        problem = str(exc)
    else:
        problem = ""
    if parts is None or parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        hint = ""
        if parts is not None and text and "://" not in text and not any(c.isspace() for c in text):
            hint = f" (did you mean http://{text}?)"
        reason = f" ({problem})" if problem else hint
        msg = f"not a server URL: {url!r}{reason}; give one like http://mlrig.internal:8080"
        raise ValidationError(msg)
    path = parts.path.rstrip("/")
    if path.endswith("/api/ml"):
        path = path[: -len("/api/ml")]
    return urlunsplit((parts.scheme.lower(), parts.netloc.lower(), path, "", ""))


def load() -> dict[str, dict[str, Any]]:
    """Every stored login: ``{url: {"token", "user"}}`` (empty without a file). A file
    that is not TOML, or whose ``servers`` is no table, is a :class:`ConfigError` naming
    it; a file others may read is used, with a warning on stderr."""
    import tomllib

    from mlrig.errors import ConfigError

    path = credentials_path()
    try:
        raw = path.read_bytes()
        data = tomllib.loads(raw.decode("utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        msg = f"cannot read the stored logins {path}: {exc}; fix or remove the file"
        raise ConfigError(msg) from None
    _warn_if_readable(path)
    servers = data.get("servers", {})
    if not isinstance(servers, dict):
        msg = f"the stored logins {path} have no [servers] table; fix or remove the file"
        raise ConfigError(msg)
    return servers


def _warn_if_readable(path: Path) -> None:
    """Say so when group or others may read the tokens (``chmod 600`` fixes it)."""
    if os.name != "posix":
        return
    try:
        mode = path.stat().st_mode & 0o777
    except OSError:
        return
    if mode & 0o077 and path not in _WARNED:
        import sys

        _WARNED.add(path)
        print(
            f"warning: {path} holds API tokens and is readable by others (mode "
            f"{mode:04o}); run: chmod 600 {path}",
            file=sys.stderr,
        )


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
    # a name of its own (two logins at once must not write one file), created 0600 before
    # a byte of the token is written; then swapped in atomically
    fd, partial = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, "\n".join(lines).encode())
        os.close(fd)
        fd = -1
        os.replace(partial, path)
    finally:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(partial)
    return path


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    """Hold the logins' lock file (``credentials.toml.lock``) so that a read-change-write
    of the logins (two ``mlrig login`` at once) loses no other process's change."""
    path = credentials_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            import fcntl
        except ImportError:  # Windows: last writer wins, the file stays whole
            yield
            return
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def store(url: str, token: str, *, user: str | None = None) -> Path:
    """Keep ``token`` for the server at ``url``; return the file written."""
    key = normalize_url(url)
    with _locked():
        servers = load()
        servers[key] = {"token": token, **({"user": user} if user else {})}
        return _write(servers)


def remove(url: str | None = None) -> list[str]:
    """Forget the login of ``url`` (every login when ``None``); the URLs forgotten."""
    wanted = None if url is None else normalize_url(url)
    if not credentials_path().exists():
        return []
    with _locked():
        servers = load()
        gone = list(servers) if wanted is None else [u for u in servers if u == wanted]
        for key in gone:
            del servers[key]
        if gone:
            if servers:
                _write(servers)
            else:
                credentials_path().unlink(missing_ok=True)
    return gone
