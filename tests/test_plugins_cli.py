"""`mlrig plugins`, a broken plugin, and a real third-party plugin installed with pip."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from _distributions import make_distribution

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "mlrig-plugin-example"


def test_plugins_list_json(run_cli):
    result = run_cli("plugins", "list", "--check", "--json")
    assert result.exit_code == 0, result.stderr
    rows = {(r["kind"], r["name"]): r for r in json.loads(result.stdout)}
    for key in [("storage", "local"), ("executors", "local")]:
        assert rows[key]["distribution"] == "mlrig"
        assert rows[key]["version"] == "0.1.0"
        assert rows[key]["status"] == "ok"


# Importing either module leaves a trace; listing without --check must leave none.
SIDE_EFFECT = (
    "import os, pathlib\npathlib.Path(os.environ['TRACE_DIR'], __name__).write_text('imported')\n"
)


@pytest.fixture
def traced_site(tmp_path):
    return make_distribution(
        tmp_path / "site",
        "mlrig-traced-plugin",
        entry_points={
            "mlrig.hooks": {"traced-hooks": "traced_hooks"},
            "mlrig.storage": {"traced-store": "traced_store:Store"},
            "mlrig.runtimes": {"needy": "needy_runtime:Runtime [fancy]"},
        },
        modules={
            "traced_hooks": SIDE_EFFECT,
            "traced_store": SIDE_EFFECT
            + "from mlrig.plugins.storage_local import LocalStorage as Store\n",
            "needy_runtime": SIDE_EFFECT,
        },
        requires=["mlrig-not-installed-anywhere ; extra == 'fancy'"],
    )


def test_list_reads_metadata_only_unless_check(run_cli, traced_site, tmp_path):
    trace = tmp_path / "trace"
    trace.mkdir()
    env = {
        "PYTHONPATH": os.pathsep.join([str(traced_site), os.environ.get("PYTHONPATH", "")]),
        "TRACE_DIR": str(trace),
    }
    listed = run_cli("plugins", "list", "--json", env=env)
    assert listed.exit_code == 0, listed.stderr
    rows = {(r["kind"], r["name"]): r for r in json.loads(listed.stdout)}
    assert rows[("hooks", "traced-hooks")]["status"] == "unchecked"
    assert rows[("storage", "traced-store")]["status"] == "unchecked"
    assert rows[("runtimes", "needy")]["status"] == "needs-extra"
    assert sorted(p.name for p in trace.iterdir()) == []  # nothing was imported

    code = (
        "import sys\n"
        "from mlrig.cli.main import main\n"
        "try:\n    main(['plugins', 'list'])\n"
        "except SystemExit:\n    pass\n"
        "print(sorted(m for m in sys.modules if m.startswith('mlrig.plugins')))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"  # no bundled backend imported either

    checked = run_cli("plugins", "list", "--check", "--json", env=env)
    rows = {(r["kind"], r["name"]): r for r in json.loads(checked.stdout)}
    assert rows[("hooks", "traced-hooks")]["status"] == "ok"
    assert rows[("storage", "traced-store")]["status"] == "ok"
    assert rows[("runtimes", "needy")]["status"] == "needs-extra"
    assert sorted(p.name for p in trace.iterdir()) == ["traced_hooks", "traced_store"]


def test_list_shows_the_install_command_literally(run_cli, traced_site, tmp_path):
    """`pip install 'mlrig-traced-plugin[fancy]'`: the table must not eat `[fancy]` as
    rich markup."""
    env = {
        "PYTHONPATH": os.pathsep.join([str(traced_site), os.environ.get("PYTHONPATH", "")]),
        "TRACE_DIR": str(tmp_path),
        "COLUMNS": "250",
    }
    listed = run_cli("plugins", "list", "--kind", "runtimes", env=env)
    assert listed.exit_code == 0, listed.stderr
    assert "pip install 'mlrig-traced-plugin[fancy]'" in listed.stdout


def test_plugins_list_kind_filter_and_show(run_cli):
    result = run_cli("plugins", "list", "--kind", "executors", "--json")
    assert {r["kind"] for r in json.loads(result.stdout)} == {"executors"}
    shown = run_cli("plugins", "show", "storage", "local", "--json")
    assert shown.exit_code == 0, shown.stderr
    data = json.loads(shown.stdout)
    assert data["contract"] == "mlrig.contracts.storage:StorageBackend"
    assert "root" in data["options"]
    missing = run_cli("plugins", "show", "storage", "nope")
    assert missing.exit_code != 0
    assert "unknown storage backend 'nope'; installed:" in missing.stderr


@pytest.fixture
def broken_site(tmp_path):
    return make_distribution(
        tmp_path / "site",
        "mlrig-broken-plugin",
        entry_points={
            "mlrig.hooks": {"broken-hooks": "broken_hooks"},
            "mlrig.storage": {"broken-store": "broken_store:Store"},
        },
        modules={
            "broken_hooks": "raise ImportError('cannot import name frobnicate')\n",
            "broken_store": "import not_a_module_anywhere\n",
        },
    )


def test_broken_plugin_does_not_break_the_cli(run_cli, broken_site):
    env = {"PYTHONPATH": os.pathsep.join([str(broken_site), os.environ.get("PYTHONPATH", "")])}
    help_result = run_cli("--help", env=env)
    assert help_result.exit_code == 0
    assert "plugins" in help_result.stdout
    assert "broken-hooks" in help_result.stderr  # one warning line, not a traceback
    assert "Traceback" not in help_result.stderr

    listed = run_cli("plugins", "list", "--check", "--json", env=env)
    assert listed.exit_code == 0, listed.stderr
    rows = {(r["kind"], r["name"]): r for r in json.loads(listed.stdout)}
    assert rows[("hooks", "broken-hooks")]["status"] == "error"
    assert "cannot import name frobnicate" in rows[("hooks", "broken-hooks")]["error"]
    assert rows[("storage", "broken-store")]["status"] == "error"
    assert "not_a_module_anywhere" in rows[("storage", "broken-store")]["error"]
    assert rows[("storage", "local")]["status"] == "ok"


@pytest.fixture(scope="module")
def example_site(tmp_path_factory):
    """pip-install the example plugin, as a user would, into a folder of its own (not this
    environment, which other test runs share); its tests put the folder on PYTHONPATH."""
    site = tmp_path_factory.mktemp("example-site")
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site)]
    subprocess.run([*pip, str(EXAMPLE)], check=True, timeout=300)
    return site


@pytest.fixture
def example_env(example_site):
    return {"PYTHONPATH": os.pathsep.join([str(example_site), os.environ.get("PYTHONPATH", "")])}


def test_example_plugin_is_listed_selectable_and_its_hook_runs(example_env, tmp_path, run_cli):
    listed = run_cli("plugins", "list", "--check", "--json", env=example_env)
    rows = {(r["kind"], r["name"]): r for r in json.loads(listed.stdout)}
    assert rows[("storage", "sharded")]["distribution"] == "mlrig-plugin-example"
    assert rows[("storage", "sharded")]["status"] == "ok"
    assert rows[("hooks", "example")]["status"] == "ok"

    (tmp_path / "mlrig.toml").write_text(
        '[storage]\nbackend = "sharded"\n[storage.sharded]\nroot = "shards"\n'
    )
    hello = run_cli("example-hello", cwd=tmp_path, env=example_env)
    assert hello.exit_code == 0, hello.stderr
    assert "hello cli:" in hello.stdout
    assert "from mlrig-plugin-example (storage backend: sharded" in hello.stdout

    code = (
        "from mlrig import Platform;"
        "p = Platform.from_config('mlrig.toml');"
        "s = p.artifacts.put('a/b.txt', b'plugin bytes');"
        "print(type(p.storage_backend).__name__, p.artifacts.get_bytes('a/b.txt').decode())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env={**os.environ, **example_env},
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.split() == ["ShardedFolderStorage", "plugin", "bytes"]
    assert any((tmp_path / "shards").rglob("a%2Fb.txt"))


def test_a_plugin_command_gets_the_platform_of_config_and_token(example_env, tmp_path, run_cli):
    """`mlrig --config ../project/mlrig.toml --token T example-hello`, run from another
    folder: the command's platform is the project's, its principal the token's user, and
    its options the project's [plugins.example] table."""
    from mlrig import Platform

    project = tmp_path / "project"
    project.mkdir()
    config = project / "mlrig.toml"
    config.write_text('[database]\nurl = "sqlite:///mlrig.db"\n')
    platform = Platform.from_config(config)
    platform.security.create_user(name="alice", role="developer")
    token = platform.security.create_token(user="alice", name="cli")["token"]
    platform.close()
    with config.open("a") as fh:
        fh.write('[plugins.example]\ngreeting = "good morning"\nevents_file = "v.jsonl"\n')
        fh.write('webhook_url = "https://hooks.example/s3cret"\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    hello = run_cli(
        "--config", str(config), "--token", token, "example-hello", cwd=elsewhere, env=example_env
    )
    assert hello.exit_code == 0, hello.stderr
    assert hello.stdout.startswith("good morning alice (developer) from mlrig-plugin-example")
    assert f"config: {config.resolve()})" in hello.stdout

    env_token = run_cli(
        "example-hello",
        cwd=elsewhere,
        env={
            **example_env,
            "MLRIG_CONFIG": str(config),
            "MLRIG_TOKEN": token,
            "MLRIG_PLUGINS__EXAMPLE__GREETING": "hi",
        },
    )
    assert env_token.exit_code == 0, env_token.stderr
    assert env_token.stdout.startswith("hi alice (developer)")

    bad_token = run_cli(
        "--config",
        str(config),
        "--token",
        "nope",
        "example-hello",
        cwd=elsewhere,
        env=example_env,
    )
    assert bad_token.exit_code != 0
    assert "Traceback" not in bad_token.stderr
    assert len(bad_token.stderr.strip().splitlines()) == 1

    bad_colour = run_cli(
        "--config",
        str(config),
        "example-hello",
        cwd=elsewhere,
        env={**example_env, "MLRIG_PLUGINS__EXAMPLE__COLOUR": "purple"},
    )
    assert bad_colour.exit_code != 0
    assert "plugins.example.colour: input should be 'plain', 'red', 'green' or 'blue'" in (
        bad_colour.stderr
    )

    described = run_cli("plugins", "show", "hooks", "example", "--json", env=example_env)
    assert described.exit_code == 0, described.stderr
    options = json.loads(described.stdout)["options"]
    assert set(options) == {"greeting", "colour", "events_file", "webhook_url"}

    shown = run_cli("--config", str(config), "config", "show", "--json", env=example_env)
    assert shown.exit_code == 0, shown.stderr
    assert "s3cret" not in shown.stdout
    assert json.loads(shown.stdout)["plugins"]["example"]["webhook_url"] == "********"

    code = (
        "from mlrig import Platform;"
        f"print(Platform.from_config({str(config)!r}).plugin_options('example').events_file)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=elsewhere,
        env={**os.environ, **example_env},
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == str(project.resolve() / "v.jsonl")


def test_example_plugin_passes_the_storage_contract(example_env):
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(EXAMPLE / "tests")],
        env={**os.environ, **example_env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert " passed" in proc.stdout


GUARDED = """
import click
from mlrig import hookimpl
from mlrig.cli import pass_platform, require
from mlrig.security.roles import Permission


@click.command("guarded-count")
@click.argument("what")
@pass_platform
def guarded_count(platform, what):
    user = require(Permission.WRITE)
    models = platform.registry.list_models()
    items = models["items"] if isinstance(models, dict) else models
    click.echo(f"{what}: {len(items)} model(s) for {user.name}")


@hookimpl
def mlrig_register_commands(cli):
    cli.add_command(guarded_count)
"""


def test_a_plugin_command_checks_the_token_user_s_permission(tmp_path, run_cli):
    from mlrig import Platform

    site = make_distribution(
        tmp_path / "site",
        "mlrig-guarded",
        entry_points={"mlrig.hooks": {"guarded": "guarded_hooks"}},
        modules={"guarded_hooks": GUARDED},
    )
    env = {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    project = tmp_path / "project"
    project.mkdir()
    config = project / "mlrig.toml"
    config.write_text('[database]\nurl = "sqlite:///mlrig.db"\n')
    platform = Platform.from_config(config)
    tokens = {}
    for name, role in [("vera", "viewer"), ("dev", "developer")]:
        platform.security.create_user(name=name, role=role)
        tokens[name] = platform.security.create_token(user=name)["token"]
    platform.close()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    def guarded(token: str):
        return run_cli(
            "--config", str(config), "--token", token, "guarded-count", "x", cwd=elsewhere, env=env
        )

    ok = guarded(tokens["dev"])
    assert ok.exit_code == 0, ok.stderr
    assert ok.stdout.strip() == "x: 0 model(s) for dev"
    assert (project / "mlrig.db").is_file() and not (elsewhere / "mlrig.db").exists()
    refused = guarded(tokens["vera"])
    assert refused.exit_code != 0
    assert "'write'" in refused.stderr and "Traceback" not in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
