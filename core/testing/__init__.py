"""Test helpers shipped with mlrig, so that plugin authors test the way we do.

- :mod:`mlrig.testing.storage`: the storage contract suite every backend passes, and an
  S3 server (moto) fixture.
- :mod:`mlrig.testing.search`: the search strategy contract suite every strategy passes.
- :mod:`mlrig.testing.database`: database fixtures over SQLite and PostgreSQL.
- :mod:`mlrig.testing.fixtures`: a platform, an API client and a CLI runner.

Load them in a ``conftest.py`` with ``pytest_plugins = ["mlrig.testing.fixtures"]``.
"""
