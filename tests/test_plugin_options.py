"""Plugin options: path options resolved against the config file's folder (server and job
processes agree), and ``[plugins.NAME]`` tables validated by a hook plugin's own model.

The plugins here are real distributions on ``sys.path`` (entry points and all), found the
way a pip-installed third-party plugin is."""

import json
import os
import threading
from pathlib import Path

import pytest
from _distributions import make_distribution
from _trainers import install_test_trainers
from pydantic import BaseModel, ConfigDict

from mlrig import ConfigPath, Platform
from mlrig.backends import forget_loaded_backends
from mlrig.config import load_settings, validate_options
from mlrig.engine.allocator import Capacity
from mlrig.engine.worker import Worker
from mlrig.errors import ConfigError, PluginError

# A storage backend whose folder option is called `path`, not `root`.
PATHSTORE = '''
from pathlib import Path
from pydantic import BaseModel, ConfigDict
from mlrig import ConfigPath
from mlrig.plugins.storage_local import LocalStorage, LocalStorageOptions


class PathStoreOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: ConfigPath = Path("objects")


class PathStore(LocalStorage):
    """Local files under the folder named by the `path` option."""

    Options = PathStoreOptions

    def __init__(self, options):
        super().__init__(LocalStorageOptions(root=options.path))
        self.options = options
'''

# A trainer that reports, from inside the job process, where the job's platform puts
# things: through the storage itself, so the server can only read it if they agree.
PROBE = """
import json
from mlrig.contracts import Trainer, TrainResult


class Probe(Trainer):
    def train(self, ctx):
        seen = {
            "storage": str(ctx.platform.storage_backend.options.path),
            "journal": str(ctx.platform.plugin_options("journal").file),
        }
        ctx.platform.artifacts.put("probe/seen-by-job.json", json.dumps(seen).encode())
        return TrainResult()
"""

# A hook plugin with its own [plugins.journal] table.
JOURNAL = """
from pathlib import Path
from typing import Literal
from pydantic import BaseModel, ConfigDict, SecretStr
from mlrig import ConfigPath, hookimpl


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid")
    file: ConfigPath = Path("journal.jsonl")
    level: Literal["info", "debug"] = "info"
    retries: int = 3
    webhook: SecretStr | None = None


@hookimpl
def mlrig_platform_started(platform):
    platform.plugin_options("journal")


class Dashed:
    Options = Options
"""


@pytest.fixture
def plugin_site(tmp_path, monkeypatch):
    """The test plugins installed as distributions, on sys.path here and for job processes."""
    site = make_distribution(
        tmp_path / "site",
        "mlrig-test-plugin-options",
        entry_points={
            "mlrig.storage": {"pathstore": "mlrig_pathstore:PathStore"},
            "mlrig.trainers": {"probe": "mlrig_probe:Probe"},
            "mlrig.hooks": {
                "journal": "mlrig_journal",
                "no-options": "mlrig_no_options",
                "dashed-journal": "mlrig_journal:Dashed",
            },
        },
        modules={
            "mlrig_pathstore": PATHSTORE,
            "mlrig_probe": PROBE,
            "mlrig_journal": JOURNAL,
            "mlrig_no_options": "",
        },
    )
    trainers = install_test_trainers(tmp_path / "trainers")
    for folder in (site, trainers):
        monkeypatch.syspath_prepend(str(folder))
    path = os.pathsep.join([str(site), str(trainers), os.environ.get("PYTHONPATH", "")])
    monkeypatch.setenv("PYTHONPATH", path)
    forget_loaded_backends()
    yield site
    forget_loaded_backends()


