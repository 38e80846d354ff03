"""`import mlrig` and `mlrig --help` stay fast: no framework is imported."""

import json
import subprocess
import sys

HEAVY = ["torch", "tensorflow", "onnxruntime", "boto3", "botocore", "s3fs", "aiobotocore"]

PROBE = """
import json, sys
from mlrig.cli.main import main
sys.argv = ["mlrig", *{args!r}]
try:
    main()
except SystemExit:
    pass
print(json.dumps(sorted(m for m in {heavy!r} if m in sys.modules)), file=sys.stderr)
"""


def _imported_after(args: list[str]) -> list[str]:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE.format(args=args, heavy=HEAVY)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(proc.stderr.strip().splitlines()[-1])


def test_help_imports_no_framework():
    assert _imported_after(["--help"]) == []


def test_plugins_list_imports_no_framework():
    # Checking that every backend loads imports plugin modules, never their frameworks.
    assert _imported_after(["plugins", "list", "--json"]) == []


def test_import_mlrig_is_light():
    code = (
        "import sys, mlrig, mlrig.platform, mlrig.contracts;"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_public_api_is_lazy_and_complete():
    import mlrig

    assert set(mlrig.__all__) == {"__version__", *mlrig._EXPORTS}
    for name in mlrig.__all__:
        assert getattr(mlrig, name) is not None, name


def test_help_stays_off_the_database_and_web_stacks():
    # Not frameworks, but each costs 100+ ms: `mlrig --help` must not pay for them.
    code = PROBE.format(args=["--help"], heavy=["sqlalchemy", "fastapi", "alembic", "pandas"])
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert json.loads(proc.stderr.strip().splitlines()[-1]) == []


def test_models_list_loads_no_storage(tmp_path):
    # Listing reads the database only: the storage plugin (stevedore's entry points, the
    # artifact store and its crypto) is built on first use, not for every command.
    from mlrig.testing.cli_modes import write_config

    config = write_config(tmp_path / "home")
    code = PROBE.format(
        args=["--config", str(config), "models", "list", "--json"],
        heavy=["stevedore", "mlrig.artifacts", "mlrig.plugins.storage_local"],
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert proc.stdout.strip() == "[]"  # the command ran: no models yet
    assert json.loads(proc.stderr.strip().splitlines()[-1]) == []
