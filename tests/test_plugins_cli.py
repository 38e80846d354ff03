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
    result = run_cli("plugins", "list", "--json")
    assert result.exit_code == 0, result.stderr
    rows = {(r["kind"], r["name"]): r for r in json.loads(result.stdout)}
    for key in [("storage", "local"), ("executors", "local")]:
        assert rows[key]["distribution"] == "mlrig"
        assert rows[key]["version"] == "0.1.0"
        assert rows[key]["status"] == "ok"


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

    listed = run_cli("plugins", "list", "--json", env=env)
    assert listed.exit_code == 0, listed.stderr
    rows = {(r["kind"], r["name"]): r for r in json.loads(listed.stdout)}
    assert rows[("hooks", "broken-hooks")]["status"] == "error"
    assert "cannot import name frobnicate" in rows[("hooks", "broken-hooks")]["error"]
    assert rows[("storage", "broken-store")]["status"] == "error"
    assert "not_a_module_anywhere" in rows[("storage", "broken-store")]["error"]
    assert rows[("storage", "local")]["status"] == "ok"


@pytest.fixture(scope="module")
def example_plugin():
    """pip-install the example plugin into this environment for the module's tests."""
    pip = [sys.executable, "-m", "pip"]
    subprocess.run([*pip, "install", "-q", "--no-deps", str(EXAMPLE)], check=True, timeout=300)
    yield
    subprocess.run([*pip, "uninstall", "-q", "-y", "mlrig-plugin-example"], check=True)


def test_example_plugin_is_listed_selectable_and_its_hook_runs(example_plugin, tmp_path, run_cli):
    listed = run_cli("plugins", "list", "--json")
    rows = {(r["kind"], r["name"]): r for r in json.loads(listed.stdout)}
    assert rows[("storage", "sharded")]["distribution"] == "mlrig-plugin-example"
    assert rows[("storage", "sharded")]["status"] == "ok"
    assert rows[("hooks", "example")]["status"] == "ok"

    (tmp_path / "mlrig.toml").write_text(
        '[storage]\nbackend = "sharded"\n[storage.sharded]\nroot = "shards"\n'
    )
    hello = run_cli("example-hello", cwd=tmp_path)
    assert hello.exit_code == 0, hello.stderr
    assert "hello from mlrig-plugin-example (storage backend: sharded)" in hello.stdout

    code = (
        "from mlrig import Platform;"
        "p = Platform.from_config('mlrig.toml');"
        "s = p.artifacts.put('a/b.txt', b'plugin bytes');"
        "print(type(p.storage_backend).__name__, p.artifacts.get_bytes('a/b.txt').decode())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["ShardedFolderStorage", "plugin", "bytes"]
    assert any((tmp_path / "shards").rglob("a%2Fb.txt"))


def test_example_plugin_passes_the_storage_contract(example_plugin):
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(EXAMPLE / "tests")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert " passed" in proc.stdout
