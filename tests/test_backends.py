"""Named backends: listing from metadata, lazy loading through stevedore, clear errors."""

import sys

import pytest
from _distributions import make_distribution

from mlrig.backends import (
    KINDS,
    available_backends,
    backend_info,
    check_backend,
    forget_loaded_backends,
    load_backend,
)
from mlrig.contracts import Executor, StorageBackend
from mlrig.errors import MissingExtraError, PluginError


def test_groups_have_the_documented_names():
    assert KINDS == {
        "storage": "mlrig.storage",
        "trainers": "mlrig.trainers",
        "runtimes": "mlrig.runtimes",
        "search": "mlrig.search",
        "monitors": "mlrig.monitors",
        "executors": "mlrig.executors",
        "online_stores": "mlrig.online_stores",
    }


def test_bundled_backends_are_listed_with_distribution_and_version():
    found = {(b.kind, b.name): b for b in available_backends()}
    for key in [("storage", "local"), ("executors", "local")]:
        assert found[key].distribution == "mlrig"
        assert found[key].version == "0.1.0"
        assert found[key].missing == ()


def test_listing_imports_nothing():
    sys.modules.pop("mlrig.plugins.executor_local", None)
    forget_loaded_backends()
    available_backends()
    assert "mlrig.plugins.executor_local" not in sys.modules


def test_load_returns_the_contract_class():
    assert issubclass(load_backend("storage", "local"), StorageBackend)
    assert issubclass(load_backend("executors", "local"), Executor)


def test_unknown_name_lists_installed():
    with pytest.raises(PluginError, match=r"unknown storage backend 'nope'; installed: .*local"):
        load_backend("storage", "nope")


def test_unknown_kind():
    with pytest.raises(PluginError, match="unknown backend kind 'widgets'"):
        available_backends("widgets")


@pytest.fixture
def fake_site(tmp_path, monkeypatch):
    site = tmp_path / "site"
    make_distribution(
        site,
        "mlrig-fake-backends",
        entry_points={
            "mlrig.storage": {
                "needs-extra": "fake_fancy:Fancy [fancy]",
                "broken": "fake_broken:Broken",
                "not-a-backend": "fake_plain:Plain",
            }
        },
        requires=["surely-not-installed-pkg>=1; extra == 'fancy'"],
        modules={
            "fake_fancy": "import surely_not_installed_pkg\n",
            "fake_broken": "raise ImportError('boom: this plugin is broken')\n",
            "fake_plain": "class Plain:\n    pass\n",
        },
    )
    monkeypatch.syspath_prepend(str(site))
    forget_loaded_backends()
    yield site
    forget_loaded_backends()


def test_missing_extra_names_the_pip_command(fake_site):
    info = backend_info("storage", "needs-extra")
    assert info.missing == ("surely-not-installed-pkg",)
    with pytest.raises(MissingExtraError) as exc:
        load_backend("storage", "needs-extra")
    assert "pip install 'mlrig-fake-backends[fancy]'" in str(exc.value)


def test_broken_backend_reports_the_reason(fake_site):
    reason = check_backend(backend_info("storage", "broken"))
    assert reason is not None and "boom: this plugin is broken" in reason
    # the others still load
    assert issubclass(load_backend("storage", "local"), StorageBackend)


def test_backend_must_implement_the_contract(fake_site):
    with pytest.raises(PluginError, match=r"is not a subclass of mlrig\.contracts\.storage"):
        load_backend("storage", "not-a-backend")


def test_backend_options_are_validated(tmp_path):
    cls = load_backend("executors", "local")
    from mlrig.errors import ConfigError

    expected = r"executor.local.inherit_envv: unknown key \(found True\); allowed: inherit_env"
    with pytest.raises(ConfigError, match=expected):
        cls.from_options({"inherit_envv": True}, where="executor.local")