def write_config(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "mlrig.toml"
    config.write_text('[database]\nurl = "sqlite:///mlrig.db"\n' + text)
    return config


# --- path options --------------------------------------------------------------------


class Nested(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cache: ConfigPath = Path("cache")


class PathOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: ConfigPath = Path("data.db")
    maybe: ConfigPath | None = None
    many: list[ConfigPath] = []
    nested: Nested = Nested()
    name: str = "relative/not/a/path"


def test_config_paths_resolve_against_the_config_folder_whatever_their_name(tmp_path):
    base = tmp_path / "project"
    options = validate_options(
        PathOptions,
        {"maybe": "sub/x", "many": ["a", "/abs/b", "~/c"], "nested": {}},
        where="storage.test",
        base_dir=base,
    )
    assert options.path == base / "data.db"  # a default is resolved too
    assert options.maybe == base / "sub" / "x"
    assert options.many == [base / "a", Path("/abs/b"), Path.home() / "c"]
    assert options.nested.cache == base / "cache"
    assert options.name == "relative/not/a/path"  # a str is not a path


def test_a_bad_option_names_its_key(tmp_path):
    with pytest.raises(ConfigError) as info:
        validate_options(PathOptions, {"pth": "x"}, where="storage.test", base_dir=tmp_path)
    assert str(info.value).startswith("config error: storage.test.pth: unknown key")
    assert "allowed: path, maybe, many, nested, name" in str(info.value)


def test_the_server_and_a_job_process_mean_the_same_file(plugin_site, tmp_path, monkeypatch):
    """A relative `path` option and a relative hook-plugin path, in a config read from
    another folder: the job process (its own working directory under .mlrig/work) writes
    where the server reads."""
    project = tmp_path / "project"
    config = write_config(
        project,
        '[storage]\nbackend = "pathstore"\n[storage.pathstore]\npath = "objects"\n'
        '[plugins.journal]\nfile = "logs/journal.jsonl"\n',
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    platform = Platform.from_config(config)
    try:
        assert platform.storage_backend.options.path == project / "objects"
        assert platform.plugin_options("journal").file == project / "logs" / "journal.jsonl"
        job = platform.experiments.create(
            name="probe", trainer="probe", actor=_admin(), max_attempts=1
        )
        platform.experiments.start(job["id"])
        worker = Worker(platform, capacity=Capacity(cpus=(0,)), lease_seconds=10)
        stop = threading.Event()
        timer = threading.Timer(120, stop.set)
        timer.start()
        try:
            assert worker.run(stop=stop, max_jobs=1, exit_when_idle=True) == 1
        finally:
            timer.cancel()
        assert platform.experiments.get(job["id"])["status"] == "completed"
        seen = json.loads(platform.artifacts.get_bytes("probe/seen-by-job.json"))
    finally:
        platform.close()
    assert seen == {
        "storage": str(project / "objects"),
        "journal": str(project / "logs" / "journal.jsonl"),
    }
    assert any((project / "objects").rglob("seen-by-job.json"))
    assert not list(elsewhere.rglob("seen-by-job.json"))
    assert not list((project / ".mlrig").rglob("objects"))  # nothing under a job's workdir


def _admin():
    from mlrig.security import Principal

    return Principal(name="test", role="admin")


# --- [plugins.NAME] ------------------------------------------------------------------


def test_a_hook_plugin_reads_its_validated_table(plugin_site, tmp_path):
    config = write_config(
        tmp_path / "p", '[plugins.journal]\nlevel = "debug"\nretries = 5\nwebhook = "https://x"\n'
    )
    platform = Platform.from_config(config)
    options = platform.plugin_options("journal")
    assert (options.level, options.retries) == ("debug", 5)
    assert options.webhook.get_secret_value() == "https://x"
    assert options.file == tmp_path / "p" / "journal.jsonl"


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        (
            '[plugins.journal]\nlevel = "loud"\n',
            "plugins.journal.level: input should be 'info' or 'debug' (found 'loud')",
        ),
        (
            "[plugins.journal]\nretry = 1\n",
            "plugins.journal.retry: unknown key (found 1); allowed: file, level, retries, webhook",
        ),
        (
            "[plugins.jurnal]\nlevel = 1\n",
            "plugins.jurnal: no hook plugin named 'jurnal' is installed; installed: ",
        ),
        ("[plugins.no-options]\nx = 1\n", "plugins.no-options: hook plugin 'no-options' takes"),
        ("[plugins]\njournal = 1\n", "plugins.journal: expected the table [plugins.journal]"),
    ],
)
def test_a_bad_plugin_table_stops_at_start_naming_the_key(plugin_site, tmp_path, table, expected):
    config = write_config(tmp_path / "p", table)
    with pytest.raises(ConfigError) as info:
        Platform.from_config(config)
    assert f"config error in {config.resolve()}: {expected}" in str(info.value)


def test_env_overrides_a_plugin_table(plugin_site, tmp_path, monkeypatch):
    config = write_config(tmp_path / "p", '[plugins.journal]\nlevel = "debug"\nretries = 5\n')
    monkeypatch.setenv("MLRIG_PLUGINS__JOURNAL__RETRIES", "9")
    assert Platform.from_config(config).plugin_options("journal").retries == 9
    monkeypatch.setenv("MLRIG_PLUGINS__JOURNAL__RETRIES", "many")
    with pytest.raises(ConfigError, match=r"plugins\.journal\.retries: input should be a valid"):
        Platform.from_config(config)


def test_env_spells_a_dashed_plugin_name_with_underscores(plugin_site, tmp_path, monkeypatch):
    config = write_config(tmp_path / "p", '[plugins.dashed-journal]\nlevel = "debug"\n')
    monkeypatch.setenv("MLRIG_PLUGINS__DASHED_JOURNAL__RETRIES", "7")
    options = Platform.from_config(config).plugin_options("dashed-journal")
    assert (options.level, options.retries) == ("debug", 7)


def test_job_processes_inherit_the_plugin_tables(plugin_site, monkeypatch):
    from mlrig.config import INHERITED_ENV

    settings = load_settings(overrides={"plugins": {"journal": {"webhook": "s3cret"}}})
    monkeypatch.setenv(INHERITED_ENV, settings.to_json())
    assert Platform.from_config().plugin_options("journal").webhook.get_secret_value() == "s3cret"


def test_plugin_options_of_a_plugin_registered_later(platform):
    class Later:
        class Options(BaseModel):
            colour: str = "blue"

    platform.pm.register(Later(), name="later")
    try:
        assert platform.plugin_options("later").colour == "blue"
    finally:
        platform.pm.unregister(name="later")
    with pytest.raises(PluginError, match="no hook plugin named 'missing' is loaded"):
        platform.plugin_options("missing")


def test_plugin_authors_test_their_options_with_make_platform(tmp_path):
    from mlrig.testing.fixtures import make_platform

    class Notifier:
        class Options(BaseModel):
            model_config = ConfigDict(extra="forbid")
            channel: str = "#general"
            log: ConfigPath = Path("notify.log")

    home = tmp_path / "home"
    platform = make_platform(
        home, hook_plugins={"notify": Notifier()}, plugins={"notify": {"channel": "#ml"}}
    )
    assert platform.plugin_options("notify").channel == "#ml"
    assert platform.plugin_options("notify").log == home / "notify.log"
    platform.close()
    with pytest.raises(ConfigError, match=r"plugins\.notify\.chanel: unknown key"):
        make_platform(home, hook_plugins={"notify": Notifier()}, plugins={"notify": {"chanel": 1}})


def test_config_show_redacts_plugin_secrets(plugin_site, tmp_path, run_cli):
    write_config(tmp_path, '[plugins.journal]\nwebhook = "https://hooks/abc"\nretries = 4\n')
    result = run_cli("config", "show", "--json", cwd=tmp_path)
    assert result.exit_code == 0, result.stderr
    assert "hooks/abc" not in result.stdout
    data = json.loads(result.stdout)
    assert data["plugins"]["journal"] == {"webhook": "********", "retries": 4}
