"""Fixtures for mlrig's own tests; the reusable ones live in :mod:`mlrig.testing`."""

pytest_plugins = [
    "mlrig.testing.fixtures",
    "mlrig.testing.database",
    "mlrig.testing.storage",
    "mlrig.testing.gpu",
]
