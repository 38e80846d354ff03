"""Fixtures for mlrig's own tests; the reusable ones live in :mod:`mlrig.testing`."""

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
