"""Config lookup, env overrides, validation messages, `mlrig init` and `config show`."""

import json

import pytest

from mlrig.config import load_settings
from mlrig.errors import ConfigError


def test_defaults_are_embedded(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    settings = load_settings()
    assert settings.source is None
    assert settings.database_url == f"sqlite:///{tmp_path / '.mlrig' / 'mlrig.db'}"
    assert settings.storage.backend == "local"


def test_lookup_order(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    xdg = tmp_path / "xdg"
    (xdg / "mlrig").mkdir(parents=True)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(xdg))
    (xdg / "mlrig" / "mlrig.toml").write_text("[server]\nport = 1001\n")
    assert load_settings().server.port == 1001
    (tmp_path / "mlrig.toml").write_text("[server]\nport = 1002\n")
    assert load_settings().server.port == 1002
    env_file = tmp_path / "env.toml"
    env_file.write_text("[server]\nport = 1003\n")
    monkeypatch.setenv("MLRIG_CONFIG", str(env_file))
    assert load_settings().server.port == 1003
    explicit = tmp_path / "explicit.toml"
    explicit.write_text("[server]\nport = 1004\n")
    assert load_settings(explicit).server.port == 1004


def test_env_overrides_file(tmp_path, monkeypatch):
    path = tmp_path / "mlrig.toml"
    path.write_text('[database]\nurl = "sqlite:///a.db"\n')
    monkeypatch.setenv("MLRIG_DATABASE__URL", "postgresql://u:p@h/db")
    monkeypatch.setenv("MLRIG_SERVER__PORT", "9999")
    settings = load_settings(path)
    assert settings.database.url == "postgresql://u:p@h/db"
    assert settings.server.port == 9999


def test_relative_paths_follow_the_config_file(tmp_path):
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "mlrig.toml").write_text('[database]\nurl = "sqlite:///data/x.db"\n')
    settings = load_settings(folder / "mlrig.toml")
    assert settings.database_url == f"sqlite:///{folder / 'data' / 'x.db'}"


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        ('[storage]\nbacknd = "s3"\n', "storage.backnd: unknown key (found 's3')"),
        ('[storage]\nbackend = "nope"\n', "storage.backend: unknown storage backend 'nope'"),
        ('[server]\nport = "eighty"\n', "server.port: input should be a valid integer"),
        ("[servr]\nport = 1\n", "servr: unknown key"),
        ("[storage.nope]\nx = 1\n", "storage.nope: no storage backend named 'nope'"),
        ("[server\n", "is not valid TOML"),
    ],
)
def test_invalid_config_is_one_line_naming_the_key(tmp_path, toml, expected):
    path = tmp_path / "mlrig.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    message = str(info.value)
    assert expected in message
    assert "\n" not in message


def test_typo_through_the_cli(tmp_path, run_cli):
    (tmp_path / "mlrig.toml").write_text('[storage]\nbacknd = "s3"\n')
    result = run_cli("config", "show", cwd=tmp_path)
    assert result.exit_code != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "storage.backnd" in lines[0]
    assert "Traceback" not in result.stderr


def test_init_writes_a_valid_commented_file(tmp_path, run_cli):
    result = run_cli("init", cwd=tmp_path)
    assert result.exit_code == 0, result.stderr
    text = (tmp_path / "mlrig.toml").read_text()
    assert text.count("#") > 10
    settings = load_settings(tmp_path / "mlrig.toml")
    assert settings.storage.backend == "local"
    again = run_cli("init", cwd=tmp_path)
    assert again.exit_code != 0
    assert "--force" in again.stderr
    # the commented hints are valid config once uncommented
    for hint in ("# [datasets]", '# allowed_roots = ["data"]', "# [features]", '# backend = "sql"'):
        assert hint in text
        text = text.replace(hint, hint[2:], 1)
    (tmp_path / "mlrig.toml").write_text(text)
    settings = load_settings(tmp_path / "mlrig.toml")
    assert settings.datasets.allowed_roots == ["data"]
    assert settings.features.backend == "sql"


def test_config_show_json_redacts_secrets(tmp_path, run_cli):
    (tmp_path / "mlrig.toml").write_text('[database]\nurl = "postgresql://me:hunter2@db:5432/x"\n')
    result = run_cli(
        "config",
        "show",
        "--json",
        cwd=tmp_path,
        env={
            "MLRIG_STORAGE__MASTER_KEY": "c2VjcmV0",
            "MLRIG_STORAGE__PREVIOUS_MASTER_KEYS": '["b2xka2V5", "b2xkZXI="]',
            "MLRIG_SERVER__PORT": "7000",
        },
    )
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert "hunter2" not in result.stdout and "c2VjcmV0" not in result.stdout
    assert "b2xka2V5" not in result.stdout and "b2xkZXI=" not in result.stdout
    assert data["database"]["url"] == "postgresql://me:********@db:5432/x"
    assert data["storage"]["master_key"] == "********"
    assert data["storage"]["previous_master_keys"] == ["********", "********"]
    assert data["server"]["port"] == 7000
    assert data["source"].endswith("mlrig.toml")


def test_config_show_redacts_a_password_in_an_online_store_url(tmp_path, run_cli):
    (tmp_path / "mlrig.toml").write_text(
        '[features]\nbackend = "redis"\n[features.redis]\nurl = "redis://:s3cret@cache:6379/2"\n'
    )
    result = run_cli("config", "show", "--json", cwd=tmp_path)
    assert result.exit_code == 0, result.stderr
    assert "s3cret" not in result.stdout
    data = json.loads(result.stdout)
    assert data["features"]["redis"]["url"] == "redis://:********@cache:6379/2"
    assert data["features"]["backend"] == "redis"


def test_job_processes_inherit_the_previous_master_keys(monkeypatch):
    """A job reads artifacts its worker can read: the old keys travel with the settings."""
    from mlrig.config import INHERITED_ENV, load_settings

    settings = load_settings(
        overrides={"storage": {"master_key": "bmV3", "previous_master_keys": ["b2xk"]}}
    )
    monkeypatch.setenv(INHERITED_ENV, settings.to_json())
    inherited = load_settings()
    assert [k.get_secret_value() for k in inherited.storage.previous_master_keys] == ["b2xk"]
    assert inherited.storage.master_key.get_secret_value() == "bmV3"
