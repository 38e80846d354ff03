"""Fixtures for mlrig's own tests; the reusable ones live in :mod:`mlrig.testing`."""

import os

import pytest

pytest_plugins = [
    "mlrig.testing.fixtures",
    "mlrig.testing.database",
    "mlrig.testing.storage",
    "mlrig.testing.gpu",
]


@pytest.fixture
def trainer():
    """The name of the bundled trainer the experiment tests create experiments with."""
    from mlrig.backends import backend_names

    assert "sklearn" in backend_names("trainers"), "pip install -e '.[sklearn]'"
    return "sklearn"


@pytest.fixture
def test_trainers(tmp_path, monkeypatch):
    """The test trainers of tests/_trainers.py installed as entry points, for this process
    and the job processes it starts."""
    from _trainers import install_test_trainers

    from mlrig.backends import forget_loaded_backends

    site = install_test_trainers(tmp_path / "site")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]))
    forget_loaded_backends()
    yield
    forget_loaded_backends()
