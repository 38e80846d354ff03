"""The CLI against a server, used wrong: URLs without a scheme or with a port that is no
port, a stored-logins file that is garbage or readable by others, two ``mlrig login`` at
once. One line, exit != 0, no traceback; the logins file stays whole."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest

from mlrig.errors import ConfigError, ValidationError
from mlrig.remote import credentials


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("http://h:8080/", "http://h:8080"),
        ("HTTPS://Host/sub/api/ml/", "https://host/sub"),  # a URL copied from a request
        ("http://[::1]:8080", "http://[::1]:8080"),
    ],
)
def test_server_urls_are_normalized(given, expected):
    assert credentials.normalize_url(given) == expected


@pytest.mark.parametrize(
    ("given", "said"),
    [
        ("localhost:8080", "did you mean http://localhost:8080?"),  # was sent to port 80
        ("127.0.0.1:1", "did you mean http://127.0.0.1:1?"),
        ("ftp://x", "give one like http://"),
        ("http://", "give one like http://"),
        ("http://h:99999", "out of range"),  # was a traceback
        ("http://h:abc", "not a server URL"),
        ("http://[::1", "Invalid IPv6 URL"),  # was a traceback
    ],
)
def test_malformed_server_urls_are_refused_saying_the_form(given, said):
    with pytest.raises(ValidationError, match="not a server URL") as caught:
        credentials.normalize_url(given)
    assert said in caught.value.message


def _mlrig(*args, env):
    return subprocess.run(
        [sys.executable, "-m", "mlrig.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=60,
    )


def test_cli_refuses_a_malformed_url_in_one_line(tmp_path):
    env = {"MLRIG_CREDENTIALS": str(tmp_path / "c.toml"), "MLRIG_URL": "http://127.0.0.1:99999"}
    done = _mlrig("models", "list", env=env)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert "Port out of range" in done.stderr and "MLRIG_URL" in done.stderr


def test_a_garbage_or_open_logins_file_is_one_clear_error_or_a_warning(
    tmp_path, monkeypatch, capsys
):
    path = tmp_path / "credentials.toml"
    monkeypatch.setenv("MLRIG_CREDENTIALS", str(path))
    for garbage in (b"\xff\xfe\x00 not utf-8", b"servers = [[[", b'servers = "x"'):
        path.write_bytes(garbage)
        with pytest.raises(ConfigError, match="fix or remove the file"):
            credentials.load()
    path.unlink()
    capsys.readouterr()
    credentials._WARNED.clear()
    credentials.store("http://h:1", "mlr_secret", user="u")
    assert path.stat().st_mode & 0o777 == 0o600
    assert capsys.readouterr().err == ""
    path.chmod(0o644)
    assert credentials.token_for("http://h:1") == "mlr_secret"
    assert "chmod 600" in capsys.readouterr().err


def test_logins_at_once_lose_none_and_leave_the_file_whole(tmp_path, monkeypatch):
    monkeypatch.setenv("MLRIG_CREDENTIALS", str(tmp_path / "credentials.toml"))
    starting = threading.Barrier(8)
    failures = []

    def login(i):
        starting.wait()
        try:
            for round_ in range(5):
                credentials.store(f"http://host-{i}:80", f"mlr_{i}_{round_}")
        except Exception as exc:  # the shared '.partial' file made one fail before
            failures.append(exc)

    threads = [threading.Thread(target=login, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    stored = credentials.load()
    assert {url: e["token"] for url, e in stored.items()} == {
        f"http://host-{i}:80": f"mlr_{i}_4" for i in range(8)
    }
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "credentials.toml",
        "credentials.toml.lock",
    ]


def test_two_cli_logins_at_once_against_a_server(tmp_path, platform, live_server):
    tokens = []
    for name in ("ann", "bob"):
        platform.security.create_user(name=name, role="viewer")
        tokens.append(platform.security.create_token(user=name)["token"])
    env = {**os.environ, "MLRIG_CREDENTIALS": str(tmp_path / "credentials.toml")}
    other = live_server.replace("127.0.0.1", "localhost")  # a second server URL, same server
    runs = [  # ann's token comes through a pipe (as `echo $TOKEN | mlrig login URL`)
        subprocess.Popen(
            [sys.executable, "-m", "mlrig.cli", "login", url, *extra],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for url, extra in ((live_server, []), (other, ["--token", tokens[1]]))
    ]
    for run, given in zip(runs, (tokens[0] + "\n", ""), strict=True):
        _out, err = run.communicate(given, timeout=60)
        assert run.returncode == 0, err
        assert err == ""  # no getpass warning about a terminal there is none of
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "from mlrig.remote import credentials as c; print(sorted(c.load()))",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.stdout.strip() == repr(sorted([live_server, other])), done.stderr
    # a server URL without a stored login nor a token: the error says how to log in
    env["MLRIG_CREDENTIALS"] = str(tmp_path / "none.toml")
    refused = _mlrig("--url", live_server, "models", "list", env=env)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert f"log in with: mlrig login {live_server}" in refused.stderr


def test_client_path_segments_are_not_resolved_away(platform, live_server):
    """``..`` or ``?`` in a name sent by :class:`mlrig.Client` stays in its segment: a
    version named ``..`` was the model itself, so ``delete_version`` deleted the model."""
    from mlrig.client import Client
    from mlrig.errors import NotFoundError, ValidationError
    from mlrig.security import Principal

    actor = Principal(name="ops", role="admin")
    platform.registry.create_version(
        "bc", files={"model.joblib": b"x"}, actor=actor, create_model=True, framework="sklearn"
    )
    platform.security.create_user(name="dep", role="deployer")
    token = platform.security.create_token(user="dep")["token"]
    with Client(live_server, token=token) as client:
        for version in ("..", ".", "1?force=true"):
            with pytest.raises(NotFoundError, match="has no version"):
                client.delete_version("bc", version)
        with pytest.raises(ValidationError, match="contains '/'"):  # never sent
            client.delete_version("bc", "1/../1")
        with pytest.raises(NotFoundError, match="no model"):
            client.get_model("bc?x=1")
        assert client.get_version("bc", "1")["version"] == "1"
    assert platform.registry.get_model("bc")["name"] == "bc"  # not deleted
